"""Sweeps: a sweep's trials and best trial; a trial's reports (authenticated by the trial's own token).

A sweep is submitted and stopped as any workload (POST /workloads with `kind: sweep`, POST
/workloads/{id}/cancel). A report carries no body (its metrics are query parameters), so the trial's token,
not a user's API token, is all it needs.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query

from gpupool.api import sweep_schemas as ss
from gpupool.server.api import schemas
from gpupool.server.api.deps import PrincipalDep, ServicesDep
from gpupool.server.services import sweeps

router = APIRouter(prefix="/sweeps", tags=["sweeps"])
ERRORS: dict[int | str, dict[str, object]] = {
    code: {"model": schemas.ErrorBody} for code in (401, 403, 404, 409, 422)}


@router.get("/{ref}", response_model=ss.SweepDetail, responses=ERRORS)
def show(ref: Annotated[str, Path(max_length=63, description="The sweep's id or name")], services: ServicesDep,
         principal: PrincipalDep,
         steps: Annotated[int, Query(ge=0, le=sweeps.MAX_STEPS_SHOWN,
                                     description="Reported steps per trial: the last ones")] = sweeps.DEFAULT_STEPS,
         ) -> ss.SweepDetail:
    """A sweep: its trials (parameters, value, state, duration, the objective at their last `steps` reported
    steps and how many they reported) and the best completed trial."""
    with services.db.session(write=False) as session:
        row = sweeps.find_sweep(session, principal, ref)
        return sweeps.sweep_view(session, services.sweep_studies(), row, steps)


@router.post("/trials/{workload_id}/report", response_model=ss.TrialReportAnswer, responses=ERRORS)
def report(workload_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], services: ServicesDep,
           step: Annotated[int, Query(ge=0, le=sweeps.MAX_STEP)],
           metric: Annotated[list[str] | None, Query(max_length=sweeps.MAX_METRICS)] = None,
           x_gpupool_trial_token: Annotated[str | None, Header(max_length=128)] = None) -> ss.TrialReportAnswer:
    """A trial's metrics at `step` (`metric=name=value`, repeated); answers whether it should stop (pruned).
    401 unless X-Gpupool-Trial-Token is this trial's token."""
    with services.db.session(write=False) as session:
        answer = sweeps.report(session, services.sweep_studies(), workload_id, x_gpupool_trial_token, step,
                               sweeps.parse_metrics(metric or []))
    if answer.should_prune:
        services.wake_sweeps()
    return answer
