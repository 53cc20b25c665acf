"""Crashes with real `gpupool up` processes: a second server on the same home, a server killed while it
starts replicas, a replica's supervisor killed. None may leave a command running twice or unwatched."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import StartServer
from tests.support.processes import REPO, ServerProcess
from tests.support.servers import free_port, wait_until

from gpupool.executors import procfs


def test_a_second_server_on_the_same_home_is_refused_naming_the_first(start_server: StartServer) -> None:
    first = start_server()
    assert first.process is not None
    env = {**first.env}
    result = subprocess.run([sys.executable, "-m", "gpupool", "up", "--port", str(free_port())], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert f"another gpupool server (pid {first.process.pid} on" in result.stderr
    assert "uses the home" in result.stderr
    with first.client() as admin:
        assert admin.health().status == "ok"  # the first one is untouched


def test_a_crash_while_replicas_start_never_runs_a_command_twice(start_server: StartServer, tmp_path: Path) -> None:
    """20 submissions, kill -9 of the server 0.3 s later, restart: every job's command ran exactly once, and
    cancel stops it."""
    runs = tmp_path / "runs"
    runs.mkdir()
    server = start_server("--cpus", "64", "--memory", "64GiB")
    with server.client() as admin:
        ids = [admin.submit(f"name: j{k}\ncommand: echo run >> {runs}/$GPUPOOL_WORKLOAD_ID; sleep 300\n"
                            "resources: {cpu: 0.1, memory: 64MiB}\n").workload.id for k in range(20)]
    time.sleep(0.3)
    server.kill()
    time.sleep(1)
    server.start()
    with server.client() as admin:
        wait_until(lambda: all(admin.get_workload(i).status == "running" for i in ids), 90, 0.2, "all running")
        time.sleep(1)  # a duplicate, if any, has written its line by now
        assert {i: (runs / str(i)).read_text() for i in ids} == dict.fromkeys(ids, "run\n")
        for i in ids:
            admin.cancel(i)
        wait_until(lambda: all(admin.get_workload(i).replica_list[0].state == "stopped" for i in ids), 60, 0.2,
                   "all stopped")
    assert _sleepers(runs) == []


def test_a_killed_supervisor_ends_its_command_and_the_workload(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server("--gpus", "1xA100-80GB")
    with server.client() as admin:
        wid = admin.submit(f"command: sleep 300 & sleep 301; echo {tmp_path}\nresources: {{gpu: 1}}\n").workload.id
        admin.wait(wid, ["running"], timeout_s=30)
        handle = _handle(server, wid)
        command = json.loads((Path(handle["state_dir"]) / "command.json").read_text())
        leader = procfs.identify(int(command["pid"]))
        assert leader is not None
        procfs.signal_process(procfs.ProcessIdentity(int(handle["pid"]), int(handle["start_time"]),
                                                     str(handle["boot_id"])), signal.SIGKILL)
        done = admin.wait(wid, timeout_s=30)
        assert done.status == "lost" and "supervisor process is gone" in done.message
        wait_until(lambda: not procfs.is_running(leader), 10, 0.1, "the command ended")
        assert _sleepers(tmp_path) == []  # its background child too; the GPU is free again
        again = admin.submit("command: echo second\nresources: {gpu: 1}\n").workload.id
        assert admin.wait(again, timeout_s=30).status == "succeeded"


def _handle(server: ServerProcess, workload_id: int) -> dict[str, object]:
    found = list((server.home / "executor" / "replicas" / str(workload_id)).glob("*/handle.json"))
    assert len(found) == 1
    handle: dict[str, object] = json.loads(found[0].read_text())
    return handle


def _sleepers(needle: Path) -> list[int]:
    """Pids of live processes whose command line or environment mention `needle` (the test's directory)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "cmdline").read_bytes() + (entry / "environ").read_bytes()
        except OSError:
            continue
        stat = procfs.read_stat(int(entry.name))
        if str(needle).encode() in text and stat is not None and stat.state not in "ZXx" \
                and b"pytest" not in text and b"gpupool\x00up" not in text:
            found.append(int(entry.name))
    return found
