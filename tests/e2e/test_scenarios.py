"""Whole-system scenarios over HTTP with real processes: reclaiming borrowed GPUs, and a server crash."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tests.e2e.conftest import StartServer
from tests.support.servers import wait_until

from gpupool.client.http import Client
from gpupool.executors import procfs


def running(client: Client, ids: list[int]) -> list[int]:
    return [i for i in ids if client.get_workload(i).status == "running"]


def test_borrowed_gpus_are_reclaimed_and_the_borrower_requeued(start_server: StartServer) -> None:
    """Pool: one node, 8 CPU, 32 GiB, 4 simulated A100. Projects a and b are each guaranteed half. a runs four
    1-GPU jobs (two on b's idle guarantee); b submits two; two of a's jobs are preempted (their processes
    really stop), requeued with the same ids, and b's two run."""
    server = start_server("--gpus", "4xA100-80GB", "--cpus", "8", "--memory", "32GiB")
    with server.client() as admin:
        for name in ("a", "b"):
            admin.create_project(name)
            admin.update_queue(name, guaranteed={"gpu": 2, "cpu": 4, "memory": "16GiB"})
        spec = "project: {p}\nname: {p}{k}\ncommand: sleep 300\nresources: {{cpu: 1, memory: 1GiB, gpu: 1}}\n"
        a_jobs = [admin.submit(spec.format(p="a", k=k)).workload.id for k in range(4)]
        wait_until(lambda: len(running(admin, a_jobs)) == 4, 30, 0.1, "a runs four jobs")
        assert admin.queues()[0].usage.gpu_milli == 4000
        b_jobs = [admin.submit(spec.format(p="b", k=k)).workload.id for k in range(2)]
        wait_until(lambda: len(running(admin, b_jobs)) == 2, 60, 0.1, "b's jobs run")
        wait_until(lambda: len(running(admin, a_jobs)) == 2, 30, 0.1, "a keeps its guarantee")
        waiting = [admin.get_workload(i) for i in a_jobs if i not in running(admin, a_jobs)]
        assert [w.status for w in waiting] == ["pending", "pending"]
        for w in waiting:
            assert w.preemptions >= 1 and w.pending_reason  # why it waits now: the pool is full
            assert any(e.to_status == "preempted" and "reclaimed" in e.reason for e in w.events)
            assert any(e.reason.startswith("replica 0 (worker) stopped") for e in w.events)
        queues = {q.name: q for q in admin.queues()}
        assert (queues["a"].usage.gpu_milli, queues["b"].usage.gpu_milli) == (2000, 2000)
        node = admin.nodes()[0]
        assert node.allocated.gpu_milli == 4000 and all(g.allocated_milli == 1000 for g in node.gpus)


def test_replicas_survive_a_server_crash_and_nothing_is_lost(start_server: StartServer, tmp_path: Path) -> None:
    """kill -9 the server while one job runs, one is about to end and one waits; after a restart the running
    job is found again (same process), the ended one has its exit code, and the waiting one still waits."""
    marks = tmp_path / "marks"
    marks.mkdir()
    server = start_server("--gpus", "1xA100-80GB", "--cpus", "4", "--memory", "8GiB")
    with server.client() as admin:
        long_id = admin.submit(f"name: long\ncommand: echo started >> {marks}/long; sleep 300\n"
                               "resources: {cpu: 1, memory: 1GiB, gpu: 1}\n").workload.id
        short_id = admin.submit(f"name: short\ncommand: echo started >> {marks}/short; sleep 3; exit 7\n"
                                "resources: {cpu: 1, memory: 1GiB}\n").workload.id
        admin.wait(long_id, ["running"], timeout_s=30)
        admin.wait(short_id, ["running"], timeout_s=30)
        waiting_id = admin.submit("name: waits\ncommand: echo never\nresources: {gpu: 1}\n").workload.id
        wait_until(lambda: admin.get_workload(waiting_id).pending_reason, 30, 0.1, "a pending reason")
        pid = _command_pid(server.home, long_id)
    server.kill()
    time.sleep(4)  # the short job ends while no server runs
    assert procfs.is_running(pid)
    server.start()
    with server.client() as admin:
        short = admin.wait(short_id, timeout_s=30)
        assert short.status == "failed" and short.replica_list[0].exit_code == 7
        long = admin.get_workload(long_id)
        assert long.status == "running" and long.attempt == 1
        assert _command_pid(server.home, long_id) == pid
        waiting = admin.get_workload(waiting_id)
        assert waiting.status == "pending" and waiting.queue_position == 1
        admin.cancel(long_id)
        wait_until(lambda: admin.get_workload(long_id).replica_list[0].state == "stopped", 30, 0.1, "stopped")
        admin.wait(waiting_id, ["running", "succeeded"], timeout_s=30)
    assert (marks / "long").read_text() == "started\n" and (marks / "short").read_text() == "started\n"
    assert not _alive(pid)


def _command_pid(home: Path, workload_id: int) -> procfs.ProcessIdentity:
    command = json.loads((home / "executor" / "replicas" / str(workload_id) / "0.0" / "command.json").read_text())
    identity = procfs.identify(int(command["pid"]))
    assert identity is not None
    return identity


def _alive(identity: procfs.ProcessIdentity) -> bool:
    """Whether the process still runs after waiting up to 10 s for it to go."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and procfs.is_running(identity):
        time.sleep(0.1)
    return procfs.is_running(identity) and os.path.exists(f"/proc/{identity.pid}")
