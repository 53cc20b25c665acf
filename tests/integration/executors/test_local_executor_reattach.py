"""Crash safety of the local executor: replicas outlive the server, a new executor finds them again, and
pids reused by other processes are not mistaken for replicas."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING

from gpupool.executors import procfs
from gpupool.executors.base import ReplicaState

if TYPE_CHECKING:
    from conftest import LocalHarness

SERVER_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    from gpupool.executors.base import ReplicaLaunch
    from gpupool.executors.local import LocalExecutor

    root, work, logs, home, command = sys.argv[1:6]
    executor = LocalExecutor(Path(root), base_env={"PATH": "/usr/bin:/bin", "HOME": home})
    handle = executor.start(ReplicaLaunch("crash1", 0, "worker", command, {}, Path(work), Path(logs)))
    print(json.dumps(handle), flush=True)
    time.sleep(600)
""")


def test_a_new_executor_instance_finds_a_running_replica_and_later_its_exit_code(local: LocalHarness) -> None:
    gate = local.tmp / "work" / "gate"
    command = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo ending; exit 4"
    handle = local.start(command)
    local.wait_running(handle)
    stored = json.loads(json.dumps(handle))  # what the server keeps in its database
    local.executor.close()
    del local.executor  # the original object is gone, as after a server restart

    restarted = local.new_executor()
    local.executor = restarted
    assert restarted.poll(stored).state == ReplicaState.RUNNING
    assert restarted.start(local.launch(command)) == stored  # a replayed start starts nothing new
    gate.touch()
    status = local.wait(stored, executor=restarted)
    assert (status.state, status.exit_code) == (ReplicaState.FAILED, 4)
    assert list(restarted.logs(stored)) == ["started", "ending"]


def test_replica_keeps_running_when_the_server_process_is_killed(local: LocalHarness) -> None:
    gate = local.tmp / "work" / "gate"
    command = f"echo started; while [ ! -e {gate} ]; do sleep 0.05; done; echo finished; exit 5"
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_SCRIPT, str(local.root), str(local.tmp / "work"), str(local.tmp / "logs"),
         str(local.tmp / "home"), command],
        stdout=subprocess.PIPE, start_new_session=True, text=True,
    )
    try:
        assert server.stdout is not None
        handle = json.loads(server.stdout.readline())
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and its whole process group die at once
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    local.handles.append(handle)

    restarted = local.new_executor()
    local.until(lambda: restarted.poll(handle).state == ReplicaState.RUNNING)
    time.sleep(0.2)
    assert restarted.poll(handle).state == ReplicaState.RUNNING  # it survived the kill
    gate.touch()
    status = local.wait(handle, executor=restarted)
    assert (status.state, status.exit_code) == (ReplicaState.FAILED, 5)
    assert list(restarted.logs(handle)) == ["started", "finished"]


def test_a_reused_pid_is_not_taken_for_the_replica(local: LocalHarness, tmp_path: Path) -> None:
    # A handle whose pid now belongs to another live process (here: this test process) but with another
    # start time must read as lost, not running.
    me = procfs.identify(os.getpid())
    assert me is not None
    empty_state = tmp_path / "state"
    empty_state.mkdir()
    base = {"executor": "local", "state_dir": str(empty_state), "log_path": str(tmp_path / "log"),
            "pid": me.pid, "boot_id": me.boot_id}
    assert local.executor.poll({**base, "start_time": me.start_time + 1}).state == ReplicaState.LOST
    assert local.executor.poll({**base, "start_time": me.start_time, "boot_id": "another-boot"}).state \
        == ReplicaState.LOST
    # Control: the exact identity of a live process does read as alive.
    assert local.executor.poll({**base, "start_time": me.start_time}).state == ReplicaState.STARTING


def test_supervisor_killed_without_exit_record_is_lost_and_stop_still_ends_the_command(
        local: LocalHarness) -> None:
    handle = local.start("echo ready; sleep 300")
    local.until(lambda: list(local.executor.logs(handle)) == ["ready"])
    command = local.command_of(handle)
    assert command is not None
    os.kill(int(handle["pid"]), signal.SIGKILL)  # the supervisor dies, e.g. by the OOM killer
    local.until(lambda: local.executor.poll(handle).state == ReplicaState.LOST)
    assert "gone without recording an exit code" in local.executor.poll(handle).message
    assert procfs.is_running(command)  # the orphaned command still runs ...
    local.executor.stop(handle, grace_s=1)
    local.until(lambda: not procfs.is_running(command))  # ... until stop ends it without the supervisor
    assert local.executor.poll(handle).state == ReplicaState.STOPPED


def test_the_sigkill_escalation_happens_without_the_server(local: LocalHarness) -> None:
    handle = local.start("trap '' TERM; echo ready; sleep 300")
    local.until(lambda: list(local.executor.logs(handle)) == ["ready"])
    command = local.command_of(handle)
    assert command is not None
    local.executor.stop(handle, grace_s=0.3)
    local.executor.close()  # nobody polls from now on: the supervisor alone must finish the job
    local.until(lambda: not procfs.is_running(command), timeout_s=5)
    status = local.new_executor().poll(handle)
    assert (status.state, status.exit_code) == (ReplicaState.STOPPED, 137)
