"""Which replica a GPU process belongs to when NVML's pids are not pids of our PID namespace.

NVML reports each process by pid. Drivers that translate report pids of the caller's PID namespace; older
ones report host pids whatever namespace the caller is in, and a server running in a container then finds
none of them (`os.getsid` fails, or worse, names an unrelated process of the container). The monitor
detects it (`pids_untranslated`) and falls back to per-replica markers: every replica's processes carry
`GPUPOOL_WORKLOAD_ID`, `GPUPOOL_REPLICA` and `GPUPOOL_GPU_INDICES` in their environment, so scanning our
own /proc tells which replicas have live processes on which card. When exactly one replica holds a card,
every process NVML lists there is that replica's; when several share it, the processes cannot be split
and stay unattributed, and the report says so (`gpupool top` shows the note).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from gpupool.gpu.types import ProcessReading


@dataclass(frozen=True, slots=True, order=True)
class ReplicaKey:
    """One replica of one workload (and its project, for metrics labels)."""

    workload_id: str
    replica: int = 0
    project: str = ""


@dataclass(frozen=True, slots=True)
class Marker:
    """A process of this namespace that belongs to a replica (read from its environment)."""

    pid: int
    workload_id: str
    replica: int
    gpu_indices: tuple[int, ...]


class ProcessView(Protocol):
    """What the monitor may ask about the processes of its own PID namespace."""

    def visible(self, pid: int) -> bool:
        """True when a process with this pid exists in our namespace."""

    def nested(self) -> bool:
        """True when we run in a PID namespace below the host's (a container)."""

    def markers(self) -> list[Marker]:
        """The processes of our namespace that carry a replica's marker variables."""


class ProcView:
    """ProcessView over /proc (`root`): `/proc/<pid>` for visibility, the NSpid line of `/proc/self/status`
    (one pid per namespace level) for nesting, and `/proc/<pid>/environ` for markers (processes whose
    environment we may not read are skipped)."""

    def __init__(self, root: Path = Path("/proc")) -> None:
        self.root = root

    def visible(self, pid: int) -> bool:
        """True when /proc/<pid> exists."""
        return pid > 0 and (self.root / str(pid)).exists()

    def nested(self) -> bool:
        """True when /proc/self/status lists more than one pid on its NSpid line."""
        try:
            for line in (self.root / "self" / "status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    return len(line.split()) > 2
        except OSError:
            pass
        return False

    def markers(self) -> list[Marker]:
        """Every process of ours whose environment has GPUPOOL_WORKLOAD_ID and GPUPOOL_REPLICA."""
        found = []
        for entry in self.root.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                raw = (entry / "environ").read_bytes()
            except OSError:
                continue
            marker = marker_from_environ(int(entry.name), raw)
            if marker is not None:
                found.append(marker)
        return found


def marker_from_environ(pid: int, raw: bytes) -> Marker | None:
    """The replica marker in a NUL-separated environment block, or None when it has none."""
    env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
    workload, replica = env.get("GPUPOOL_WORKLOAD_ID"), env.get("GPUPOOL_REPLICA", "")
    if not workload or not replica.isdigit():
        return None
    indices = tuple(int(i) for i in env.get("GPUPOOL_GPU_INDICES", "").split(",") if i.strip().isdigit())
    return Marker(pid, workload, int(replica), indices)


def pids_untranslated(processes: Sequence[ProcessReading], view: ProcessView) -> bool:
    """True when NVML's pids are not pids of our namespace: there are some and none is visible here, or we
    run in a nested namespace and any is not visible (a translating driver lists only visible ones)."""
    if not processes:
        return False
    hidden = [p for p in processes if not view.visible(p.pid)]
    return len(hidden) == len(processes) or (bool(hidden) and view.nested())


@dataclass(frozen=True, slots=True)
class CardOwners:
    """The result of matching by marker: the one replica of each card that has one, and a note for the
    report naming the cards whose processes could not be attributed."""

    owners: Mapping[int, ReplicaKey]
    note: str


def owners_by_marker(holders: Mapping[int, Sequence[ReplicaKey]], markers: Iterable[Marker],
                     nested: bool) -> CardOwners:
    """Card -> replica for the cards a single replica holds. `holders` lists the replicas allocated each
    card; replicas whose processes carry a marker naming the card narrow that list (a replica that has
    not started its GPU process yet, or ended, does not count) when any such marker is found."""
    live: dict[int, set[tuple[str, int]]] = {}
    for m in markers:
        for index in m.gpu_indices:
            live.setdefault(index, set()).add((m.workload_id, m.replica))
    owners: dict[int, ReplicaKey] = {}
    shared = []
    for index, keys in sorted(holders.items()):
        marked = [k for k in keys if (k.workload_id, k.replica) in live.get(index, set())]
        candidates = sorted(set(marked or keys))
        if len(candidates) == 1:
            owners[index] = candidates[0]
        elif candidates:
            shared.append(index)
    where = "this server runs in a container (nested PID namespace) and " if nested else ""
    note = (f"{where}NVML reports process ids of another PID namespace (a driver that does not translate "
            "them): GPU memory is attributed per card, by the replica markers of its processes")
    if shared:
        note += f"; GPU {', '.join(map(str, shared))} hold several replicas, whose processes stay unattributed"
    return CardOwners(owners, note)
