"""A node that leaves while the reconciler starts a replica on it: the node worker takes the replica to `lost`
between the reconciler's plan and its record of the launch, and the start fails with NodeGoneError. The
reconciler must record the launch around the replica that already ended, not fail its pass over it again and
again (seen on a Ray cluster: a lost node's retry placed there once more, while the node worker removed it)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.executors.base import Handle, NodeGoneError, ReplicaLaunch
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor


class NodeLeavesDuringStart(FakeExecutor):
    """Starts fail as if the node left, after marking the replica lost as the node worker does meanwhile."""

    db: Any = None

    def start(self, launch: ReplicaLaunch) -> Handle:
        with self.db.engine.begin() as connection:
            connection.execute(
                text(
                    "UPDATE replicas SET state = 'lost', message = :why WHERE workload_id = :id AND state = 'pending'"
                ),
                {"id": int(launch.workload_id), "why": f"node {launch.node} left the pool"},
            )
        raise NodeGoneError(f"node {launch.node} is not part of the cluster now")


def test_a_replica_lost_during_its_start_does_not_stall_the_reconciler(server_factory: ServerFactory) -> None:
    executor = NodeLeavesDuringStart(default=RUN_FOREVER)
    server = server_factory(executor=executor)
    assert server.services.reconciler is not None and server.services.reconciler_loop is not None
    server.services.reconciler.stop()  # this test drives the launch pass itself
    executor.db = server.services.db
    with server.client() as client:
        wid = client.submit("command: x\nretries: 1\nresources: {cpu: 1, memory: 1GiB}\n").workload.id
        wait_until(lambda: client.get_workload(wid).status == "scheduled", what="placed")
        server.services.reconciler_loop.launch_scheduled()  # raised InvalidTransitionError on every pass
        detail = client.get_workload(wid)
    assert detail.status in ("pending", "scheduled"), detail.message  # placed again, no retry used
    assert detail.retries_used == 0
