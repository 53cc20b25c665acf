"""MPS daemon management: the exact command sequences (fake runner), failure detection, and a real
lifecycle with a stand-in control program (real processes)."""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gpupool.gpu.mps import CommandResult, MpsManager, MpsState, SubprocessRunner, mps_paths, pid_alive

UUID = "GPU-0b7e8d1c"


@dataclass
class FakeRunner:
    """Records every command; `-d` plays a daemon that writes its PID file (unless `daemon_starts` is off)."""

    fail: dict[str, CommandResult] = field(default_factory=dict)
    daemon_starts: bool = True
    alive: set[int] = field(default_factory=set)
    calls: list[tuple[tuple[str, ...], dict[str, str], str | None]] = field(default_factory=list)
    next_pid: int = 4000

    outputs: list[Path | None] = field(default_factory=list)

    def __call__(self, argv: Sequence[str], env: Mapping[str, str], stdin: str | None = None,
                 timeout_s: float = 30.0, output: Path | None = None) -> CommandResult:
        self.calls.append((tuple(argv), dict(env), stdin))
        self.outputs.append(output)
        key = " ".join(argv[1:]) or (stdin or "").strip()
        if key in self.fail:
            return self.fail[key]
        pipe = Path(env["CUDA_MPS_PIPE_DIRECTORY"])
        if argv[1:] == ["-d"] and self.daemon_starts:
            self.next_pid += 1
            self.alive.add(self.next_pid)
            (pipe / "nvidia-cuda-mps-control.pid").write_text(f"{self.next_pid}\n")
        if stdin == "quit\n":
            pid = int((pipe / "nvidia-cuda-mps-control.pid").read_text())
            self.alive.discard(pid)
        return CommandResult(0)

    def commands(self) -> list[tuple[str, ...]]:
        return [argv + ((f"<<{stdin.strip()}",) if stdin else ()) for argv, _, stdin in self.calls]


@pytest.fixture
def runner() -> FakeRunner:
    return FakeRunner()


def _manager(tmp_path: Path, runner: FakeRunner, **options: object) -> MpsManager:
    return MpsManager(tmp_path, runner, is_alive=lambda pid: pid in runner.alive, wait=lambda s: None,
                      **options)  # type: ignore[arg-type]


def test_start_runs_the_daemon_with_its_own_directories(tmp_path: Path, runner: FakeRunner) -> None:
    status = _manager(tmp_path, runner).start(2, UUID, now=5.0)
    assert (status.state, status.pid, status.gpu_index, status.checked_at) == (MpsState.RUNNING, 4001, 2, 5.0)
    assert runner.commands() == [("nvidia-cuda-mps-control", "-d")]
    paths = mps_paths(tmp_path, UUID)
    assert runner.outputs == [paths.log_dir / "start.log"]  # detached, its output to a file
    assert runner.calls[0][1] == {"CUDA_VISIBLE_DEVICES": UUID, "CUDA_MPS_PIPE_DIRECTORY": str(paths.pipe_dir),
                                  "CUDA_MPS_LOG_DIRECTORY": str(paths.log_dir)}
    assert paths.pipe_dir.is_dir() and paths.log_dir.is_dir()


def test_start_is_idempotent(tmp_path: Path, runner: FakeRunner) -> None:
    manager = _manager(tmp_path, runner)
    manager.start(0, UUID, 0.0)
    again = manager.start(0, UUID, 1.0)
    assert again.state == MpsState.RUNNING and again.pid == 4001
    assert len(runner.calls) == 1


def test_with_compute_mode_the_card_is_made_exclusive_then_restored(tmp_path: Path, runner: FakeRunner) -> None:
    manager = _manager(tmp_path, runner, set_compute_mode=True)
    manager.start(1, UUID, 0.0)
    stopped = manager.stop(1, UUID, 1.0)
    assert stopped.state == MpsState.STOPPED
    assert runner.commands() == [
        ("nvidia-smi", "-i", UUID, "-c", "EXCLUSIVE_PROCESS"),
        ("nvidia-cuda-mps-control", "-d"),
        ("nvidia-cuda-mps-control", "<<quit"),
        ("nvidia-smi", "-i", UUID, "-c", "DEFAULT"),
    ]
    assert not mps_paths(tmp_path, UUID).pid_file.exists()


