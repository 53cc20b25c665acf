"""MPS: one CUDA MPS control daemon per GPU in `mps` mode, started, checked and stopped by gpupool.

The sequence follows NVIDIA's Multi-Process Service documentation (https://docs.nvidia.com/deploy/mps/),
"Appendix: Tools and Interface Reference" and "Appendix: Common Tasks" (starting and stopping MPS on Linux):
- start: with `CUDA_VISIBLE_DEVICES=<GPU uuid>`, `CUDA_MPS_PIPE_DIRECTORY` and `CUDA_MPS_LOG_DIRECTORY` set
  (one pair of directories per daemon, keyed by the GPU's UUID, so that several daemons run side by side
  and two local nodes of one server never share one), optionally
  `nvidia-smi -i <uuid> -c EXCLUSIVE_PROCESS` (recommended by NVIDIA, needs root), then
  `nvidia-cuda-mps-control -d` (start the daemon in the background). It runs detached: its own session,
  stdin from /dev/null and its output appended to `start.log` in the log directory. With pipes instead, the
  forked daemon would keep them open and the start would wait for its timeout while the daemon runs;
- health: the daemon writes its PID to `nvidia-cuda-mps-control.pid` in its pipe directory; it is healthy
  while that process lives; its log is `control.log` in the log directory;
- stop: `echo quit | nvidia-cuda-mps-control` with the same pipe directory, then `nvidia-smi -c DEFAULT`
  when gpupool changed the compute mode.

Commands run through an injected `CommandRunner`, so tests record the exact sequences.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

PID_FILE = "nvidia-cuda-mps-control.pid"
CONTROL_LOG = "control.log"
START_LOG = "start.log"
MISSING_BINARY = 127
# Longest pipe directory kept readable (the GPU UUID in the path): MPS creates Unix sockets there, whose
# paths Linux limits to 107 bytes; 88 leaves room for "/control_privileged" (19), the longest socket name
# we know MPS uses. Longer: a digest of the UUID.
MAX_PIPE_DIR = 88


@dataclass(frozen=True, slots=True)
class CommandResult:
    """Exit status and output of one command (127: the program was not found; 124: it timed out)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


class CommandRunner(Protocol):
    """Runs `argv` with `env` added to the process environment and `stdin` as input; never raises for a
    failing or missing program (the result says so). Blocks until the command ends or `timeout_s`. With
    `output`, the command runs detached (its own session, no stdin) with stdout and stderr appended to that
    file, and the result's stderr holds the file's last lines: for programs that fork a daemon, which
    would otherwise keep the pipes open."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], stdin: str | None = None,
                 timeout_s: float = 30.0, output: Path | None = None) -> CommandResult: ...


class SubprocessRunner:
    """CommandRunner with subprocess.run (the real one)."""

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], stdin: str | None = None,
                 timeout_s: float = 30.0, output: Path | None = None) -> CommandResult:
        try:
            if output is None:
                done = subprocess.run(list(argv), input=stdin, env={**os.environ, **env}, capture_output=True,
                                      text=True, timeout=timeout_s, check=False)
                return CommandResult(done.returncode, done.stdout, done.stderr)
            output.parent.mkdir(parents=True, exist_ok=True)
            with output.open("ab") as sink:
                code = subprocess.run(list(argv), stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                      env={**os.environ, **env}, timeout=timeout_s, check=False,
                                      start_new_session=True).returncode
        except FileNotFoundError:
            return CommandResult(MISSING_BINARY, "", f"{argv[0]}: command not found")
        except subprocess.TimeoutExpired:
            return CommandResult(124, "", f"{argv[0]} did not finish within {timeout_s:g}s")
        return CommandResult(code, "", _tail(output, 5))


@dataclass(frozen=True, slots=True)
class MpsPaths:
    """The pipe and log directories of one GPU's MPS daemon."""

    pipe_dir: Path
    log_dir: Path

    @property
    def pid_file(self) -> Path:
        """Where the control daemon writes its PID."""
        return self.pipe_dir / PID_FILE


