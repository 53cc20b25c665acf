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
