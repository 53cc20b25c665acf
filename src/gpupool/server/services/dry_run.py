"""The dry run of a submission: validate a spec as submit does (same parser, same project and permission
checks, same "can never run" check), then ask the scheduling loop what one cycle would do with it now
(`SchedulingLoop.what_if`): start it (where), preempt for it, or keep it pending (why, position, expected
start). Nothing is stored."""

from __future__ import annotations

from sqlalchemy.orm import Session

from gpupool.api.usage_schemas import DryRunPlacement, DryRunResult
from gpupool.domain.errors import ConflictError
from gpupool.domain.specs import parse_spec
from gpupool.scheduler.queues import beyond_limit
from gpupool.scheduler.types import ReplicaPlacement
from gpupool.server.api import schemas
from gpupool.server.environments import Viewer
from gpupool.server.services import workloads
from gpupool.server.services.auth import Principal
from gpupool.server.services.feasibility import FeasibilityCache, pending_from_spec
from gpupool.server.workers.scheduling import SchedulingLoop
from gpupool.store.convert import queue_from_row
from gpupool.store.repos import queues

CANDIDATE = "dry-run"  # the id the candidate has in the what-if cycle (real ids are numbers)


def _placements(placements: tuple[ReplicaPlacement, ...]) -> list[DryRunPlacement]:
    return [DryRunPlacement(node=p.node, gpus=[{"index": g.index, "milli": g.milli} for g in p.gpus])
            for p in placements]


def dry_run(session: Session, principal: Principal, body: schemas.SubmitRequest, loop: SchedulingLoop,
            feasibility: FeasibilityCache, now: float) -> DryRunResult:
    """What would happen to this spec if it were submitted now (ValidationError etc. exactly as submit)."""
    spec = parse_spec(workloads.load_spec_input(body))
    project_id, project = workloads._resolve_project(session, principal, spec)  # the same checks as submit
    queue_row = queues.queue_of_project(session, project_id)
    if queue_row is None:
        raise ConflictError(f"project {project} has no queue; ask an administrator to recreate it")
    queue = queue_row.name
    feasibility.check_environment(spec, Viewer(principal.name, principal.is_admin))  # as submit
    never = feasibility.never_fits_reason(session, spec, queue)
    candidate = pending_from_spec(CANDIDATE, queue, spec, now)
    over_limit = beyond_limit(queue_from_row(queue_row), candidate.nominal())
    if never is not None or over_limit:
        return DryRunResult(verdict="never" if never else "waits", project=project, queue=queue,
                            reason=never or f"it {over_limit}; it would wait until the limit is raised")
    decisions = loop.what_if(candidate)
    bound = decisions.bound().get(CANDIDATE)
    if bound is not None:
        return DryRunResult(verdict="now", project=project, queue=queue, placements=_placements(bound))
    victims = [p for p in decisions.preemptions if p.preemptor_id == CANDIDATE]
    if victims:
        return DryRunResult(verdict="preempting", project=project, queue=queue, preempts=len(victims))
    pending = next((p for p in decisions.pending if p.workload_id == CANDIDATE), None)
    reserve = next((r for r in decisions.reservations if r.workload_id == CANDIDATE), None)
    return DryRunResult(verdict="waits", project=project, queue=queue,
                        reason=pending.reason if pending else "other pending work comes first",
                        position=pending.position if pending else None,
                        expected_start=reserve.start_time if reserve and not reserve.hold else None,
                        placements=_placements(reserve.placements) if reserve else [])
