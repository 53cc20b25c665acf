"""Queues, quotas and fair share.

Usage U_q is what queue q's running work holds; G_q its guarantee, L_q its limit, T the pool's capacity.

- Order: queues by weighted dominant share, max_r(U_q,r / T_r) / weight_q (DRF), lowest first; a queue
  whose next workload stays inside its guarantee goes before any queue that would borrow.
- Limit: U_q + R <= L_q for every resource.
- Guarded resources: those that some queue has a guarantee of. A resource that no queue guarantees (e.g. CPU
  when every guarantee names only GPUs) is shared first come, first served: using it is never borrowing.
- Borrowing: for every guarded resource r where U_q + R would exceed G_q, the pool must hold it without
  touching what others are owed: (U_q + R)_r + sum over other queues o of reserved_o,r <= T_r, where
  reserved_o = max(U_o, G_o) when o does not lend, else U_o. This is a quota matter only where the idle
  guarantees of non-lending queues (owed_r = sum of max(G_o - U_o, 0)) make the difference; when the pool is
  simply busy (owed_r = 0), the workload waits for capacity like any other (placement says why, and backfill
  may reserve for it). Lending queues' idle guarantees are lent; they are reclaimed by preemption when their
  owner has work that then fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ResourceVector, format_cpu, format_gpu, format_memory
from gpupool.scheduler.types import RunningWorkload

_FORMATS = {"cpu": format_cpu, "memory": format_memory, "gpu": format_gpu}


def _component(vector: ResourceVector, name: str) -> int:
    return {"cpu": vector.cpu_milli, "memory": vector.memory_mib, "gpu": vector.gpu_milli}[name]


class QuotaBook:
    """Per-queue usage with the quota rules above. Queues that running work names but that are not
    configured count as queues with no guarantee that lend."""

    def __init__(self, queues: Mapping[str, QueueSpec], running: Iterable[RunningWorkload],
                 total: ResourceVector) -> None:
        self.queues = dict(queues)
        self.total = total
        self.guarded: tuple[str, ...] = tuple(
            r for r in ResourceVector.NAMES if any(_component(q.guaranteed, r) > 0 for q in self.queues.values()))
        self.usage: dict[str, ResourceVector] = {name: ResourceVector() for name in self.queues}
        for workload in running:
            self.add(workload.queue, workload.usage)

    def spec(self, queue: str) -> QueueSpec:
        """The queue's spec (a default, lending, unguaranteed spec for unknown names)."""
        return self.queues.get(queue) or QueueSpec(name=queue)

    def add(self, queue: str, amount: ResourceVector) -> None:
        """Record that `queue` now also uses `amount`."""
        self.usage[queue] = self.usage.get(queue, ResourceVector()) + amount

    def remove(self, queue: str, amount: ResourceVector) -> None:
        """Record that `queue` gave back `amount`."""
        self.usage[queue] = self.usage.get(queue, ResourceVector()) - amount

    def used(self, queue: str) -> ResourceVector:
        """What the queue uses now."""
        return self.usage.get(queue, ResourceVector())

    def share(self, queue: str) -> float:
        """Weighted dominant share of the queue's usage."""
        return self.used(queue).dominant_share(self.total) / self.spec(queue).weight

    def _beyond_guarantee(self, queue: str, amount: ResourceVector) -> tuple[str, ...]:
        return tuple(r for r in amount.exceeding(self.spec(queue).guaranteed) if r in self.guarded)

    def within_guarantee(self, queue: str, demand: ResourceVector) -> bool:
        """True when the queue's usage plus `demand` stays inside its guarantee (of the guarded resources)."""
        return not self._beyond_guarantee(queue, self.used(queue) + demand)

    def is_borrowing(self, queue: str, resources: tuple[str, ...] = ResourceVector.NAMES) -> bool:
        """True when the queue uses more than its guarantee of any guarded one of `resources`."""
        return any(r in resources for r in self._beyond_guarantee(queue, self.used(queue)))

    def _reserved(self, queue: str) -> ResourceVector:
        spec, used = self.spec(queue), self.used(queue)
        if spec.lend:
            return used
        g = spec.guaranteed
        return ResourceVector(max(used.cpu_milli, g.cpu_milli), max(used.memory_mib, g.memory_mib),
                              max(used.gpu_milli, g.gpu_milli))

    def blocked_by_quota(self, queue: str, demand: ResourceVector) -> str | None:
        """None when `demand` may be admitted to `queue` by the quota rules, else the human reason."""
        spec = self.spec(queue)
        after = self.used(queue) + demand
        if spec.limit is not None:
            over = after.exceeding(spec.limit)
            if over:
                return f"queue {queue} would exceed its limit: " + self._compare(after, spec.limit, over, "limit")
        borrowed = self._beyond_guarantee(queue, after)
        if not borrowed:
            return None
        others, owed = ResourceVector(), ResourceVector()
        for name in sorted(self.usage.keys() | self.queues.keys()):
            if name != queue:
                reserved = self._reserved(name)
                others, owed = others + reserved, owed + (reserved - self.used(name))
        room = self.total - others
        short = tuple(r for r in borrowed if _component(after, r) > _component(room, r) and _component(owed, r) > 0)
        if short:
            return (f"queue {queue} would borrow beyond its guarantee, and the idle capacity it could borrow is "
                    "owed to other queues: " + self._compare(after, room, short, "available to borrow"))
        return None

    @staticmethod
    def _compare(after: ResourceVector, bound: ResourceVector, names: tuple[str, ...], word: str) -> str:
        parts = [f"{n} {_FORMATS[n](_component(after, n))} > {word} {_FORMATS[n](_component(bound, n))}"
                 for n in names]
        return ", ".join(parts)