def mps_paths(home: Path, gpu_uuid: str) -> MpsPaths:
    """$GPUPOOL_HOME/mps/<GPU uuid>/{pipe,log}: one pair per physical card, whatever node or index refers to
    it. Where that pipe directory would pass MAX_PIPE_DIR characters, the key is `gpu-` and 16 hex digits
    of the UUID's SHA-256 instead (still one per card)."""
    base = home / "mps" / gpu_uuid
    if len(str(base / "pipe")) > MAX_PIPE_DIR:
        base = home / "mps" / f"gpu-{hashlib.sha256(gpu_uuid.encode()).hexdigest()[:16]}"
    return MpsPaths(base / "pipe", base / "log")


class MpsState(StrEnum):
    """What gpupool knows of one GPU's MPS daemon."""

    RUNNING = "running"
    STOPPED = "stopped"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class MpsStatus:
    """The state of one GPU's daemon at `checked_at`, its PID when known, and a human message (for a
    failure: what failed and the last lines of its log). The server stores it on the node."""

    gpu_index: int
    state: MpsState
    pid: int | None = None
    message: str = ""
    checked_at: float = 0.0


def pid_alive(pid: int) -> bool:
    """True when a process with this PID runs: signal 0 probes it without sending anything, and on Linux
    a zombie (ended, not yet reaped by its parent) counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists but belongs to another user (e.g. a root-started daemon)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux) or it just ended: trust the signal probe
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


class MpsManager:
    """Starts, checks and stops one MPS control daemon per GPU; see the module docstring.

    `set_compute_mode` also switches the card to EXCLUSIVE_PROCESS while its daemon runs (root only).
    `wait` sleeps between start-up checks (injected so tests do not sleep).
    """

    def __init__(self, home: Path, runner: CommandRunner | None = None, *,
                 is_alive: Callable[[int], bool] = pid_alive, set_compute_mode: bool = False,
                 control: str = "nvidia-cuda-mps-control", smi: str = "nvidia-smi",
                 wait: Callable[[float], None] | None = None, start_checks: int = 10) -> None:
        self.home = home
        self.runner = runner or SubprocessRunner()
        self.is_alive = is_alive
        self.set_compute_mode = set_compute_mode
        self.control, self.smi = control, smi
        self.wait = wait or time.sleep
        self.start_checks = start_checks

    def environment(self, gpu_uuid: str) -> dict[str, str]:
        """The variables the daemon (and the control commands) run with."""
        paths = mps_paths(self.home, gpu_uuid)
        return {"CUDA_VISIBLE_DEVICES": gpu_uuid, "CUDA_MPS_PIPE_DIRECTORY": str(paths.pipe_dir),
                "CUDA_MPS_LOG_DIRECTORY": str(paths.log_dir)}

    def check(self, gpu_index: int, gpu_uuid: str, now: float) -> MpsStatus:
        """RUNNING when the daemon's PID file names a live process; STOPPED when there is no PID file;
        FAILED when the PID file is left by a process that died (with the end of its log)."""
        paths = mps_paths(self.home, gpu_uuid)
        pid = _read_pid(paths.pid_file)
        if pid is None:
            return MpsStatus(gpu_index, MpsState.STOPPED, None, "no MPS daemon", now)
        if self.is_alive(pid):
            return MpsStatus(gpu_index, MpsState.RUNNING, pid, f"MPS control daemon {pid} running", now)
        return MpsStatus(gpu_index, MpsState.FAILED, pid,
                         f"MPS control daemon {pid} for GPU {gpu_index} died{_log_tail(paths)}", now)

    def start(self, gpu_index: int, gpu_uuid: str, now: float) -> MpsStatus:
        """Start the daemon of one GPU unless it already runs (idempotent). FAILED with the reason when
        the command fails or the daemon does not come up."""
        current = self.check(gpu_index, gpu_uuid, now)
        if current.state == MpsState.RUNNING:
            return current
        paths = mps_paths(self.home, gpu_uuid)
        for folder in (paths.pipe_dir, paths.log_dir):
            folder.mkdir(parents=True, exist_ok=True)
        paths.pid_file.unlink(missing_ok=True)  # a stale file from a daemon that died
        env = self.environment(gpu_uuid)
        if self.set_compute_mode:
            result = self.runner([self.smi, "-i", gpu_uuid, "-c", "EXCLUSIVE_PROCESS"], env)
            if result.returncode != 0:
                return self._failed(gpu_index, now, "could not set EXCLUSIVE_PROCESS compute mode", result)
        result = self.runner([self.control, "-d"], env, output=paths.log_dir / START_LOG)
        if result.returncode != 0:
            return self._failed(gpu_index, now, "could not start the MPS control daemon", result)
        for attempt in range(self.start_checks):
            status = self.check(gpu_index, gpu_uuid, now)
            if status.state == MpsState.RUNNING:
                return status
            if attempt + 1 < self.start_checks:
                self.wait(0.1)
        return MpsStatus(gpu_index, MpsState.FAILED, None,
                         f"the MPS control daemon for GPU {gpu_index} did not come up{_log_tail(paths)}", now)

    def stop(self, gpu_index: int, gpu_uuid: str, now: float) -> MpsStatus:
        """Ask the daemon to quit (a no-op when none runs); STOPPED, or FAILED when it stays alive."""
        current = self.check(gpu_index, gpu_uuid, now)
        if current.state == MpsState.STOPPED:
            return current
        env = self.environment(gpu_uuid)
        if current.state == MpsState.RUNNING:
            result = self.runner([self.control], env, stdin="quit\n")
            if result.returncode != 0:
                return self._failed(gpu_index, now, "could not stop the MPS control daemon", result)
        if self.set_compute_mode:
            self.runner([self.smi, "-i", gpu_uuid, "-c", "DEFAULT"], env)
        for attempt in range(self.start_checks):
            if current.pid is None or not self.is_alive(current.pid):
                break
            if attempt + 1 < self.start_checks:
                self.wait(0.1)
        else:
            return MpsStatus(gpu_index, MpsState.FAILED, current.pid,
                             f"the MPS control daemon {current.pid} did not quit", now)
        mps_paths(self.home, gpu_uuid).pid_file.unlink(missing_ok=True)
        return MpsStatus(gpu_index, MpsState.STOPPED, None, "MPS daemon stopped", now)

    def reconcile(self, wanted: Mapping[int, str], present: Mapping[int, str], now: float) -> list[MpsStatus]:
        """Make daemons match the GPUs in MPS mode: start one for every GPU of `wanted` ({index: uuid}) that
        lacks a running daemon, stop those of `present` (every GPU of the node) that are not wanted and
        still have one. Returns the status of every GPU, wanted ones first, by index."""
        statuses = [self.start(index, uuid, now) for index, uuid in sorted(wanted.items())]
        for index, uuid in sorted(present.items()):
            if index not in wanted:
                statuses.append(self.stop(index, uuid, now))
        return statuses

    def _failed(self, gpu_index: int, now: float, what: str, result: CommandResult) -> MpsStatus:
        detail = (result.stderr or result.stdout).strip().splitlines()
        reason = detail[-1] if detail else f"exit status {result.returncode}"
        if result.returncode == MISSING_BINARY:
            reason += " (install the NVIDIA driver's MPS tools, or use another sharing mode)"
        return MpsStatus(gpu_index, MpsState.FAILED, None, f"{what} for GPU {gpu_index}: {reason}", now)


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _tail(path: Path, lines: int) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def _log_tail(paths: MpsPaths, lines: int = 3) -> str:
    tail = _tail(paths.log_dir / CONTROL_LOG, lines).splitlines()
    return "; last log lines: " + " | ".join(tail) if tail else ""

