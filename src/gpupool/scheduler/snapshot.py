"""ClusterSnapshot: free capacity per node and per GPU, updated incrementally.

The snapshot keeps numpy arrays (one row per node, one column per GPU slot of the widest node) so that
filters and scorers look at every node in a few vectorised operations. `assume` and `forget` change only
the rows of the nodes a placement touches and bump those nodes' `version`, which lets scorers cache
per-node results (a version value names one node state, even across clones). `what_if_removed` and
`trial` return a function that undoes their change, the basis of gang trials, preemption and backfill.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt

from gpupool.domain.errors import ConflictError
from gpupool.domain.nodes import Node
from gpupool.domain.resources import MILLI_PER_GPU, ResourceVector, SharingMode
from gpupool.scheduler.types import GpuAssignment, ReplicaPlacement

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
Restore = Callable[[], None]
_STAMPS = itertools.count(1)  # node-state stamps, unique across snapshots and their clones


class OverCommitError(ConflictError):
    """A placement does not fit the snapshot (a bug in a caller, or state that changed underneath)."""


class ClusterSnapshot:
    """Free CPU, memory and GPU capacity of every node; see the module docstring."""

    def __init__(self, nodes: Iterable[Node]) -> None:
        self.nodes: tuple[Node, ...] = tuple(sorted(nodes, key=lambda n: n.name))
        self._index = {n.name: i for i, n in enumerate(self.nodes)}
        if len(self._index) != len(self.nodes):
            raise ConflictError("node names must be unique")
        self._columns = [{g.index: j for j, g in enumerate(n.gpus)} for n in self.nodes]
        self._build_arrays()
        # per MIG card: how many placements hold each instance (a count, not a flag: what is assumed with
        # force on a held instance, such as a reservation's claim in a future, stays held when another goes)
        self._mig_used: dict[tuple[int, int], list[int]] = {
            (i, j): [0] * len(g.mig_instances)
            for i, n in enumerate(self.nodes) for j, g in enumerate(n.gpus) if g.mode == SharingMode.MIG
        }
        self.mig_nodes: tuple[int, ...] = tuple(sorted({i for i, _ in self._mig_used}))
        self.changes = 0

    def _build_arrays(self) -> None:
        n, width = len(self.nodes), max((len(x.gpus) for x in self.nodes), default=0)
        width = max(width, 1)
        self.width = width
        self.cap_cpu = np.array([x.cpu_milli for x in self.nodes], dtype=np.int64)
        self.cap_mem = np.array([x.memory_mib for x in self.nodes], dtype=np.int64)
        self.free_cpu = self.cap_cpu.copy()
        self.free_mem = self.cap_mem.copy()
        self.schedulable = np.array([x.schedulable for x in self.nodes], dtype=np.bool_)
        self.gpu_count = np.array([len(x.gpus) for x in self.nodes], dtype=np.int64)
        self.exists = np.zeros((n, width), dtype=np.bool_)
        self.gpu_mem_total = np.zeros((n, width), dtype=np.int64)
        self.whole_ok = np.zeros((n, width), dtype=np.bool_)
        self.share_ok = np.zeros((n, width), dtype=np.bool_)
        for i, node in enumerate(self.nodes):
            for j, g in enumerate(node.gpus):
                usable = g.healthy and g.mode != SharingMode.MIG
                self.exists[i, j] = g.healthy
                self.gpu_mem_total[i, j] = g.memory_mib
                self.whole_ok[i, j] = usable
                self.share_ok[i, j] = usable and g.mode.allows_shares
        self.free_milli = np.where(self.exists, MILLI_PER_GPU, 0).astype(np.int64)
        self.free_gmem = np.where(self.exists, self.gpu_mem_total, 0).astype(np.int64)
        # free milli of the cards that take whole GPUs or shares (MIG and unhealthy cards: 0), kept per card on
        # assume/forget, and how many of them are outside 0..1000 (over-committed by a forced assume)
        self.usable_card = self.whole_ok | self.share_ok
        self.usable_free_milli = np.where(self.usable_card, self.free_milli, 0)
        self.usable_out_of_range = 0
        self.cap_gpu = self.free_milli.sum(axis=1)
        self.version = np.zeros(n, dtype=np.int64)
        self.full_free = np.zeros(n, dtype=np.int64)
        self.share_max_free = np.zeros(n, dtype=np.int64)
        # the largest share by milli alone (its memory is that part of the card's) that each card and node takes
        # now, kept on assume/forget (`share_terms`): (1000 g + c) // T for free GPU memory g of a card of T MiB.
        # A share of s milli takes s T // 1000 MiB, which is <= g exactly when s <= (1000 g + 999) // T (T > 0);
        # a card of 0 MiB takes any share while g >= 0: c = 1000 and T read as 1 give 1000 (g + 1), at least
        # 1000 then and at most 0 for g < 0; a card that takes no shares: c = -2**50, always below 0
        self._share_divisor = np.where(self.gpu_mem_total > 0, self.gpu_mem_total, 1)
        self._share_offset = np.where(self.share_ok, np.where(self.gpu_mem_total > 0, MILLI_PER_GPU - 1, MILLI_PER_GPU),
                                      -(2**50))
        self.share_largest = np.full((n, width), -1, dtype=np.int64)
        # per node and card, what `_refresh_row` reads that never changes: memory, takes whole cards, takes shares,
        # and the offset and divisor of its largest share
        static = [a.tolist() for a in (self.gpu_mem_total, self.whole_ok, self.share_ok, self._share_offset,
                                       self._share_divisor)]
        self._cards = [list(zip(*(a[i] for a in static), strict=True)) for i in range(n)]
        self.share_largest_node = np.full(n, -1, dtype=np.int64)
        self.free_gpu_total = np.zeros(n, dtype=np.int64)
        self._refresh(np.arange(n))

    def _refresh(self, rows: IntArray | list[int]) -> None:
        free = self.free_milli[rows]
        self.full_free[rows] = self.whole_free_cards(rows).sum(axis=1)
        self.share_max_free[rows] = np.where(self.share_ok[rows], free, 0).max(axis=1)
        self.free_gpu_total[rows] = free.sum(axis=1)
        largest = (MILLI_PER_GPU * self.free_gmem[rows] + self._share_offset[rows]) // self._share_divisor[rows]
        self.share_largest[rows] = np.minimum(free, largest)
        self.share_largest_node[rows] = self.share_largest[rows].max(axis=1)
        self.version[rows] = next(_STAMPS)

    def _refresh_row(self, row: int) -> None:
        """`_refresh` of one row, in plain Python over its few cards (integers: the same values; about half the
        time of numpy on the row's 1-D views, whose per-call cost dominates for 8 cards)."""
        whole = share_max = total = 0
        largest: list[int] = []
        first = True
        for milli, memory, card in zip(self.free_milli[row].tolist(), self.free_gmem[row].tolist(),
                                       self._cards[row], strict=True):
            card_memory, whole_ok, share_ok, offset, divisor = card
            whole += milli == MILLI_PER_GPU and memory >= card_memory and whole_ok
            shared = milli if share_ok else 0
            share_max = shared if first or shared > share_max else share_max
            first = False
            total += milli
            largest.append(min(milli, (MILLI_PER_GPU * memory + offset) // divisor))
        self.full_free[row], self.share_max_free[row], self.free_gpu_total[row] = whole, share_max, total
        self.share_largest[row] = largest
        self.share_largest_node[row] = max(largest)
        self.version[row] = next(_STAMPS)

    def whole_free_cards(self, rows: IntArray | list[int] | int | slice = slice(None)) -> BoolArray:
        """Per card of `rows`: healthy, not MIG, with all of its compute and memory free."""
        mask: BoolArray = ((self.free_milli[rows] == MILLI_PER_GPU) & (self.free_gmem[rows] >= self.gpu_mem_total[rows])
                           & self.whole_ok[rows])
        return mask

    # ----------------------------------------------------------------------------------------- lookups
    def __len__(self) -> int:
        return len(self.nodes)

    def index_of(self, name: str) -> int:
        """Row of the node called `name`; KeyError if unknown."""
        return self._index[name]

    def row_of(self, name: str) -> int | None:
        """Row of the node called `name`; None if this snapshot does not have it (a node that left the pool)."""
        return self._index.get(name)

    def total_capacity(self) -> ResourceVector:
        """CPU, memory and healthy GPU milli of all schedulable nodes."""
        s = self.schedulable
        return ResourceVector(int(self.cap_cpu[s].sum()), int(self.cap_mem[s].sum()), int(self.cap_gpu[s].sum()))

    def free_on(self, row: int) -> ResourceVector:
        """Free CPU, memory and GPU milli on node `row`."""
        return ResourceVector(int(self.free_cpu[row]), int(self.free_mem[row]), int(self.free_gpu_total[row]))

    def mig_free_instances(self, row: int, profile: str) -> list[tuple[int, int]]:
        """(column, instance position) of the free MIG instances of `profile` on node `row`, in order."""
        found = []
        for j, gpu in enumerate(self.nodes[row].gpus):
            used = self._mig_used.get((row, j))
            if used is None:
                continue
            found += [(j, k) for k, inst in enumerate(gpu.mig_instances) if inst.profile == profile and used[k] <= 0]
        return found

    # ------------------------------------------------------------------------------------ assume/forget
    def fits(self, placement: ReplicaPlacement) -> bool:
        """True when `placement` could be assumed now (its node exists and has the capacity it names)."""
        row = self._index.get(placement.node)
        if row is None or not self.schedulable[row]:
            return False
        if self.free_cpu[row] < placement.cpu_milli or self.free_mem[row] < placement.memory_mib:
            return False
        for a in placement.gpus:
            j = self._columns[row].get(a.index)
            if j is None or not self._gpu_fits(row, j, a):
                return False
        return True

    def _gpu_fits(self, row: int, j: int, a: GpuAssignment) -> bool:
        if a.mig_instance is not None:
            used = self._mig_used.get((row, j))
            return used is not None and a.mig_instance < len(used) and used[a.mig_instance] <= 0
        if not self.exists[row, j]:
            return False
        return bool(self.free_milli[row, j] >= a.milli and self.free_gmem[row, j] >= a.memory_mib)

    def assume(self, placement: ReplicaPlacement, force: bool = False) -> None:
        """Take `placement`'s capacity. Raises OverCommitError if it does not fit, unless `force`
        (used when loading running work that a shrunken node can no longer hold). What the placement names
        that this snapshot does not have (a node that left the pool, a card or MIG instance its node no
        longer reports) takes nothing, with force or by `forget`: such work holds no capacity here."""
        if not force and not self.fits(placement):
            raise OverCommitError(f"placement on {placement.node} does not fit: {placement}")
        self._apply(placement, -1)

    def forget(self, placement: ReplicaPlacement) -> None:
        """Give back `placement`'s capacity (the inverse of assume; nothing for what this snapshot lacks)."""
        self._apply(placement, +1)

    def _apply(self, placement: ReplicaPlacement, sign: int) -> None:
        row = self._index.get(placement.node)
        if row is None:
            return  # a node that left the pool: what ran there holds nothing here
        self.free_cpu[row] += sign * placement.cpu_milli
        self.free_mem[row] += sign * placement.memory_mib
        columns = self._columns[row]
        for a in placement.gpus:
            j = columns.get(a.index)
            if j is None:
                continue  # a card the node no longer reports
            self.free_milli[row, j] += sign * a.milli
            if self.usable_card[row, j]:
                self._set_usable_free(row, j, int(self.free_milli[row, j]))
            self.free_gmem[row, j] += sign * a.memory_mib
            if a.mig_instance is not None and (used := self._mig_used.get((row, j))) and a.mig_instance < len(used):
                used[a.mig_instance] -= sign  # (an instance the card no longer has: nothing)
        self._refresh_row(row)
        self.changes += 1

    def _set_usable_free(self, row: int, column: int, milli: int) -> None:
        before = int(self.usable_free_milli[row, column])
        self.usable_free_milli[row, column] = milli
        self.usable_out_of_range += (not 0 <= milli <= MILLI_PER_GPU) - (not 0 <= before <= MILLI_PER_GPU)

    def assume_all(self, placements: Sequence[ReplicaPlacement], force: bool = False) -> None:
        """assume every placement, in order."""
        for p in placements:
            self.assume(p, force=force)

    def trial(self, placements: Sequence[ReplicaPlacement]) -> Restore:
        """assume `placements` now and return a function that forgets them again. All or nothing: when one
        does not fit, those already taken are given back and OverCommitError is raised."""
        for k, p in enumerate(placements):
            try:
                self.assume(p)
            except OverCommitError:
                for taken in reversed(placements[:k]):
                    self.forget(taken)
                raise

        def restore() -> None:
            for p in reversed(placements):
                self.forget(p)

        return restore

    def what_if_removed(self, placements: Sequence[ReplicaPlacement]) -> Restore:
        """forget `placements` now and return a function that assumes them again."""
        for p in placements:
            self.forget(p)

        def restore() -> None:
            for p in placements:
                self.assume(p, force=True)

        return restore

    def clone(self) -> ClusterSnapshot:
        """An independent copy with the same free capacity (for looking ahead in time)."""
        other = object.__new__(ClusterSnapshot)
        other.__dict__.update(self.__dict__)
        for name, value in self.__dict__.items():
            if isinstance(value, np.ndarray):
                other.__dict__[name] = value.copy()
        other._mig_used = {k: list(v) for k, v in self._mig_used.items()}
        return other

    def gpu_assignment(self, row: int, column: int, milli: int, memory_mib: int) -> GpuAssignment:
        """A GpuAssignment for card `column` of node `row` (translating to the card's node-local index)."""
        return GpuAssignment(index=self.nodes[row].gpus[column].index, milli=milli, memory_mib=memory_mib)
