"""Turning specs into the scheduler's PendingWorkload, and the "can never run" checks at submission: resources no
node can ever offer, and an `environment:` that does not exist or is not built."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from gpupool.domain.specs import WorkloadSpec
from gpupool.scheduler.feasibility import NeverFitsChecker
from gpupool.scheduler.types import PendingWorkload, ReplicaGroup, ReplicaPlacement
from gpupool.server.environments import EnvironmentStore, Viewer, environment_problem
from gpupool.store.convert import node_from_row
from gpupool.store.orm import NodeRow
from gpupool.store.repos import nodes
from gpupool.store.setup_cache import cached


def pending_from_spec(workload_id: str, queue: str, spec: WorkloadSpec, submitted_at: float,
                      nominated: tuple[ReplicaPlacement, ...] | None = None,
                      fair_share_preempted_by: frozenset[str] = frozenset()) -> PendingWorkload:
    """The scheduler's view of a pending workload: one replica group per role, in replica-number order."""
    groups = tuple(ReplicaGroup(r.role, r.replicas, r.resources) for r in spec.roles)
    return PendingWorkload(id=workload_id, queue=queue, groups=groups, priority=spec.priority,
                           submit_time=submitted_at, min_available=spec.min_available, preemptible=spec.preemptible,
                           max_runtime_s=spec.max_runtime_s, nominated=nominated,
                           fair_share_preempted_by=fair_share_preempted_by)


def nodes_fingerprint(rows: Sequence[NodeRow]) -> str:
    """A value that changes whenever the nodes' capacity, GPUs, labels, taints or schedulability change."""
    return json.dumps([[r.name, r.cpu_milli, r.memory_mib, r.gpus, r.labels, r.taints, r.schedulable] for r in rows],
                      sort_keys=True)


class FeasibilityCache:
    """A NeverFitsChecker kept while the nodes stay the same, and the server's environments (set once the
    environment store exists; None: `environment:` is not checked at submission); safe to share between
    request threads."""

    def __init__(self, environments: EnvironmentStore | None = None) -> None:
        self._lock = threading.Lock()
        self._key: tuple[Any, ...] | None = None
        self._checker: NeverFitsChecker | None = None
        self.environments = environments

    def check_environment(self, spec: WorkloadSpec, viewer: Viewer) -> None:
        """ValidationError (field `environment`) when the spec names an environment that does not exist, that
        `viewer` (who submits) may not use, or that is not built (its build failed or was removed); nothing when
        it names none or no store is set."""
        if self.environments is not None:
            environment_problem(self.environments, spec.environment, viewer)

    def never_fits_reason(self, session: Session, spec: WorkloadSpec, queue: str) -> str | None:
        """None when the spec fits the pool when it is empty; else why it never can. Each call compares the
        nodes' stored capacity text (kept while the store's setup sequence is unchanged, store/setup_cache.py) with
        the cached checker's; nodes are loaded only when it changed."""
        return self.checker(session).reason(pending_from_spec("submission", queue, spec, 0.0))

    def checker(self, session: Session) -> NeverFitsChecker:
        """The checker for the nodes as `session` sees them (rebuilt only when they changed)."""
        key = cached(session, ("nodes_capacity",), nodes.capacity_fingerprint)
        with self._lock:
            if self._checker is None or key != self._key:
                self._checker = NeverFitsChecker([node_from_row(r) for r in nodes.list_nodes(session)])
                self._key = key
            return self._checker


class PinnedFeasibility(FeasibilityCache):
    """One checker for every check of one transaction (a batch of submissions): the nodes are compared with
    the cache once, not once per item."""

    def __init__(self, cache: FeasibilityCache, session: Session) -> None:
        super().__init__()
        self._pinned = cache.checker(session)

    def checker(self, session: Session) -> NeverFitsChecker:
        """The checker pinned at construction."""
        return self._pinned
