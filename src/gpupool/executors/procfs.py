"""Process identity on Linux: a pid plus its start time and the boot it belongs to.

A pid alone does not identify a process: after a process ends, the kernel may give its pid to a new one.
The start time (clock ticks since boot, field 22 of `/proc/<pid>/stat`) does not change during a process's
life, so (boot id, pid, start time) names one process for good: the local executor stores that triple in a
replica's handle and treats the replica as gone when the triple no longer matches.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
BOOT_ID_FILE = PROC / "sys" / "kernel" / "random" / "boot_id"
_DEAD_STATES = frozenset({"Z", "X", "x"})  # zombie or dead: ended, only the exit status is left


@dataclass(frozen=True, slots=True)
class ProcessIdentity:
    """One process for good: its pid, its start time in clock ticks since boot, and the boot id."""

    pid: int
    start_time: int
    boot_id: str


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat the executor reads: run state letter and start time."""

    state: str
    start_time: int


def read_stat(pid: int) -> ProcStat | None:
    """State and start time of `pid`, or None when there is no such process (or it cannot be read)."""
    try:
        raw = (PROC / str(pid) / "stat").read_text(encoding="utf-8", errors="replace")
        # The command name (field 2) is in parentheses and may itself contain ')' and spaces.
        fields = raw.rsplit(")", 1)[1].split()
        return ProcStat(state=fields[0], start_time=int(fields[19]))
    except (OSError, IndexError, ValueError):
        return None


def boot_id() -> str:
    """This boot's random id (changes at every reboot; '' where the kernel does not provide one)."""
    try:
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def identify(pid: int) -> ProcessIdentity | None:
    """The identity of the running process `pid`, or None when it does not exist."""
    stat = read_stat(pid)
    if stat is None:
        return None
    return ProcessIdentity(pid, stat.start_time, boot_id())


def is_running(identity: ProcessIdentity) -> bool:
    """True when the process named by `identity` still exists and has not ended: same boot, same pid and
    same start time (a different start time means the pid now belongs to another process), not a zombie."""
    if identity.boot_id and identity.boot_id != boot_id():
        return False
    stat = read_stat(identity.pid)
    return stat is not None and stat.start_time == identity.start_time and stat.state not in _DEAD_STATES


def signal_group(pgid: int, signum: int) -> bool:
    """Send `signum` to process group `pgid`; False when the group no longer exists. Never raises for a
    vanished group. Refuses pgid <= 1 (that would signal far more than one replica)."""
    if pgid <= 1:
        raise ValueError(f"refusing to signal process group {pgid}")
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        return False
    return True


def group_exists(pgid: int) -> bool:
    """True while any process of group `pgid` exists (zombies included)."""
    return pgid > 1 and signal_group(pgid, 0)


def signal_process(identity: ProcessIdentity, signum: int = signal.SIGTERM) -> bool:
    """Send `signum` to the process named by `identity` if it still runs; True when sent."""
    if not is_running(identity):
        return False
    try:
        os.kill(identity.pid, signum)
    except ProcessLookupError:
        return False
    return True


def _session_of(pid: str) -> tuple[int, int] | None:
    """(session id, start time) of `pid`, None when gone or unreadable."""
    try:
        fields = (PROC / pid / "stat").read_text(encoding="utf-8", errors="replace").rsplit(")", 1)[1].split()
        return int(fields[3]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _has_marker(pid: str, marker: bytes) -> bool:
    try:
        return marker in (PROC / pid / "environ").read_bytes().split(b"\0")
    except OSError:
        return False


def replica_processes(marker: bytes, session: ProcessIdentity | None = None) -> list[int]:
    """Pids of the processes that belong to one replica: those whose environment holds the `marker` entry
    (`NAME=value`), and, while its leader `session` still runs (so its session id cannot have been reused),
    those in that session (which catches a process that cleared its environment). Sorted; this process is
    never listed. Reads every /proc/<pid>, so it is for rare events (a replica declared lost), not polls."""
    session_id = session.pid if session is not None and session.pid > 1 and is_running(session) else None
    found = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        info = _session_of(entry.name)
        if info is None:
            continue
        if (session_id is not None and info[0] == session_id) or _has_marker(entry.name, marker):
            found.append(int(entry.name))
    return sorted(found)


def kill_all(pids: list[int]) -> int:
    """SIGKILL each pid (gone ones are skipped); returns how many were signalled."""
    killed = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            killed += 1
        except ProcessLookupError:
            pass
    return killed
