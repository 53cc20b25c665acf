"""Between its full passes (at least FULL_PASS_EVERY_S apart), a reconciler pass that found replicas changed
loads and advances only their workloads: a burst of short jobs changes replicas every 50 ms pass, and each such
pass used to load every running workload. The others still move at the next full pass (e.g. past max_runtime)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import event
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.store.orm import WorkloadRow

SPEC = "name: {name}\ncommand: x\nresources: {{cpu: 100m, memory: 64MiB}}\n"


def _loaded_workloads(during: Any) -> set[int]:
    """Ids of the workload rows the ORM loads while `during()` runs."""
    loaded: set[int] = set()

    def on_load(target: WorkloadRow, _context: Any) -> None:
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
