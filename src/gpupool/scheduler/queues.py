"""Queues, quotas and fair share.

Usage U_q is what queue q's running work holds; G_q its guarantee, L_q its limit, T the pool's capacity.

- Governed resources: GPU always; CPU and memory only when some queue guarantees them. Guarantees,
  borrowing and reclaim look at governed resources only (no CPU guarantee anywhere: CPU is first come).
- Order: queues by weighted dominant share, max_r(U_q,r / T_r) / weight_q (DRF), lowest first; a queue
  whose next workload stays inside its guarantee goes before any queue that would borrow.
- Limit: U_q + R <= L_q for every resource.
- Borrowing: for every resource r where U_q + R would exceed G_q, the pool must hold it without touching
  what others are owed: (U_q + R)_r + sum over other queues o of reserved_o,r <= T_r, where
  reserved_o = max(U_o, G_o) when o does not lend, else U_o. Lending queues' idle guarantees are lent;
  they are reclaimed by preemption when their owner has work that then fits. When the pool could not hold
  the demand even without those guarantees, that is a wait for capacity, not a quota block: placement,
  preemption and backfill handle it.
- Work asked to stop (preemption victims) counts against its queue's limit until it has stopped; borrowing
  looks at the usage once it has stopped, with the preemptors nominated for the freed capacity counted in
  their queues: otherwise the victims and their preemptor count twice, the pool looks fuller than it will
  be, and work admitted as "waiting for capacity" takes the quota room that the preemptor needs when its
  victims have stopped (it would then preempt again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from gpupool.domain.queues import QueueSpec
from gpupool.domain.resources import ZERO, ResourceVector, format_cpu, format_gpu, format_memory
from gpupool.scheduler.types import RunningWorkload

_FORMATS = {"cpu": format_cpu, "memory": format_memory, "gpu": format_gpu}


_FIELDS = {"cpu": "cpu_milli", "memory": "memory_mib", "gpu": "gpu_milli"}


def _component(vector: ResourceVector, name: str) -> int:
    value: int = getattr(vector, _FIELDS[name])  # no dict of all three built per call: asked per pending head
    return value


def beyond_limit(queue: QueueSpec, demand: ResourceVector) -> str | None:
    """None when `demand` alone fits the queue's limit, else why it can never start while the limit stays."""
    if queue.limit is None:
        return None
    over = demand.exceeding(queue.limit)
    if not over:
        return None
    parts = ", ".join(f"{n} {_FORMATS[n](_component(demand, n))} > limit {_FORMATS[n](_component(queue.limit, n))}"
                      for n in over)
    return f"can never start under the current limit of queue {queue.name} ({parts}) unless the limit is raised"


