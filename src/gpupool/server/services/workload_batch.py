"""Batch submission: several workload specs in one request, accepted all together or not at all."""

from __future__ import annotations

from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError, ValidationError, error_from_kind, error_kind
from gpupool.domain.specs import WorkloadSpec
from gpupool.server.api import schemas
from gpupool.server.services import workloads
from gpupool.server.services.auth import Principal
from gpupool.server.services.feasibility import FeasibilityCache, PinnedFeasibility
from gpupool.store.orm import WorkloadRow


def at_item(index: int, error: GpupoolError) -> GpupoolError:
    """The same kind of error (its API class) naming the batch item it is about (`items[3].resources`)."""
    kind = error_kind(error)
    if isinstance(error, ValidationError):
        where = f"items[{index}]" + (f".{error.field}" if error.field else "")
        named = error_from_kind(kind, error.detail, where) if kind else None
    else:
        named = error_from_kind(kind, f"items[{index}]: {error.message}") if kind else None
    return named or GpupoolError(f"items[{index}]: {error.message}")


def prepare_batch(items: list[schemas.SubmitRequest]) -> list[WorkloadSpec]:
    """Every item's validated spec (no database; before the transaction); the first invalid item's error,
    naming the item, otherwise."""
    specs = []
    for index, body in enumerate(items):
        try:
            specs.append(workloads.prepare_submission(body))
        except GpupoolError as error:
            raise at_item(index, error) from None
    return specs


def plan_batch(session: Session, principal: Principal, items: list[schemas.SubmitRequest],
               specs: list[WorkloadSpec], feasibility: FeasibilityCache) -> list[workloads.SubmitPlan]:
    """`workloads.plan_submission` for every item, in a read-only transaction before the write one (the nodes
    read once for all); the first refused item's error, naming the item."""
    plans = []
    pinned = PinnedFeasibility(feasibility, session)
    for index, (body, spec) in enumerate(zip(items, specs, strict=True)):
        try:
            plans.append(workloads.plan_submission(session, principal, body, spec, pinned))
        except GpupoolError as error:
            raise at_item(index, error) from None
    return plans


def submit_batch(session: Session, principal: Principal, items: list[schemas.SubmitRequest],
                 specs: list[WorkloadSpec], now: float, feasibility: FeasibilityCache,
                 plans: list[workloads.SubmitPlan] | None = None) -> list[tuple[WorkloadRow, bool]]:
    """Store every item as `workloads.submit` does, in the caller's one transaction, in order: (row, created)
    per item. An item that is refused (permission, unknown project, never fits, a reused idempotency key
    with another spec) raises its error naming the item, and the caller's rollback undoes the items before
    it: nothing of a refused batch is stored. Items with the same idempotency key and spec are one workload.
    `plans` (from `plan_batch`, one per item) are checked again item by item as `workloads.submit` does."""
    stored = []
    pinned = PinnedFeasibility(feasibility, session)
    for index, (body, spec) in enumerate(zip(items, specs, strict=True)):
        try:
            plan = plans[index] if plans is not None else None
            stored.append(workloads.submit(session, principal, body, now, pinned, prepared=spec, plan=plan))
        except GpupoolError as error:
            raise at_item(index, error) from None
    return stored
