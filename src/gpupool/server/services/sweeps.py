"""Sweeps: what a sweep shows (trials, best trial), a trial's reports, and the environment of a trial's job.

A trial authenticates with its own token (GPUPOOL_TRIAL_TOKEN, an HMAC of its workload id under its study's
secret), not with a user's API token: it can report to its own trial and nothing else.
"""

from __future__ import annotations

import copy
import heapq
import hmac
import math
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.api import sweep_schemas as ss
from gpupool.api.schemas import MAX_ID
from gpupool.domain.errors import AuthenticationError, ConflictError, NotFoundError, ValidationError
from gpupool.domain.specs import parse_spec, validate_name
from gpupool.domain.sweeps import SweepSpec, param_env
from gpupool.server.services.auth import Principal
from gpupool.server.services.sweep_study import (
    MESSAGE_ATTR,
    PRUNE_ATTR,
    SweepStudies,
    trial_number,
    trial_token,
)
from gpupool.server.services.workloads import visible_workload
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.repos import workloads as repo

MAX_METRICS = 32  # a report carries a handful of metrics (loss, accuracy, ...); 32 bounds the query string
MAX_STEP = 10**9
# Reported steps a sweep's answer carries per trial: a trial may report up to MAX_STEP steps, so the answer
# holds only the last few by default (enough to see where a curve is heading in `gpupool sweep show --json`),
# and at most MAX_STEPS_SHOWN when asked (100 trials x 1,000 steps stays a few megabytes of JSON).
DEFAULT_STEPS = 20
MAX_STEPS_SHOWN = 1000


# ------------------------------------------------------------------------------------------- show
def find_sweep(session: Session, principal: Principal, ref: str) -> WorkloadRow:
    """The sweep `ref` names (its id, or its name: the newest visible sweep of that name); NotFoundError when
    the caller may not see it or it is not a sweep."""
    if ref.isdigit():
        if int(ref) > MAX_ID:
            raise NotFoundError(f"workload {ref} not found")
        row = visible_workload(session, principal, int(ref))
    else:
        name = validate_name(ref, "sweep")
        visible = principal.readable_projects()
        query = select(WorkloadRow).where(WorkloadRow.kind == "sweep", WorkloadRow.name == name)
        if visible is not None:
            query = query.where(WorkloadRow.project_id.in_(sorted(visible)))
        found = session.scalars(query.order_by(WorkloadRow.id.desc()).limit(1)).first()
        if found is None:
            raise NotFoundError(f"no sweep named {name!r} among your projects")
        row = found
    if row.kind != "sweep":
        raise NotFoundError(f"workload {row.id} is a {row.kind}, not a sweep")
    return row


def sweep_view(
    session: Session, studies: SweepStudies, row: WorkloadRow, steps: int = DEFAULT_STEPS
) -> ss.SweepDetail:
    """A sweep with its trials in order and its best completed trial; each trial with the objective at its last
    `steps` reported steps (0..MAX_STEPS_SHOWN) and the count of all it reported."""
    if not 0 <= steps <= MAX_STEPS_SHOWN:
        raise ValidationError(f"must be 0..{MAX_STEPS_SHOWN} (reported steps shown per trial)", "steps")
    spec = parse_spec(row.spec)
    if not isinstance(spec, SweepSpec):
        raise NotFoundError(f"workload {row.id} is not a sweep")
    children = {trial_number(row.id, c.idempotency_key): c for c in
                session.scalars(select(WorkloadRow).where(WorkloadRow.parent_id == row.id)).all()}
    study = studies.study(row.id, spec)
    trials = [_trial_view(t, children.get(t.number), row.current_status.is_terminal(), steps)
              for t in study.get_trials(deepcopy=False)]
    done = [t for t in trials if t.state == "complete" and t.value is not None]
    pick = min if spec.direction == "minimize" else max
    best = pick(done, key=lambda t: (t.value, t.number) if pick is min else (t.value, -t.number)) if done else None
    canonical = spec.to_dict()
    return ss.SweepDetail(id=row.id, name=row.name, project=accounts.project_names(session).get(row.project_id, "?"),
                          status=row.status, message=row.message or "", metric=spec.metric, direction=spec.direction,
                          planned=spec.trials, parallel=spec.parallel, search=canonical["search"],
                          algorithm=canonical["algorithm"], trials=trials, best=best)


