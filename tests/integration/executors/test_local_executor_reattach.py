"""Crash safety of the local executor: replicas outlive the server, a new executor finds them again, and
pids reused by other processes are not mistaken for replicas."""

from __future__ import annotations

import json
import os
import random
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


def _pids_with(needle: str) -> list[int]:
    """Pids of processes whose command line contains `needle` (the test's own unique marker)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle.encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_killed_supervisor_takes_its_command_and_every_child_with_it(local: LocalHarness) -> None:
    # A background child, a second one, and one in a session of its own; none may outlive the replica once
    # its supervisor is SIGKILLed (the GPU would be handed out again). Durations unique to this run, so
    # that other sleeps on the machine are not counted.
    durations = [f"{random.randrange(10**6, 10**7)}.{k}" for k in range(3)]
    needles = ["sleep\x00" + d for d in durations]
    handle = local.start(f"sleep {durations[0]} & sleep {durations[1]} & setsid sleep {durations[2]} & "
                         "echo ready; wait")
    local.until(lambda: list(local.executor.logs(handle)) == ["ready"])
    local.until(lambda: all(_pids_with(n) for n in needles))
    command = local.command_of(handle)
    assert command is not None
    os.kill(int(handle["pid"]), signal.SIGKILL)  # the supervisor dies, e.g. by the OOM killer
    local.until(lambda: not procfs.is_running(command))  # PR_SET_PDEATHSIG: the command dies with it
    status = local.executor.poll(handle)
    assert status.state == ReplicaState.LOST
    assert "gone without recording an exit code" in status.message

    def alive(pid: int) -> bool:
        stat = procfs.read_stat(pid)
        return stat is not None and stat.state not in "ZXx"

    local.until(lambda: not any(alive(p) for n in needles for p in _pids_with(n)))
    local.executor.stop(handle, grace_s=1)  # stopping a lost replica is harmless
    assert local.executor.poll(handle).state in (ReplicaState.STOPPED, ReplicaState.LOST)


CRASH_DURING_START = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from gpupool.executors.base import ReplicaLaunch
    from gpupool.executors import local as local_module
    from gpupool.executors.local import LocalExecutor

    root, work, logs, home, command = sys.argv[1:6]
    executor = LocalExecutor(Path(root), base_env={"PATH": "/usr/bin:/bin", "HOME": home})

    def crash(*_args):  # the server dies between the spawn and the handle file
        os._exit(9)

    local_module.supervisor.write_json_atomic = crash
    executor.start(ReplicaLaunch("crash2", 0, "worker", command, {}, Path(work), Path(logs)))
""")


def test_a_start_interrupted_after_the_spawn_adopts_the_supervisor_instead_of_a_second_one(
        local: LocalHarness) -> None:
    counter = local.tmp / "work" / "runs"
    command = f"echo run >> {counter}; sleep 300"
    result = subprocess.run([sys.executable, "-c", CRASH_DURING_START, str(local.root), str(local.tmp / "work"),
                             str(local.tmp / "logs" / "crash2"), str(local.tmp / "home"), command], timeout=60,
                            check=False)
    assert result.returncode == 9  # crashed after Popen, before handle.json
    state_dir = local.executor.state_dir("crash2", 0)
    assert not (state_dir / "handle.json").exists()
    local.until(counter.exists)
    handle = local.start(command, workload_id="crash2")  # the replay after the restart
    local.until(lambda: local.executor.poll(handle).state == ReplicaState.RUNNING)
    time.sleep(0.5)  # a second command, if one were started, would have written its line by now
    assert counter.read_text() == "run\n"
    local.executor.stop(handle, grace_s=0)
    status = local.wait(handle)
    assert status.state == ReplicaState.STOPPED  # cancel stops the one and only command
    local.until(lambda: _pids_with(str(counter)) == [])  # nothing of it is left (once the kernel reaped it)


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