def test_stopping_without_a_daemon_does_nothing(tmp_path: Path, runner: FakeRunner) -> None:
    assert _manager(tmp_path, runner).stop(0, UUID, 0.0).state == MpsState.STOPPED
    assert runner.calls == []


def test_a_daemon_that_dies_is_reported_with_its_log(tmp_path: Path, runner: FakeRunner) -> None:
    manager = _manager(tmp_path, runner)
    started = manager.start(0, UUID, 0.0)
    (mps_paths(tmp_path, UUID).log_dir / "control.log").write_text(
        "[2024-05-01 10:00:00.000 Control 4001] Starting control daemon\n"
        "[2024-05-01 10:05:00.000 Control 4001] Server 4100 exited with status 1\n")
    assert started.pid is not None
    runner.alive.discard(started.pid)
    status = manager.check(0, UUID, 60.0)
    assert status.state == MpsState.FAILED and status.checked_at == 60.0
    assert "daemon 4001 for GPU 0 died" in status.message and "Server 4100 exited with status 1" in status.message
    restarted = manager.start(0, UUID, 61.0)  # the reconciler starts it again
    assert (restarted.state, restarted.pid) == (MpsState.RUNNING, 4002)


def test_a_failing_start_command_is_reported(tmp_path: Path) -> None:
    runner = FakeRunner(fail={"-d": CommandResult(1, "", "An instance of this daemon is already running\n")})
    status = _manager(tmp_path, runner).start(0, UUID, 0.0)
    assert status.state == MpsState.FAILED
    assert status.message == ("could not start the MPS control daemon for GPU 0: An instance of this daemon is "
                              "already running")


def test_a_daemon_that_never_comes_up_is_reported(tmp_path: Path) -> None:
    runner = FakeRunner(daemon_starts=False)
    status = _manager(tmp_path, runner, start_checks=3).start(0, UUID, 0.0)
    assert status.state == MpsState.FAILED and "did not come up" in status.message


def test_a_daemon_that_ignores_quit_is_reported(tmp_path: Path, runner: FakeRunner) -> None:
    manager = _manager(tmp_path, runner, start_checks=2)
    manager.start(0, UUID, 0.0)
    runner.fail["quit"] = CommandResult(0)  # the command succeeds but the process stays
    status = manager.stop(0, UUID, 1.0)
    assert status.state == MpsState.FAILED and "did not quit" in status.message


def test_reconcile_starts_wanted_and_stops_unwanted_daemons(tmp_path: Path, runner: FakeRunner) -> None:
    manager = _manager(tmp_path, runner)
    manager.start(1, "GPU-1", 0.0)
    statuses = manager.reconcile({0: "GPU-0"}, {0: "GPU-0", 1: "GPU-1", 2: "GPU-2"}, 10.0)
    assert [(s.gpu_index, s.state) for s in statuses] == [(0, MpsState.RUNNING), (1, MpsState.STOPPED),
                                                          (2, MpsState.STOPPED)]
    assert runner.commands() == [("nvidia-cuda-mps-control", "-d"), ("nvidia-cuda-mps-control", "-d"),
                                 ("nvidia-cuda-mps-control", "<<quit")]


def test_without_the_mps_tools_the_failure_says_what_to_do(tmp_path: Path) -> None:
    manager = MpsManager(tmp_path, SubprocessRunner(), control="nvidia-cuda-mps-control-not-installed")
    status = manager.start(0, UUID, 0.0)
    assert status.state == MpsState.FAILED
    assert "command not found" in status.message and "install the NVIDIA driver's MPS tools" in status.message


