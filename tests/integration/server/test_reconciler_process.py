"""The reconciler in a process of its own (`reconciler_process`, server/workers/reconciler_process.py), with the
local executor (real supervised processes): it launches, follows and stops what the API accepts, the server
reads the logs it writes, it reports its passes and CPU, it is started again when killed (the replicas it had
started keep running and are followed to their end, none started twice), it ends with its server (a clean stop
or a kill -9); it is the default with more than one CPU, and a server given its executor or its clock, or keeping
a notebook warm pool, keeps the reconciler in a thread."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.processes import ServerProcess, alive, worker_child
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.domain.errors import ConflictError
from gpupool.executors.fake import FakeExecutor
from gpupool.executors.local import LocalExecutor
from gpupool.server.app import build_services
from gpupool.server.workers.loop import IntervalWorker
from gpupool.server.workers.reconciler_process import ReconcilerProcess

JOB = "name: {name}\ncommand: {command}\nresources: {{cpu: 100m, memory: 64MiB}}\n"


@pytest.fixture
def split_server(tmp_path: Path, database_url: str) -> Iterator[TestServer]:
    """A server with its own clock and its own (local) executor, the reconciler in a child process."""
    settings = server_settings(tmp_path / "home", database_url, reconciler_process=True)
    server = start_server(settings, clock=None)
    yield server
    server.stop()


def _reconciler(server: TestServer) -> ReconcilerProcess:
    reconciler = server.services.reconciler
    assert isinstance(reconciler, ReconcilerProcess), reconciler
    return reconciler


def _statuses(server: TestServer, ids: list[int]) -> list[str]:
    with server.client() as client:
        return [client.get_workload(i).status for i in ids]


def _log(server: TestServer, workload_id: int) -> str:
    """The workload's output so far ("" before its replica started)."""
    with server.client() as client:
        try:
            return "\n".join(client.logs(workload_id))
        except ConflictError:  # not started yet
            return ""


def test_the_reconciler_process_runs_jobs_whose_logs_the_server_reads_and_ends_with_its_server(
        split_server: TestServer) -> None:
    reconciler = _reconciler(split_server)
    pid = wait_until(lambda: reconciler.pid, what="the reconciler process")
    assert pid != os.getpid()
    with split_server.client() as client:
        ids = [client.submit(JOB.format(name=f"j{k}", command=f"echo hello-{k}")).workload.id for k in range(3)]
        wait_until(lambda: _statuses(split_server, ids) == ["succeeded"] * 3, timeout_s=30, what="all succeeded")
        exported = client.prometheus_metrics()
    assert [_log(split_server, wid).strip() for wid in ids] == ["hello-0", "hello-1", "hello-2"]
    passes = next(line for line in exported.splitlines() if line.startswith('gpupool_worker_passes_total{worker="rec'))
    assert 0 < float(passes.rsplit(" ", 1)[1]) <= reconciler.steps
    assert reconciler.cpu_s > 0 and reconciler.failures == 0
    assert reconciler.restarts == 0 and not reconciler.in_fallback  # the child did it, not the fallback thread
    split_server.stop()
    wait_until(lambda: not alive(pid), timeout_s=10, what="the reconciler process ended with the server")


def test_a_cancel_reaches_the_replica_through_the_reconciler_process(split_server: TestServer) -> None:
    with split_server.client() as client:
        wid = client.submit(JOB.format(name="long", command="echo started; sleep 300")).workload.id

        def replica_state() -> str:
            found = client.get_workload(wid).replica_list
            return found[0].state if found else "none"

        wait_until(lambda: replica_state() == "running" and "started" in _log(split_server, wid), timeout_s=30,
                   what="the job running")
        client.cancel(wid)
        wait_until(lambda: replica_state() in ("stopped", "failed"), timeout_s=30, what="the replica stopped")
        assert client.get_workload(wid).status == "cancelled"


def test_a_killed_reconciler_process_is_started_again_and_follows_the_replicas_it_had_started(
        split_server: TestServer, tmp_path: Path) -> None:
    reconciler = _reconciler(split_server)
    first = wait_until(lambda: reconciler.pid, what="the reconciler process")
    gate = tmp_path / "go"
    command = f"echo begin; while [ ! -e {gate} ]; do sleep 0.1; done; echo end"
    with split_server.client() as client:
        ids = [client.submit(JOB.format(name=f"w{k}", command=command)).workload.id for k in range(3)]
        wait_until(lambda: all("begin" in _log(split_server, wid) for wid in ids), timeout_s=30,
                   what="every job started")
        os.kill(first, signal.SIGKILL)
        second = wait_until(lambda: reconciler.pid not in (None, first) and reconciler.pid, timeout_s=15,
                            what="another reconciler process")
        late = client.submit(JOB.format(name="late", command="echo late")).workload.id  # launched by the new one
        gate.touch()
        wait_until(lambda: _statuses(split_server, [*ids, late]) == ["succeeded"] * 4, timeout_s=30,
                   what="all succeeded")
        replicas = [client.get_workload(wid).replica_list for wid in ids]
    assert reconciler.restarts == 1 and second != first and not alive(first)
    assert all(len(found) == 1 for found in replicas)  # one run each: nothing started again
    assert [_log(split_server, wid).split() for wid in ids] == [["begin", "end"]] * 3


def test_a_reconciler_process_ends_when_its_server_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", ["--cpus", "4", "--memory", "8GiB"],
                           extra_env={"GPUPOOL_RECONCILER_PROCESS": "true"}).start()
    assert server.process is not None
    parent = server.process.pid
    pid = wait_until(lambda: worker_child(parent, b"reconciler_process"), timeout_s=20,
                     what="the server's reconciler process")
    server.kill()  # kill -9: no shutdown code runs in the server
    wait_until(lambda: not alive(pid), timeout_s=10, what="the orphaned reconciler process exited")


@pytest.mark.parametrize("case", ["given executor", "given clock", "warm pool"])
def test_a_server_given_its_executor_or_its_clock_or_with_a_warm_pool_keeps_its_reconciler_in_its_process(
        tmp_path: Path, case: str) -> None:
    settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'db.sqlite'}", reconciler_process=True,
                               notebook_warm_pool=1 if case == "warm pool" else 0)
    executor = FakeExecutor() if case == "given executor" else None
    services = build_services(settings, executor, clock=time.time if case == "given clock" else None)
    try:
        assert isinstance(services.reconciler, IntervalWorker)
    finally:
        services.executor.close()
        if isinstance(services.executor, LocalExecutor):
            services.executor.warm.stop_unclaimed()  # the parked JupyterLab the executor started meanwhile
        services.db.dispose()


def test_by_default_a_server_on_several_cpus_runs_its_reconciler_in_a_process(tmp_path: Path) -> None:
    settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'db.sqlite'}")
    services = build_services(settings)
    try:
        several = (os.cpu_count() or 1) > 1
        assert isinstance(services.reconciler, ReconcilerProcess if several else IntervalWorker)
        assert services.reconciler.name == "reconciler"
    finally:
        services.executor.close()
        services.db.dispose()
