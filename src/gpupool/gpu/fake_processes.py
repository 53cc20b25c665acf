"""Scripted GPU memory for real processes: the fake GPUs report usage for processes found by an environment
variable, on the card their own environment points at.

A description entry `{env: "DEMO_GPU_TAG=hog", memory: [[0, 2GiB], [5s, 14GiB]]}` (no `pid`) makes the fake
report, for every session in which some process has `DEMO_GPU_TAG=hog` in its environment, one process
holding that memory, the trace starting when the process is first seen: the lowest pid of the session
among the matching processes that have no matching child (the program itself, not the shell that runs
it), leaving out launchers — processes that started a matching process in another session, such as the
executor's supervisor, which has the replica's environment too. Its card is the one `gpu:` names, else the one
the process would open: the first entry of its `CUDA_VISIBLE_DEVICES` when it is a GPU or MIG UUID of
this node, else the first of `GPUPOOL_GPU_INDICES` (MPS clients see device 0; simulated cards show none),
else a plain index in `CUDA_VISIBLE_DEVICES`.
Processes that see no card of this node use no GPU memory, as with a real driver. A process whose environment
names an MPS pipe directory is an MPS client (listed by the MPS process call, as with a real MPS server).

This is how tests and demos give a real replica (started by the executor with the environment of its
allocation) a scripted GPU footprint without knowing its pid in advance. Processes are found through
/proc (`/proc/<pid>/environ` and `stat`); the scan is injectable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gpupool.gpu.fake_nvml import FakeCard, FakeGpuState, FakeProcess, Trace


@dataclass(frozen=True, slots=True)
class SeenProcess:
    """A process of this machine: pid, session id, environment and parent pid."""

    pid: int
    sid: int
    env: Mapping[str, str]
    ppid: int = 0


Scanner = Callable[[], Iterable[SeenProcess]]


def scan_proc(root: Path = Path("/proc")) -> list[SeenProcess]:
    """Every process whose environment this user may read (others, and those that end meanwhile, are
    skipped)."""
    found = []
    for entry in root.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        if len(fields) < 4:
            continue
        env = dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)
        found.append(SeenProcess(int(entry.name), int(fields[3]), env, int(fields[1])))
    return found


@dataclass(slots=True)
class ProcessMatcher:
    """One `env:` entry of a description: processes with `variable=value` hold `memory` (a trace from the
    moment each is first seen) on card `gpu` (None: the card their environment names), MIG device `mig`."""

    variable: str
    value: str
    memory: Trace
    gpu: int | None = None
    mig: int | None = None
    tracked: dict[int, FakeProcess] = field(default_factory=dict)
    launchers: set[int] = field(default_factory=set)


def parse_env_match(text: str) -> tuple[str, str]:
    """'NAME=VALUE' -> (NAME, VALUE); ValueError when there is no '=' or no name."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ValueError("write the variable as NAME=VALUE, e.g. DEMO_GPU_TAG=hog")
    return name.strip(), value


def _card_of(env: Mapping[str, str], cards: list[FakeCard]) -> tuple[int, int | None] | None:
    """(card index, MIG position) a process with this environment would use, or None."""
    visible = [d.strip() for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    first = visible[0] if visible else ""
    for card in cards:
        if first == card.uuid:
            return card.index, None
        with_compute = [gi for gi in card.instances if gi.compute]
        for position, instance in enumerate(with_compute):
            if first and first == instance.uuid:
                return card.index, position
    indices = [i for i in env.get("GPUPOOL_GPU_INDICES", "").split(",") if i.strip().isdigit()]
    if indices:
        return int(indices[0]), None
    return (int(first), None) if first.isdigit() else None


def refresh_matched(state: FakeGpuState, matchers: list[ProcessMatcher], scan: Scanner) -> None:
    """Bring the state's processes in line with the matchers: a process for each newly seen matching
    session, an end time for those whose process is gone."""
    if not matchers:
        return
    seen = list(scan())
    t = state.t
    known = {card.index for card in state.cards}
    for matcher in matchers:
        matching = [p for p in seen if p.env.get(matcher.variable) == matcher.value]
        by_pid = {p.pid: p for p in matching}
        matcher.launchers &= set(by_pid)
        matcher.launchers |= {p.ppid for p in matching if p.ppid in by_pid and by_pid[p.ppid].sid != p.sid}
        parents = {p.ppid for p in matching} | matcher.launchers
        leaders: dict[int, SeenProcess] = {}
        for proc in matching:
            if proc.pid in parents:
                continue  # a shell or a launcher of a matching process, not the program itself
            current = leaders.get(proc.sid)
            if current is None or proc.pid < current.pid:
                leaders[proc.sid] = proc
        wanted = {p.pid: p for p in leaders.values()}
        for pid in sorted(set(matcher.tracked) - set(wanted)):
            state.processes.remove(matcher.tracked.pop(pid))  # gone: the driver stops reporting it
        for pid, proc in sorted(wanted.items()):
            if pid in matcher.tracked:
                continue
            where = (matcher.gpu, matcher.mig) if matcher.gpu is not None else _card_of(proc.env, state.cards)
            if where is None or where[0] not in known:
                continue
            shifted = Trace(tuple((when + t, value) for when, value in matcher.memory.points))
            process = FakeProcess(pid, where[0], shifted, where[1], start=t,
                                  mps_client="CUDA_MPS_PIPE_DIRECTORY" in proc.env)
            matcher.tracked[pid] = process
            state.processes.append(process)


def default_scanner() -> Scanner:
    """The /proc scan of this machine (empty where there is no /proc)."""
    root = Path("/proc")
    return (lambda: scan_proc(root)) if root.is_dir() and os.name == "posix" else (lambda: [])
