"""What one reconciler pass reads. Between its full passes (at least FULL_PASS_EVERY_S apart), a pass that found
replicas changed loads and advances only their workloads: a burst of short jobs changes replicas every 50 ms
pass, and each such pass used to load every running workload; the others still move at the next full pass
(e.g. past max_runtime). And a pass reads the live replicas once, not once per step."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.client.http import Client
from gpupool.executors.base import ExecutorError, Handle, ReplicaLaunch
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor, replica_key
from gpupool.executors.storage import StorageLayout
from gpupool.server.workers.reconciler import Reconciler
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import workloads as repo

SPEC = "name: {name}\ncommand: x\nresources: {{cpu: 100m, memory: 64MiB}}\n"


def _loaded_workloads(during: Any) -> set[int]:
    """Ids of the workload rows the ORM loads in this thread while `during()` runs (the server's other
    workers, e.g. the scheduler, load workloads in theirs)."""
    loaded: set[int] = set()
    me = threading.get_ident()

    def on_load(target: WorkloadRow, _context: Any) -> None:
        if threading.get_ident() == me:
            loaded.add(target.id)

    event.listen(WorkloadRow, "load", on_load)
    try:
        during()
    finally:
        event.remove(WorkloadRow, "load", on_load)
    return loaded


def test_a_pass_between_full_passes_advances_only_the_workloads_whose_replicas_changed(
        server_factory: ServerFactory) -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    server = server_factory(executor=fake)
    client = server.client()
    ids = [client.submit(SPEC.format(name=f"j{k}")).workload.id for k in range(4)]
    timed = client.submit(SPEC.format(name="timed") + "max_runtime: 1s\n").workload.id
    wait_until(lambda: all(client.get_workload(i).status == "running" for i in [*ids, timed]), timeout_s=20,
               what="all running")
    services = server.services
    assert services.reconciler is not None and services.reconciler_loop is not None
    services.reconciler.stop()  # this test drives the passes itself
    reconciler = services.reconciler_loop
    time.sleep(1.2)  # `timed` is now past its max_runtime: only a full pass fails it
    fake.finish(str(ids[0]), 0)
    reconciler._full_pass_at = time.monotonic()  # a full pass just ran
    loaded = _loaded_workloads(reconciler.poll_and_advance)
    assert loaded == {ids[0]}, loaded  # the replica's workload only (all five running before the change)
    assert client.get_workload(ids[0]).status == "succeeded"
    assert client.get_workload(timed).status == "running"  # waits for the full pass
    reconciler._full_pass_at = float("-inf")  # the next pass is a full one
    reconciler.poll_and_advance()
    assert client.get_workload(timed).status == "failed"
    assert [client.get_workload(i).status for i in ids[1:]] == ["running"] * 3
    client.close()


def test_a_pass_reads_the_live_replicas_once_for_its_stop_probe_and_poll_steps(
        server_factory: ServerFactory) -> None:
    """Stop, probe and poll each read every live replica; while replicas start, a pass runs every 50 ms."""
    fake = FakeExecutor(default=RUN_FOREVER)
    server = server_factory(executor=fake)
    client = server.client()
    ids = [client.submit(SPEC.format(name=f"j{k}")).workload.id for k in range(3)]
    wait_until(lambda: all(client.get_workload(i).status == "running" for i in ids), timeout_s=20, what="running")
    assert server.services.reconciler is not None and server.services.reconciler_loop is not None
    server.services.reconciler.stop()  # this test drives the pass itself
    client.cancel(ids[0])  # a stop to send, and a change to poll
    reads: list[str] = []
    me = threading.get_ident()

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if threading.get_ident() == me and statement.lstrip().startswith("SELECT") and "FROM replicas" in statement \
                and "replicas.state IN" in statement:
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        server.services.reconciler_loop.step()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(reads) == 1, reads
    assert fake.running() == sorted(replica_key(str(i), 0) for i in ids[1:])  # the pass sent the stop
    client.close()


def _selects_of(during: Any) -> int:
    """How many SELECT statements this thread runs while `during()` runs."""
    selects: list[str] = []
    me = threading.get_ident()

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if threading.get_ident() == me and statement.lstrip().startswith("SELECT"):
            selects.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        during()
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    return len(selects)


def _launched_by_the_test(server_factory: ServerFactory) -> tuple[FakeExecutor, Client, Reconciler]:
    """A server of 3 nodes whose replicas run until stopped, with its reconciler's worker stopped: the test runs
    the reconciler's passes itself. Returns the executor, a client and the reconciler."""
    fake = FakeExecutor(default=RUN_FOREVER)
    server = server_factory(executor=fake, nodes=3)
    assert server.services.reconciler is not None and server.services.reconciler_loop is not None
    server.services.reconciler.stop()
    return fake, server.client(), server.services.reconciler_loop


def _submitted_and_scheduled(client: Client, count: int, prefix: str, cpu: str) -> list[int]:
    """Submit `count` one-replica jobs of `cpu` and 64 MiB named PREFIX0.., and wait until all are scheduled."""
    spec = "name: {name}\ncommand: x\nresources: {{cpu: " + cpu + ", memory: 64MiB}}\n"
    ids = [client.submit(spec.format(name=f"{prefix}{k}")).workload.id for k in range(count)]
    wait_until(lambda: all(client.get_workload(i).status == "scheduled" for i in ids), timeout_s=20, what="scheduled")
    return ids