class QuotaBook:
    """Per-queue usage with the quota rules above. Queues that running work names but that are not
    configured count as queues with no guarantee that lend."""

    def __init__(self, queues: Mapping[str, QueueSpec], running: Iterable[RunningWorkload],
                 total: ResourceVector) -> None:
        self.queues = dict(queues)
        self._defaults: dict[str, QueueSpec] = {}
        self.total = total
        self.usage: dict[str, ResourceVector] = {name: ResourceVector() for name in self.queues}
        self.used_total = ResourceVector()
        self.stopping: dict[str, ResourceVector] = {}
        self.settled_total = ResourceVector()  # the usage of all queues once their stopping work has stopped
        self._settled: dict[str, ResourceVector] = {}  # settled usage of the queues with stopping work
        # what the borrowing rule counts as the queues' once their stopping work has stopped (see _reserved)
        self.reserved_total = sum((self._reserved(name) for name in self.queues), ResourceVector())
        # some queue that does not lend has a guarantee: room may be owed to it
        self.owes_guarantees = any(not q.lend and q.guaranteed != ZERO for q in self.queues.values())
        self.governed = ("gpu", *(r for r in ("cpu", "memory")
                                  if any(_component(q.guaranteed, r) > 0 for q in self.queues.values())))
        for workload in running:
            self.add(workload.queue, workload.usage)
            if workload.terminating:
                self.mark_stopping(workload.queue, workload.usage)

    def mark_stopping(self, queue: str, amount: ResourceVector) -> None:
        """Record that `amount` of the queue's usage has been asked to stop. It still counts against the
        queue's limit until it has stopped, but no longer as capacity the queue keeps (reclaim, fair share) or as
        usage the borrowing rule counts."""
        before = self._reserved(queue)
        self.stopping[queue] = self.stopping.get(queue, ZERO) + amount
        self._settled[queue] = self.used(queue) - self.stopping[queue]
        self.settled_total = self.settled_total - amount
        self.reserved_total = self.reserved_total - before + self._reserved(queue)

    def settled(self, queue: str) -> ResourceVector:
        """What the queue will hold once its stopping work has stopped."""
        settled = self._settled.get(queue)
        return self.usage.get(queue, ZERO) if settled is None else settled

    def spec(self, queue: str) -> QueueSpec:
        """The queue's spec (a default, lending, unguaranteed spec for unknown names)."""
        spec = self.queues.get(queue)
        if spec is None:
            spec = self._defaults.get(queue)
            if spec is None:
                spec = self._defaults[queue] = QueueSpec(name=queue)
        return spec

    def add(self, queue: str, amount: ResourceVector) -> None:
        """Record that `queue` now also uses `amount`."""
        self._change(queue, amount)

    def remove(self, queue: str, amount: ResourceVector) -> None:
        """Record that `queue` gave back `amount`."""
        self._change(queue, ResourceVector() - amount)

    def _change(self, queue: str, delta: ResourceVector) -> None:
        lend = self.spec(queue).lend
        before = ZERO if lend else self._reserved(queue)
        self.usage[queue] = self.usage.get(queue, ZERO) + delta
        self.used_total = self.used_total + delta
        self.settled_total = self.settled_total + delta
        if queue in self._settled:
            self._settled[queue] = self._settled[queue] + delta
        if lend:  # a lending queue reserves its settled usage: the reserved total changes by delta
            self.reserved_total = self.reserved_total + delta
        else:
            self.reserved_total = self.reserved_total - before + self._reserved(queue)

    def used(self, queue: str) -> ResourceVector:
        """What the queue uses now."""
        return self.usage.get(queue, ZERO)

    def share(self, queue: str) -> float:
        """Weighted dominant share of the queue's usage."""
        return self.used(queue).dominant_share(self.total) / self.spec(queue).weight

    def _over_guarantee(self, queue: str, amount: ResourceVector) -> tuple[str, ...]:
        over = amount.exceeding(self.spec(queue).guaranteed)
        return tuple(r for r in over if r in self.governed)

    def within_guarantee(self, queue: str, demand: ResourceVector) -> bool:
        """True when the queue's usage plus `demand` stays inside its guarantee. GPU always counts; CPU and
        memory count only where this queue guarantees some (an unset guarantee means "not guaranteed on that
        resource", not a guarantee of 0 that no demand can stay inside)."""
        # the rule above per component, without building the sum and the names (asked for every queue head)
        g, used = self.spec(queue).guaranteed, self.used(queue)
        if used.gpu_milli + demand.gpu_milli > g.gpu_milli:
            return False
        if g.cpu_milli > 0 and used.cpu_milli + demand.cpu_milli > g.cpu_milli and "cpu" in self.governed:
            return False
        return not (g.memory_mib > 0 and used.memory_mib + demand.memory_mib > g.memory_mib
                    and "memory" in self.governed)

    def share_with(self, queue: str, delta: ResourceVector) -> float:
        """Weighted dominant share the queue would have with `delta` added to its settled usage."""
        return (self.settled(queue) + delta).dominant_share(self.total) / self.spec(queue).weight

    def over_guarantee_share(self, queue: str, resources: tuple[str, ...]) -> float:
        """How far the queue is above its guarantee, as the largest fraction of the pool over `resources`
        (governed ones only); 0 when it is inside its guarantee on all of them."""
        used, guaranteed = self.settled(queue), self.spec(queue).guaranteed
        fractions = [(_component(used, r) - _component(guaranteed, r)) / max(_component(self.total, r), 1)
                     for r in resources if r in self.governed]
        return max([0.0, *fractions])

    def keeps_guarantee_without(self, queue: str, amount: ResourceVector,
                                resources: tuple[str, ...] | None = None) -> bool:
        """True when giving back `amount` leaves the queue's settled usage at or above its guarantee on every
        governed resource among `resources` (default: all) that `amount` holds. On CPU and memory, a resource it
        already uses less of than guaranteed is not what is taken (freeing some as a side effect is allowed); a
        GPU guarantee always holds: a queue below it never gives GPUs back to another queue."""
        before, guaranteed = self.settled(queue), self.spec(queue).guaranteed
        after = before - amount
        checked = self.governed if resources is None else [r for r in self.governed if r in resources]
        return not any(_component(after, r) < _component(guaranteed, r)
                       and (r == "gpu" or _component(guaranteed, r) <= _component(before, r))
                       for r in checked if _component(amount, r) > 0)

    def is_borrowing(self, queue: str, resources: tuple[str, ...] = ResourceVector.NAMES) -> bool:
        """True when the queue's settled usage is above its guarantee of any of `resources` (governed ones
        only)."""
        return any(r in resources for r in self._over_guarantee(queue, self.settled(queue)))

    def _reserved(self, queue: str) -> ResourceVector:
        """What the borrowing rule counts as the queue's: its usage once its stopping work has stopped, and for
        a queue that does not lend at least its guarantee."""
        spec, settled = self.spec(queue), self.settled(queue)
        if spec.lend:
            return settled
        g = spec.guaranteed
        return ResourceVector(max(settled.cpu_milli, g.cpu_milli), max(settled.memory_mib, g.memory_mib),
                              max(settled.gpu_milli, g.gpu_milli))

    def blocked_by_quota(self, queue: str, demand: ResourceVector) -> str | None:
        """None when `demand` may be admitted to `queue` by the quota rules, else the human reason."""
        spec = self.spec(queue)
        if spec.limit is None and self._admitted_without_limit(spec, queue, demand):
            return None  # what the rules below give, without building the vectors (asked per pending head)
        never = beyond_limit(spec, demand)
        if never is not None:
            return never
        if spec.limit is not None:
            held = self.used(queue) + demand  # stopping work counts against the limit until it has stopped
            over = held.exceeding(spec.limit)
            if over:
                return f"queue {queue} would exceed its limit: " + self._compare(held, spec.limit, over, "limit")
        after = self.settled(queue) + demand
        borrowed = self._over_guarantee(queue, after)
        if not borrowed:
            return None
        others_usage, others_reserved = self._others(queue)
        lendable_room, owed = self._owed(after, borrowed, others_reserved, self.total - others_usage)
        if owed:
            return (f"queue {queue} would borrow beyond its guarantee, and the idle capacity it could borrow is "
                    "owed to other queues that do not lend: "
                    + self._compare(after, lendable_room, owed, "available to borrow"))
        return None

    def borrows(self, queue: str, demand: ResourceVector) -> bool:
        """True when `queue` would use more than its guarantee of a governed resource with `demand` added."""
        return bool(self._over_guarantee(queue, self.used(queue) + demand))

    def owed_once_free(self, queue: str, demand: ResourceVector) -> str | None:
        """Why `queue` could not start `demand` even once the capacity it needs is free, with the queues' usage
        as this book holds it: what it would borrow beyond its guarantee is more than the capacity the other
        queues lend (the rest is owed to queues that do not lend); None when it could. `blocked_by_quota`
        refuses this only while the demand fits the idle capacity; before that the demand waits for capacity
        (the scheduler asks it of a book of the work still running at a reservation's start before it makes one)."""
        after = self.settled(queue) + demand
        lendable_room, owed = self._owed(after, self._over_guarantee(queue, after), self._others(queue)[1])
        if not owed:
            return None
        return ("the capacity it would borrow once free is owed to other queues that do not lend: "
                + self._compare(after, lendable_room, owed, "available to borrow"))

    def _others(self, queue: str) -> tuple[ResourceVector, ResourceVector]:
        """What the queues other than `queue` will use, and what the borrowing rule counts as theirs (usage, at
        least the guarantee of those that do not lend), once their stopping work has stopped (the work their
        preemptors were nominated for is in their usage already): (usage, reserved)."""
        return (self.settled_total - self.settled(queue),
                self.reserved_total - self._reserved(queue))

    def _owed(self, after: ResourceVector, borrowed: tuple[str, ...], others_reserved: ResourceVector,
              physical_room: ResourceVector | None = None) -> tuple[ResourceVector, tuple[str, ...]]:
        """The room the other queues lend (the pool less what they reserve), and the `borrowed` resources of
        which `after` needs more than that (only those that fit `physical_room`, when given)."""
        lendable_room = self.total - others_reserved
        owed = tuple(r for r in borrowed if _component(lendable_room, r) < _component(after, r)
                     and (physical_room is None or _component(after, r) <= _component(physical_room, r)))
        return lendable_room, owed

    def _admitted_without_limit(self, spec: QueueSpec, queue: str, demand: ResourceVector) -> bool:
        """True when blocked_by_quota gives None for a queue without a limit: no governed resource taken
        beyond the guarantee is owed (more than the capacity others lend, within the capacity idle once
        stopping work has stopped). Per component, in integers: the same comparisons as there."""
        own, g, total = self.settled(queue), spec.guaranteed, self.total
        settled_total, reserved_total, governed = self.settled_total, self.reserved_total, self.governed
        for name, after, guaranteed, own_r, total_r, settled_all, reserved_all in (
                ("gpu", own.gpu_milli + demand.gpu_milli, g.gpu_milli, own.gpu_milli, total.gpu_milli,
                 settled_total.gpu_milli, reserved_total.gpu_milli),
                ("cpu", own.cpu_milli + demand.cpu_milli, g.cpu_milli, own.cpu_milli, total.cpu_milli,
                 settled_total.cpu_milli, reserved_total.cpu_milli),
                ("memory", own.memory_mib + demand.memory_mib, g.memory_mib, own.memory_mib, total.memory_mib,
                 settled_total.memory_mib, reserved_total.memory_mib)):
            if after <= guaranteed or name not in governed:
                continue
            reserved = own_r if spec.lend else max(own_r, guaranteed)
            if total_r - (reserved_all - reserved) < after <= total_r - (settled_all - own_r):
                return False
        return True

    @staticmethod
    def _compare(after: ResourceVector, bound: ResourceVector, names: tuple[str, ...], word: str) -> str:
        parts = [f"{n} {_FORMATS[n](_component(after, n))} > {word} {_FORMATS[n](_component(bound, n))}"
                 for n in names]
        return ", ".join(parts)
