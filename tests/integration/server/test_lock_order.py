"""Cancel and the reconciler lock in one order (the workload row, then its replicas), so forcing their
interleaving on PostgreSQL deadlocks neither: while a cancel holds the workload row, the reconciler waits
for it before it touches any replica of it."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import text
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor


def test_a_cancel_holding_the_workload_row_never_waits_for_the_reconciler(server_factory: ServerFactory,
                                                                          database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one writer at a time: no row locks to interleave")
    server = server_factory(executor=FakeExecutor(default=RUN_FOREVER))
    client = server.client()
    wid = client.submit("command: x\nresources: {cpu: 1, memory: 1GiB}\n").workload.id
    wait_until(lambda: client.get_workload(wid).status == "running", what="running")
    assert server.services.reconciler is not None and server.services.reconciler_loop is not None
    server.services.reconciler.stop()  # this test drives the passes itself
    db = server.services.db
    with db.engine.begin() as setup:  # the next poll (running) is then a change the reconciler records
        setup.execute(text("UPDATE replicas SET state = 'starting' WHERE workload_id = :id"), {"id": wid})
    with db.engine.connect() as cancel:
        cancel.execute(text("SELECT id FROM workloads WHERE id = :id FOR UPDATE"), {"id": wid})  # cancel, step 1
        reconciler = threading.Thread(target=server.services.reconciler_loop.poll_and_advance)
        reconciler.start()
        time.sleep(0.5)  # the pass has polled and now waits for a lock
        # cancel, step 2: its replicas. With the opposite order the reconciler would hold them (a deadlock)
        free = cancel.execute(text("SELECT id FROM replicas WHERE workload_id = :id FOR UPDATE SKIP LOCKED"),
                              {"id": wid}).all()
        assert len(free) == 1
        cancel.rollback()
    reconciler.join(10)
    assert not reconciler.is_alive()
    with db.engine.connect() as check:
        assert check.execute(text("SELECT state FROM replicas WHERE workload_id = :id"), {"id": wid}).scalar() \
            == "running"
    client.close()