def test_launching_many_workloads_reads_as_much_as_launching_one(server_factory: ServerFactory) -> None:
    """A pass reads the scheduled workloads' replicas, users, nodes and project names once for all of them
    (a burst, or a job array's tasks, puts hundreds in one pass), not once per workload."""
    fake, client, reconciler = _launched_by_the_test(server_factory)

    one = _submitted_and_scheduled(client, 1, "one", "1500m")  # two per node
    reads_for_one = _selects_of(reconciler.launch_scheduled)
    many = _submitted_and_scheduled(client, 5, "many", "1500m")
    nodes = {client.get_workload(i).replica_list[0].node for i in many}
    reads_for_many = _selects_of(reconciler.launch_scheduled)
    assert len(nodes) > 1 and reads_for_many == reads_for_one, (reads_for_one, reads_for_many)
    assert fake.running() == sorted(replica_key(str(i), 0) for i in [*one, *many])
    client.close()


class _FaultyExecutor(FakeExecutor):
    """A fake executor whose start raises an unexpected error for the command `broken` (after it began: what
    such a start left must be released), and records what it was asked to release."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.released: list[tuple[str, int, int]] = []

    def start(self, launch: ReplicaLaunch) -> Handle:
        if launch.command == "broken":
            raise RuntimeError("a bug in the executor")
        if launch.command == "refused":
            raise ExecutorError("the node's disk is full")
        return super().start(launch)

    def release_unstarted(self, workload_id: str, replica: int, attempt: int, grace_s: float = 10.0,
                          node: str = "") -> None:
        self.released.append((workload_id, replica, attempt))


def test_an_unexpected_error_starting_one_replica_fails_it_and_the_others_start(
        server_factory: ServerFactory) -> None:
    executor = _FaultyExecutor(default=RUN_FOREVER)
    server = server_factory(executor=executor)
    client = server.client()
    broken = client.submit(SPEC.format(name="broken").replace("command: x", "command: broken")).workload.id
    refused = client.submit(SPEC.format(name="refused").replace("command: x", "command: refused")).workload.id
    fine = [client.submit(SPEC.format(name=f"fine{k}")).workload.id for k in range(3)]
    wait_until(lambda: all(client.get_workload(i).status == "running" for i in fine), timeout_s=30,
               what="the other workloads running")
    wait_until(lambda: client.get_workload(broken).status == "failed", timeout_s=30, what="the broken one failed")
    assert "could not start it (RuntimeError: a bug in the executor)" in client.get_workload(broken).model_dump_json()
    wait_until(lambda: client.get_workload(refused).status == "failed", timeout_s=30, what="the refused one failed")
    # what the failed starts may have left is released: no later stop reaches a replica recorded as failed
    assert {(str(broken), 0, 0), (str(refused), 0, 0)} <= set(executor.released)
    client.close()


def test_a_pass_prepares_a_users_storage_once_and_the_next_pass_checks_it_again(
        server_factory: ServerFactory, monkeypatch: Any, tmp_path: Path) -> None:
    """The launches of one pass share each (user, project)'s storage scopes: prepared (created, checked to
    resolve inside the storage root) once for all of them. The next pass prepares them again, so a directory
    replaced by a link meanwhile is refused there."""
    fake, client, reconciler = _launched_by_the_test(server_factory)
    prepared: list[tuple[str, str]] = []
    real_prepare = StorageLayout.prepare

    def counted_prepare(layout: StorageLayout, user: str, project: str, **kwargs: Any) -> Any:
        prepared.append((user, project))
        return real_prepare(layout, user, project, **kwargs)

    monkeypatch.setattr(StorageLayout, "prepare", counted_prepare)

    burst = _submitted_and_scheduled(client, 4, "burst", "500m")
    reconciler.launch_scheduled()
    assert len(prepared) == 1, prepared
    user_dirs = {launch.env["GPUPOOL_USER_DIR"] for launch in fake.launches}
    assert len(fake.launches) == len(burst) and len(user_dirs) == 1, fake.launches
    user_dir = Path(user_dirs.pop())
    outside = tmp_path / "outside"
    outside.mkdir()
    user_dir.rename(user_dir.with_name(user_dir.name + ".moved"))
    user_dir.symlink_to(outside)  # the next pass must see the link and refuse it
    later = _submitted_and_scheduled(client, 1, "later", "500m")
    reconciler.launch_scheduled()
    assert len(prepared) == 2, prepared
    refused = client.get_workload(later[0])
    assert refused.status == "failed" and "resolves outside" in (refused.message or ""), refused
    assert len(fake.launches) == len(burst)
    client.close()


def test_a_poll_pass_records_the_changes_on_the_current_replicas_it_reads_once(
        server_factory: ServerFactory) -> None:
    """The replicas whose polled state changed are recorded on the current runs the pass reads for advancing
    their workloads (one read of the replicas table, not a second one for the polled rows)."""
    fake, client, reconciler = _launched_by_the_test(server_factory)
    ids = _submitted_and_scheduled(client, 3, "p", "500m")
    reconciler.launch_scheduled()
    with reconciler.db.session(write=False) as session:
        live = repo.live_replicas(session)
    reconciler.poll_and_advance(live)  # starting -> running
    for workload_id in ids[:2]:
        fake.finish(str(workload_id), 0, exit_code=0)
    with reconciler.db.session(write=False) as session:
        live = repo.live_replicas(session)
    reads: list[str] = []
    me = threading.get_ident()

    def count(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        if threading.get_ident() == me and statement.lstrip().startswith("SELECT") and "FROM replicas" in statement:
            reads.append(statement)

    event.listen(Engine, "before_cursor_execute", count)
    try:
        assert reconciler.poll_and_advance(live)
    finally:
        event.remove(Engine, "before_cursor_execute", count)
    assert len(reads) == 1, reads
    assert [client.get_workload(i).status for i in ids] == ["succeeded", "succeeded", "running"]
    client.close()
