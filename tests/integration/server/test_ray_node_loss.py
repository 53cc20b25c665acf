"""Cluster mode's node losses, driven pass by pass: a server over a fake Ray (tests/support/fake_ray.py) with
its workers off, whose node worker, scheduling loop and reconciler the tests step themselves, and whose
agents' silences are timed by an injected clock.

- An agent that stays silent while Ray reports its node alive keeps the node (unschedulable) only up to the
  silence limit: then the node is lost like a dead one, its replica `lost` and retried elsewhere, the stop
  left as an order for the node's fencing watchdog; it joins again once its agent answers.
- A node the executor finds gone (Ray declared it dead) takes no more binds before the node worker's next
  pass removes it: neither after a start refused there nor after a replica lost with it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.support.fake_ray import ANSWER, TIMEOUT, FakeRay
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.executors.ray import FENCE_ORDERS_DIR, RayExecutor
from gpupool.executors.ray_fence import ORDER_SUFFIX
from gpupool.store.orm import NodeRow, ReplicaRow

NODE_A, NODE_B = "aa" * 28, "bb" * 28  # Ray node ids: 28 bytes in hex
SILENCE_LIMIT_S = 60.0  # the server's default (settings.agent_silence_limit_s)
PASS_S = 5.0  # clock advance per node pass: the default node sync interval
PASSES = 6  # scheduling and reconciler cycles between two node passes: enough to see any re-placement loop
JOB = "name: j\ncommand: x\nretries: 2\nresources: {cpu: 1, gpu: 1}\n"


@dataclass
class Cluster:
    """The server, its fake Ray and the clock of its agents' silences."""

    server: TestServer
    fake: FakeRay
    now: list[float]
    orders: Path

    def node_pass(self, advance_s: float = PASS_S) -> list[str]:
        self.now[0] += advance_s
        return self.server.services.node_sync.step()

    def cycles(self, count: int = PASSES) -> None:
        """Scheduling and reconciler cycles, as their workers run them between two node passes (each a full
        reconciler pass, as when they are at least FULL_PASS_EVERY_S apart)."""
        for _ in range(count):
            self.server.services.scheduling_loop.step()
            self.server.services.reconciler_loop._full_pass_at = float("-inf")
            self.server.services.reconciler_loop.step()

    def workload(self, wid: int) -> Any:
        with self.server.client() as client:
            return client.get_workload(wid)

    def schedulable(self) -> dict[str, bool]:
        with self.server.services.db.session(write=False) as session:
            return {row.name: row.schedulable for row in session.scalars(select(NodeRow))}

    def replicas_on(self, wid: int, node: str) -> int:
        """How many replicas of workload `wid` were ever placed on `node` (every attempt)."""
        with self.server.services.db.session(write=False) as session:
            rows = session.scalars(select(ReplicaRow).where(ReplicaRow.workload_id == wid, ReplicaRow.node == node))
            return len(rows.all())


def _start(tmp_path: Path, database_url: str, gpus_of_a: str) -> Cluster:
    fake = FakeRay()
    fake.add_node(NODE_A, "node-a", gpus=gpus_of_a)
    fake.add_node(NODE_B, "node-b", gpus="1xA100-80GB")
    now = [1000.0]
    settings = server_settings(tmp_path / "home", database_url, workers=False, policy="binpack")
    orders = settings.storage_dir / FENCE_ORDERS_DIR
    executor = RayExecutor(
        "fake", api=fake, silence_limit_s=SILENCE_LIMIT_S, fence_orders_dir=orders, clock=lambda: now[0]
    )
    server = start_server(settings, executor)  # its own Ray node provider; one node pass at start
    return Cluster(server, fake, now, orders)