def trial_curve(
    session: Session, studies: SweepStudies, row: WorkloadRow, number: int, points: int
) -> tuple[list[tuple[int, float]], int]:
    """Trial `number`'s objective by step, thinned evenly over all its reported steps to at most `points`
    (the first and last kept), and the count of steps it reported; ([], 0) for a trial it does not have."""
    spec = parse_spec(row.spec)
    if not isinstance(spec, SweepSpec):
        raise NotFoundError(f"workload {row.id} is not a sweep")
    found = [t for t in studies.study(row.id, spec).get_trials(deepcopy=False) if t.number == number]
    if not found:
        return [], 0
    ordered = sorted(found[0].intermediate_values.items())
    total = len(ordered)
    if total > points > 1:
        ordered = [ordered[i * (total - 1) // (points - 1)] for i in range(points)]
    return [(int(s), float(v)) for s, v in ordered], total


def _last_steps(values: Mapping[int, float], count: int) -> list[tuple[int, float]]:
    """The `count` highest steps of `values`, in step order (without sorting every step of a long trial)."""
    return [(int(s), float(values[s])) for s in sorted(heapq.nlargest(count, values))] if count else []


def _trial_view(t: Any, child: WorkloadRow | None, sweep_over: bool, keep: int) -> ss.SweepTrial:
    values = t.intermediate_values
    steps = _last_steps(values, keep)
    last_step = steps[-1][0] if steps else (int(max(values)) if values else None)
    state = t.state.name.lower()
    if state == "running" and sweep_over:
        state = "stopped"
    duration = None
    if child is not None and child.started_at is not None:
        duration = (child.finished_at or child.updated_at) - child.started_at
    message = str(t.system_attrs.get(MESSAGE_ATTR, ""))
    if t.system_attrs.get(PRUNE_ATTR) is not None:
        message = f"pruned at step {t.system_attrs[PRUNE_ATTR]}"
    return ss.SweepTrial(number=t.number, state=state, params=dict(t.params), value=t.value,
                         last_step=last_step, intermediate=steps, steps_total=len(values),
                         workload_id=child.id if child else None, status=child.status if child else None,
                         message=message, duration_s=duration)


# ----------------------------------------------------------------------------------------- report
def parse_metrics(items: list[str]) -> dict[str, float]:
    """`name=value` pairs as sent by the SDK; ValidationError naming `metric` for anything else."""
    if len(items) > MAX_METRICS:
        raise ValidationError(f"{len(items)} metrics; at most {MAX_METRICS}", "metric")
    out: dict[str, float] = {}
    for item in items:
        name, sep, text = item.partition("=")
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not sep or not name or not math.isfinite(value):
            raise ValidationError(f"expected name=number with a finite number, got {item!r}", "metric")
        out[name] = value
    return out


def report(session: Session, studies: SweepStudies, workload_id: int, token: str | None, step: int,
           metrics: Mapping[str, float]) -> ss.TrialReportAnswer:
    """Record a trial's metrics at `step` (the objective as Optuna's intermediate value, all of them as the
    trial's last metrics) and ask the pruner whether it should stop; a pruned trial is flagged, and the sweep
    controller then cancels its job. AuthenticationError for a token that is not this trial's."""
    if not token:
        raise AuthenticationError("a trial reports with its GPUPOOL_TRIAL_TOKEN (header X-Gpupool-Trial-Token)")
    row = repo.workload_by_id(session, workload_id)
    parent = repo.workload_by_id(session, row.parent_id) if row is not None and row.parent_id else None
    number = trial_number(parent.id, row.idempotency_key) if parent is not None and row is not None else None
    if parent is None or parent.kind != "sweep" or number is None or row is None:
        raise AuthenticationError(f"the trial token is not valid for workload {workload_id}")
    spec = parse_spec(parent.spec)
    if not isinstance(spec, SweepSpec):
        raise AuthenticationError(f"the trial token is not valid for workload {workload_id}")
    study = studies.study(parent.id, spec)
    if not hmac.compare_digest(trial_token(studies.secret(study), workload_id), token):
        raise AuthenticationError(f"the trial token is not valid for workload {workload_id}")
    if not 0 <= step <= MAX_STEP:
        raise ValidationError(f"step must be 0..{MAX_STEP}", "step")
    storage = study._storage
    trial_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, number)
    frozen = storage.get_trial(trial_id)
    if frozen.system_attrs.get(PRUNE_ATTR) is not None:
        return ss.TrialReportAnswer(should_prune=True, step=step)
    if frozen.state.name != "RUNNING":
        raise ConflictError(f"trial {number} already ended ({frozen.state.name.lower()}); nothing to report")
    if spec.metric in metrics:
        storage.set_trial_intermediate_value(trial_id, step, metrics[spec.metric])
    storage.set_trial_user_attr(trial_id, "metrics", {"step": step, **metrics})
    frozen = storage.get_trial(trial_id)
    prune = spec.metric in metrics and bool(study.pruner.prune(study, copy.deepcopy(frozen)))
    if prune:
        storage.set_trial_system_attr(trial_id, PRUNE_ATTR, step)
    return ss.TrialReportAnswer(should_prune=prune, step=step)


# ------------------------------------------------------------------------------------ trial's env
def trial_env(session: Session, studies: SweepStudies, server_url: str, row: WorkloadRow) -> dict[str, str]:
    """The variables a trial's job gets (empty for any other workload): GPUPOOL_PARAM_<NAME> per parameter,
    GPUPOOL_SWEEP_ID, GPUPOOL_TRIAL (its number), GPUPOOL_TRIAL_TOKEN and GPUPOOL_URL (where to report)."""
    if row.parent_id is None:
        return {}
    parent = repo.workload_by_id(session, row.parent_id)
    number = trial_number(row.parent_id, row.idempotency_key)
    if parent is None or parent.kind != "sweep" or number is None:
        return {}
    spec = parse_spec(parent.spec)
    if not isinstance(spec, SweepSpec):
        return {}
    study = studies.study(parent.id, spec)
    storage = study._storage
    frozen = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, number))
    return param_env(frozen.params) | {
        "GPUPOOL_SWEEP_ID": str(parent.id), "GPUPOOL_TRIAL": str(number), "GPUPOOL_URL": server_url,
        "GPUPOOL_TRIAL_TOKEN": trial_token(studies.secret(study), row.id)}
