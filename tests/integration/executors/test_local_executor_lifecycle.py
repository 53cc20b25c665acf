"""The local executor with real processes: start, poll, stop, logs, exit codes, process groups, idempotency."""

from __future__ import annotations

import errno
import os
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from tests.support.servers import wait_until

from gpupool.executors import _supervisor as supervisor_files
from gpupool.executors import procfs
from gpupool.executors.base import Capability, ExecutorError, ReplicaState
from gpupool.executors.local import HANDLE_FILE, LocalExecutor, log_file_name

if TYPE_CHECKING:
    from conftest import LocalHarness


def _log(local: LocalHarness, handle: dict[str, object]) -> list[str]:
    return list(local.executor.logs(handle))


def test_capabilities_include_follow_logs_and_reattach(local: LocalHarness) -> None:
    assert {Capability.FOLLOW_LOGS, Capability.REATTACH} <= local.executor.capabilities
    assert Capability.MULTI_NODE not in local.executor.capabilities


def test_replica_sees_base_env_plus_launch_env_only_and_runs_in_cwd(local: LocalHarness) -> None:
    # pytest sets PYTEST_CURRENT_TEST in the server's own environment: a replica must not inherit it.
    assert "PYTEST_CURRENT_TEST" in os.environ
    handle = local.start('echo "foo=$FOO"; echo "pwd=$(pwd)"; echo "leak=${PYTEST_CURRENT_TEST:-none}"; '
                         'echo "home=$HOME"', env={"FOO": "bar baz"})
    status = local.wait(handle)
    assert status.state == ReplicaState.SUCCEEDED and status.exit_code == 0
    assert _log(local, handle) == [
        "foo=bar baz", f"pwd={local.tmp / 'work'}", "leak=none", f"home={local.tmp / 'home'}",
    ]
    assert handle["log_path"] == str(local.tmp / "logs" / "w1" / "replica-0.log")


def test_the_shell_is_not_a_login_shell_and_reads_no_profile(local: LocalHarness, tmp_path: Path) -> None:
    # a login shell would read these (and a slow one, like pyenv's, delays every start); the replica's own
    # environment, its PATH included, is used as it is
    home = local.tmp / "home"
    home.mkdir(parents=True, exist_ok=True)
    for profile in (".profile", ".bash_profile", ".bash_login"):
        (home / profile).write_text("echo profile was read\nexport PATH=/nowhere\n")
    tool_dir = tmp_path / "tools"
    tool_dir.mkdir()
    tool = tool_dir / "gpupool-test-tool"
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    handle = local.start("shopt -q login_shell && echo login || echo not login; gpupool-test-tool",
                         env={"PATH": f"{tool_dir}:/usr/bin:/bin"})
    assert local.wait(handle).state == ReplicaState.SUCCEEDED
    assert _log(local, handle) == ["not login", "tool ran"]


@pytest.mark.parametrize(("command", "state", "exit_code", "message"), [
    ("exit 0", ReplicaState.SUCCEEDED, 0, "exit code 0"),
    ("exit 3", ReplicaState.FAILED, 3, "exit code 3"),
    ("echo oops >&2; exit 1", ReplicaState.FAILED, 1, "exit code 1"),
    ("kill -KILL $$", ReplicaState.FAILED, 128 + 9, "killed by SIGKILL"),
    ("no-such-command-gpupool", ReplicaState.FAILED, 127, "exit code 127"),
])
def test_exit_codes_are_recorded(local: LocalHarness, command: str, state: ReplicaState, exit_code: int,
                                 message: str) -> None:
    handle = local.start(command)
    status = local.wait(handle)
    assert (status.state, status.exit_code, status.message) == (state, exit_code, message)


def test_stderr_goes_to_the_same_log(local: LocalHarness) -> None:
    handle = local.start("echo out; echo err >&2; printf 'no newline'")
    local.wait(handle)
    assert _log(local, handle) == ["out", "err", "no newline"]


def test_poll_reports_running_then_stop_ends_it_with_sigterm(local: LocalHarness) -> None:
    handle = local.start("sleep 30")
    local.wait_running(handle)
    started = time.monotonic()
    local.executor.stop(handle, grace_s=5)
    assert time.monotonic() - started < 1.0  # stop does not wait for the replica
    status = local.wait(handle)
    assert status.state == ReplicaState.STOPPED
    assert status.exit_code == 128 + signal.SIGTERM
    assert status.message == "stopped (killed by SIGTERM)"


def test_replica_that_handles_sigterm_exits_on_its_own_within_the_grace_period(local: LocalHarness) -> None:
    handle = local.start("trap 'echo cleaning up; exit 7' TERM; echo ready; sleep 30 & wait")
    local.until(lambda: _log(local, handle) == ["ready"])
    local.executor.stop(handle, grace_s=10)
    status = local.wait(handle)
    assert (status.state, status.exit_code) == (ReplicaState.STOPPED, 7)
    assert _log(local, handle) == ["ready", "cleaning up"]