STAND_IN = """#!/bin/sh
# plays nvidia-cuda-mps-control: -d starts a background process and writes its PID file; quit on stdin stops it
pidfile="$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
if [ "$1" = "-d" ]; then
  sleep 300 </dev/null >/dev/null 2>&1 &
  echo $! > "$pidfile"
  echo "started for $CUDA_VISIBLE_DEVICES" >> "$CUDA_MPS_LOG_DIRECTORY/control.log"
  exit 0
fi
read command
if [ "$command" = "quit" ]; then kill "$(cat "$pidfile")"; fi
"""


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[Path]:
    program = tmp_path / "bin" / "nvidia-cuda-mps-control"
    program.parent.mkdir()
    program.write_text(STAND_IN)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    yield program
    for pid_file in (tmp_path / "home").glob("mps/*/pipe/nvidia-cuda-mps-control.pid"):
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_real_daemon_process_is_started_watched_and_stopped(tmp_path: Path, stand_in: Path) -> None:
    manager = MpsManager(tmp_path / "home", SubprocessRunner(), control=str(stand_in))
    started = manager.start(0, UUID, 0.0)
    assert started.state == MpsState.RUNNING and started.pid is not None
    assert (mps_paths(tmp_path / "home", UUID).log_dir / "control.log").read_text() == f"started for {UUID}\n"
    os.kill(started.pid, signal.SIGKILL)
    _reap(started.pid)
    failed = manager.check(0, UUID, 1.0)
    assert failed.state == MpsState.FAILED and f"started for {UUID}" in failed.message
    again = manager.start(0, UUID, 2.0)
    assert again.state == MpsState.RUNNING and again.pid != started.pid
    assert manager.stop(0, UUID, 3.0).state == MpsState.STOPPED
    assert manager.check(0, UUID, 4.0).state == MpsState.STOPPED


def _reap(pid: int) -> None:
    """Wait until a killed stand-in daemon is really gone (it is not our child: poll)."""
    for _ in range(200):
        if not pid_alive(pid):
            return
        time.sleep(0.01)


def test_directories_are_keyed_by_gpu_uuid_and_stay_short(tmp_path: Path) -> None:
    home = Path("/home/u/.gpupool")
    a, b = mps_paths(home, "GPU-aaaa"), mps_paths(home, "GPU-bbbb")  # two nodes' GPU 0: apart
    assert (a.pipe_dir, b.log_dir) == (home / "mps/GPU-aaaa/pipe", home / "mps/GPU-bbbb/log")
    deep = tmp_path / ("x" * 60)
    long_uuid = "GPU-0b7e8d1c-1111-2222-3333-444455556666"
    paths = mps_paths(deep, long_uuid)
    # 60 + the tmp path + 40 characters of UUID would pass 88: a digest of the UUID keeps it short and stable
    assert paths.pipe_dir.parent.name.startswith("gpu-") and len(paths.pipe_dir.parent.name) == 20
    assert paths == mps_paths(deep, long_uuid) != mps_paths(deep, long_uuid + "7")


CHATTY = """#!/bin/sh
# a daemon that keeps the stdout/stderr it inherited, as a forked daemon may
pidfile="$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid"
if [ "$1" = "-d" ]; then
  echo "starting"
  (sleep 300; echo never) &
  echo $! > "$pidfile"
  exit 0
fi
read command
if [ "$command" = "quit" ]; then kill "$(cat "$pidfile")"; fi
"""


def test_a_daemon_that_keeps_its_output_open_does_not_hold_the_start(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "nvidia-cuda-mps-control"
    program.parent.mkdir()
    program.write_text(CHATTY)
    program.chmod(program.stat().st_mode | stat.S_IXUSR)
    manager = MpsManager(tmp_path / "home", SubprocessRunner(), control=str(program))
    began = time.monotonic()
    started = manager.start(0, UUID, 0.0)
    try:
        # with its output on pipes, the start would wait for the runner's 30 s timeout and report a failure
        assert started.state == MpsState.RUNNING and time.monotonic() - began < 10
        assert (mps_paths(tmp_path / "home", UUID).log_dir / "start.log").read_text() == "starting\n"
    finally:
        if started.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(started.pid, signal.SIGKILL)