@pytest.fixture
def cluster(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    """Two nodes with one GPU each (on SQLite and on PostgreSQL: the `database_url` fixture)."""
    running = _start(tmp_path, database_url, "1xA100-80GB")
    try:
        yield running
    finally:
        running.server.stop()


@pytest.fixture
def one_gpu_node(tmp_path: Path, database_url: str) -> Iterator[Cluster]:
    """node-a without GPU, node-b with one: a GPU job fits on node-b only."""
    running = _start(tmp_path, database_url, "")
    try:
        yield running
    finally:
        running.server.stop()


def _running_on(cluster: Cluster, wid: int) -> str:
    cluster.cycles()
    detail = cluster.workload(wid)
    assert detail.status == "running", detail.message
    return str(detail.replica_list[0].node)


def test_a_node_silent_past_the_limit_is_lost_its_work_retried_and_its_replica_fenced(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        wid = client.submit(JOB).workload.id
    first = _running_on(cluster, wid)
    other = "node-a" if first == "node-b" else "node-b"
    silent = cluster.fake.agent_on(NODE_B if first == "node-b" else NODE_A)
    silent.mode = TIMEOUT  # Ray keeps the node alive; its agent does not answer
    passes_within = int(SILENCE_LIMIT_S // PASS_S) - 1
    for _ in range(passes_within):  # within the limit: kept, unschedulable, its replica not lost
        cluster.node_pass()
        cluster.cycles()
        assert cluster.schedulable() == {first: False, other: True}
        detail = cluster.workload(wid)
        assert (detail.status, detail.retries_used, detail.replica_list[0].node) == ("running", 0, first)
    assert not cluster.orders.exists()
    changes = cluster.node_pass(2 * PASS_S)  # the limit is reached on this pass
    assert f"node {first} left the pool" in changes
    assert first not in cluster.schedulable()
    cluster.cycles()
    retried = cluster.workload(wid)
    assert (retried.status, retried.retries_used, retried.replica_list[0].node) == ("running", 1, other)
    events = [e.reason for e in retried.events]
    assert any(f"lost: node {first} left the pool" in e for e in events), events
    # the stop the silent agent cannot take is left for the node's watchdog; no call was made to the agent
    orders = list((cluster.orders / first).glob("*" + ORDER_SUFFIX))
    assert len(orders) == 1 and json.loads(orders[0].read_text())["workload_id"] == str(wid)
    assert "stop" not in silent.calls
    silent.mode = ANSWER  # the agent answers again: the node joins again, as a new node
    changes = cluster.node_pass()
    assert f"node {first} joined" in changes and cluster.schedulable()[first]


def test_a_silence_that_ends_within_the_limit_loses_nothing(cluster: Cluster) -> None:
    with cluster.server.client() as client:
        wid = client.submit(JOB).workload.id
    first = _running_on(cluster, wid)
    agent = cluster.fake.agent_on(NODE_B if first == "node-b" else NODE_A)
    agent.mode = TIMEOUT
    cluster.node_pass(SILENCE_LIMIT_S / 2)
    cluster.node_pass(SILENCE_LIMIT_S / 2 - 1)
    agent.mode = ANSWER
    cluster.node_pass(PASS_S)
    cluster.cycles()
    detail = cluster.workload(wid)
    assert (detail.status, detail.retries_used) == ("running", 0)
    assert all(cluster.schedulable().values())
    agent.mode = TIMEOUT  # a new episode starts its own count
    cluster.node_pass(SILENCE_LIMIT_S - 1)
    assert first in cluster.schedulable()


def test_a_node_ray_declared_dead_gets_no_binds_after_its_replica_is_lost(one_gpu_node: Cluster) -> None:
    cluster = one_gpu_node
    with cluster.server.client() as client:
        wid = client.submit(JOB.replace("name: j", "name: dead")).workload.id
    assert _running_on(cluster, wid) == "node-b"
    cluster.fake.declare_dead(NODE_B)  # the node worker has not passed yet: node-b is still stored
    cluster.cycles()  # the poll finds the replica lost with its node; its retry waits, it is not bound there
    detail = cluster.workload(wid)
    assert (detail.status, detail.retries_used) == ("pending", 1), detail.message
    assert cluster.schedulable()["node-b"] is False
    assert cluster.replicas_on(wid, "node-b") == 1  # the first attempt only
    assert "node node-b left the pool" in cluster.node_pass()


def test_a_node_found_gone_at_start_gets_no_more_binds(one_gpu_node: Cluster) -> None:
    cluster = one_gpu_node
    with cluster.server.client() as client:
        wid = client.submit(JOB.replace("name: j", "name: gone")).workload.id
    cluster.server.services.scheduling_loop.step()
    assert cluster.workload(wid).status == "scheduled"
    cluster.fake.declare_dead(NODE_B)  # between the bind and the launch
    cluster.cycles()
    detail = cluster.workload(wid)
    assert (detail.status, detail.retries_used) == ("pending", 0), detail.message  # no retry used
    assert cluster.schedulable()["node-b"] is False
    assert cluster.replicas_on(wid, "node-b") == 1  # placed there once, not again and again