def test_replica_ignoring_sigterm_is_killed_after_the_grace_period(local: LocalHarness) -> None:
    handle = local.start("trap '' TERM; echo ready; sleep 30")
    local.until(lambda: _log(local, handle) == ["ready"])
    asked = time.monotonic()
    local.executor.stop(handle, grace_s=0.5)
    time.sleep(0.3)
    assert local.executor.poll(handle).state == ReplicaState.RUNNING  # still inside its grace period
    status = local.wait(handle)
    assert time.monotonic() - asked >= 0.5
    assert status.state == ReplicaState.STOPPED
    assert status.exit_code == 128 + signal.SIGKILL
    assert status.message == "stopped (killed by SIGKILL after the grace period)"


def test_stop_ends_every_process_of_the_group(local: LocalHarness) -> None:
    pids = local.tmp / "work" / "pids"
    handle = local.start(f"sleep 300 & echo $! >> {pids}; (trap '' TERM; sleep 300) & echo $! >> {pids}; wait")
    local.until(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    children = [procfs.identify(int(pid)) for pid in pids.read_text().split()]
    assert all(child is not None and procfs.is_running(child) for child in children)
    local.executor.stop(handle, grace_s=0.3)
    local.wait(handle)
    local.until(lambda: not any(procfs.is_running(c) for c in children if c is not None), timeout_s=5)


def test_background_children_do_not_outlive_a_finished_replica(local: LocalHarness) -> None:
    pid_file = local.tmp / "work" / "pid"
    handle = local.start(f"sleep 300 & echo $! > {pid_file}; exit 0")
    assert local.wait(handle).state == ReplicaState.SUCCEEDED
    child = procfs.identify(int(pid_file.read_text()))
    local.until(lambda: child is None or not procfs.is_running(child), timeout_s=5)


def test_stop_is_idempotent_and_keeps_the_earliest_deadline(local: LocalHarness) -> None:
    handle = local.start("trap '' TERM; echo ready; sleep 30")
    local.until(lambda: _log(local, handle) == ["ready"])
    local.executor.stop(handle, grace_s=0.2)
    local.executor.stop(handle, grace_s=60)  # a later, longer stop must not postpone the SIGKILL
    status = local.wait(handle, timeout_s=5)
    assert (status.state, status.exit_code) == (ReplicaState.STOPPED, 137)
    local.executor.stop(handle)  # stopping an ended replica does nothing
    assert local.executor.poll(handle) == status


def test_stop_during_start_is_honoured(local: LocalHarness) -> None:
    handle = local.start("sleep 30")
    local.executor.stop(handle, grace_s=1)  # very likely before the supervisor has started the command
    status = local.wait(handle)
    assert status.state == ReplicaState.STOPPED


def test_start_is_idempotent_per_replica_and_attempt(local: LocalHarness) -> None:
    runs = local.tmp / "work" / "runs"
    command = f"echo run >> {runs}"
    first = local.start(command)
    assert local.start(command) == first
    assert local.new_executor().start(local.launch(command)) == first  # another instance, same root
    local.wait(first)
    assert runs.read_text() == "run\n"
    retry = local.start(command, attempt=1)
    assert retry != first
    assert retry["log_path"].endswith(log_file_name(0, 1)) and log_file_name(0, 1) == "replica-0.attempt-1.log"
    local.wait(retry)
    assert runs.read_text() == "run\nrun\n"


def test_concurrent_starts_of_one_replica_start_one_process(local: LocalHarness) -> None:
    runs = local.tmp / "work" / "runs"
    launch = local.launch(f"echo run >> {runs}")
    handles: list[dict[str, object]] = []
    threads = [threading.Thread(target=lambda: handles.append(local.executor.start(launch))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    local.handles.append(handles[0])
    assert all(h == handles[0] for h in handles)
    local.wait(handles[0])
    assert runs.read_text() == "run\n"


def test_missing_working_directory_is_an_executor_error(local: LocalHarness) -> None:
    with pytest.raises(ExecutorError, match=r"working directory .* does not exist"):
        local.start("true", cwd=local.tmp / "nowhere")


@pytest.mark.parametrize("workload_id", ["../escape", "a/b", "", ".."])
def test_workload_ids_unfit_for_a_path_are_refused(local: LocalHarness, workload_id: str) -> None:
    with pytest.raises(ExecutorError, match="cannot use workload id"):
        local.start("true", workload_id=workload_id)


def test_unknown_handles_are_lost_and_otherwise_ignored(local: LocalHarness) -> None:
    for handle in ({}, {"executor": "ray", "id": 1}, {"executor": "local", "pid": "x"}):
        assert local.executor.poll(handle).state == ReplicaState.LOST
        local.executor.stop(handle)
        assert list(local.executor.logs(handle, follow=True)) == []


def test_logs_tail_returns_the_last_lines(local: LocalHarness) -> None:
    handle = local.start("for i in 1 2 3 4 5; do echo line $i; done")
    local.wait(handle)
    assert list(local.executor.logs(handle, tail=2)) == ["line 4", "line 5"]
    assert list(local.executor.logs(handle, tail=0)) == []
    assert list(local.executor.logs(handle, tail=50)) == [f"line {i}" for i in range(1, 6)]


def test_logs_follow_streams_until_the_replica_ends(local: LocalHarness) -> None:
    handle = local.start("for i in 1 2 3; do echo step $i; sleep 0.2; done; printf done")
    seen: list[tuple[float, str]] = []
    for line in local.executor.logs(handle, follow=True):
        seen.append((time.monotonic(), line))
    assert [line for _, line in seen] == ["step 1", "step 2", "step 3", "done"]
    assert seen[-1][0] - seen[0][0] >= 0.3  # lines arrived over time, not all at the end
    assert local.executor.poll(handle).state == ReplicaState.SUCCEEDED


def test_logs_follow_with_tail_starts_from_the_last_lines(local: LocalHarness) -> None:
    gate = local.tmp / "work" / "gate"
    handle = local.start(f"echo a; echo b; echo c; while [ ! -e {gate} ]; do sleep 0.05; done; echo d")
    local.until(lambda: len(_log(local, handle)) == 3)
    stream = local.executor.logs(handle, tail=1, follow=True)
    assert next(stream) == "c"
    gate.touch()
    assert list(stream) == ["d"]


def test_close_leaves_replicas_running(local: LocalHarness) -> None:
    handle = local.start("sleep 30")
    local.wait_running(handle)
    local.executor.close()
    local.executor.close()
    assert local.executor.poll(handle).state == ReplicaState.RUNNING


def test_executor_refuses_read_only_enforcement_it_cannot_give(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        executor = LocalExecutor(tmp_path, read_only=True)
        assert Capability.READ_ONLY_PATHS in executor.capabilities
    else:
        with pytest.raises(ExecutorError, match="root"):
            LocalExecutor(tmp_path, read_only=True)
    assert Capability.READ_ONLY_PATHS not in LocalExecutor(tmp_path, read_only=False).capabilities


def test_an_environment_value_with_a_nul_byte_is_an_executor_error(local: LocalHarness) -> None:
    with pytest.raises(ExecutorError, match="cannot start replica 0 of w1"):
        local.start("true", env={"BAD": "a\0b"})


def test_an_unbounded_grace_period_is_capped_and_sigterm_still_sent(local: LocalHarness) -> None:
    handle = local.start("sleep 30")
    local.wait_running(handle)
    local.executor.stop(handle, grace_s=float("inf"))
    status = local.wait(handle)
    assert (status.state, status.exit_code) == (ReplicaState.STOPPED, 143)


def test_the_session_id_names_every_process_of_a_running_replica(local: LocalHarness) -> None:
    assert Capability.SESSION_IDS in local.executor.capabilities
    pid_file = local.tmp / "work" / "child"
    handle = local.start(f"sleep 300 & echo $! > {pid_file}; wait")
    local.until(lambda: pid_file.exists() and pid_file.read_text().strip() != "")
    session = local.executor.session_id(handle)
    command = local.command_of(handle)
    # the command leads its own session, and what it spawns stays in it (the GPU monitor relies on this)
    assert command is not None and session == command.pid == os.getsid(int(pid_file.read_text()))
    local.executor.stop(handle, grace_s=0)
    local.wait(handle)
    assert local.executor.session_id(handle) is None  # ended
    assert local.executor.session_id({"executor": "other"}) is None


def test_a_replica_whose_files_cannot_be_written_is_an_executor_error(local: LocalHarness) -> None:
    # the replica's state directory's place is taken by a file: mkdir fails with an OSError of its own
    taken = local.executor.state_dir("w-taken", 0, 0).parent
    taken.parent.mkdir(parents=True, exist_ok=True)
    taken.write_text("not a directory")
    with pytest.raises(ExecutorError, match="cannot start replica 0 of w-taken"):
        local.start("true", workload_id="w-taken")
    assert local.start("true", workload_id="w-other")  # other replicas still start


def test_a_supervisor_spawned_by_a_start_that_then_failed_is_released(
        local: LocalHarness, monkeypatch: pytest.MonkeyPatch) -> None:
    # the supervisor runs, then writing the handle fails (a full disk): the start is an ExecutorError, and the
    # server's release of what the failed start left stops the command
    real_write = supervisor_files.write_json_atomic

    def full_disk(path: str, data: object) -> None:
        if path.endswith(HANDLE_FILE):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        real_write(path, data)

    monkeypatch.setattr(supervisor_files, "write_json_atomic", full_disk)
    pid_file = local.tmp / "work" / "command.pid"
    with pytest.raises(ExecutorError, match="No space left on device"):
        local.start(f"echo $$ > {pid_file}; exec sleep 60", workload_id="w-full")
    wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), 10.0)  # the command did start
    command = int(pid_file.read_text())
    assert _alive(command)
    local.executor.release_unstarted("w-full", 0, 0, grace_s=1.0)
    wait_until(lambda: not _alive(command), 10.0)


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return " Z" not in Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1][:3]
    except OSError:
        return False
