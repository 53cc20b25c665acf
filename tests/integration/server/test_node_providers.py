"""Node providers end to end: simulated nodes join and leave a running server; replicas on a node that
leaves become lost (and their workload retries or ends lost); rendezvous ports are chosen on the node of
rank 0; an executor without Capability.MULTI_NODE only gets nodes on this host."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.executors.base import Capability
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.node_providers import SimulatedNodeProvider, simulated_node

Start = Callable[..., tuple[TestServer, SimulatedNodeProvider, FakeExecutor]]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    started: list[TestServer] = []

    def make(capabilities: frozenset[Capability] | None = None) -> tuple[TestServer, SimulatedNodeProvider,
                                                                         FakeExecutor]:
        provider = SimulatedNodeProvider()
        fake = FakeExecutor(default=RUN_FOREVER, **({"capabilities": capabilities} if capabilities else {}))
        settings = server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}",
                                   node_sync_interval_s=0.05)
        server = start_server(settings, fake, node_providers=[provider])
        started.append(server)
        return server, provider, fake

    yield make
    for server in started:
        server.stop()


def node_names(server: TestServer) -> list[str]:
    with server.client() as client:
        return sorted(n.name for n in client.nodes())


def test_a_node_joins_runs_work_and_its_departure_loses_the_replica(start: Start) -> None:
    server, provider, _fake = start()
    provider.add(simulated_node("sim-a", cpus=8, memory_mib=32768, gpus="1xA100-80GB"))
    wait_until(lambda: "sim-a" in node_names(server), what="sim-a registered")
    with server.client() as client:
        retried = client.submit("name: r\ncommand: x\nretries: 1\nresources: {cpu: 1, gpu: 1}\n").workload.id
        wait_until(lambda: client.get_workload(retried).status == "running", what="running on sim-a")
        assert client.get_workload(retried).replica_list[0].node == "sim-a"
        provider.remove("sim-a")
        wait_until(lambda: "sim-a" not in node_names(server), what="sim-a gone")
        # the only GPU left with sim-a: the retry waits in pending; the lost replica is in the history
        wait_until(lambda: client.get_workload(retried).status == "pending", what="requeued")
        detail = client.get_workload(retried)
        assert detail.retries_used == 1
        assert any("lost: node sim-a left the pool" in e.reason for e in detail.events)
        provider.add(simulated_node("sim-b", cpus=8, memory_mib=32768, gpus="1xA100-80GB"))
        wait_until(lambda: client.get_workload(retried).status == "running", what="running again, on sim-b")
        provider.remove("sim-b")
        wait_until(lambda: client.get_workload(retried).status == "lost", what="lost with no retry left")
        assert "node sim-b left the pool" in client.get_workload(retried).message


def test_rendezvous_ports_are_chosen_on_the_node_of_rank_0(start: Start) -> None:
    server, provider, fake = start()
    provider.add(simulated_node("sim-a", cpus=4, memory_mib=16384, gpus="1xA100-80GB"))
    provider.add(simulated_node("sim-b", cpus=4, memory_mib=16384, gpus="1xA100-80GB"))
    wait_until(lambda: {"sim-a", "sim-b"} <= set(node_names(server)), what="both nodes")
    with server.client() as client:
        wid = client.submit("name: ddp\nreplicas: 2\ndistributed: torch\ncommand: x\n"
                            "resources: {cpu: 1, gpu: 1}\n").workload.id
        wait_until(lambda: client.get_workload(wid).status == "running", what="gang running")
        replicas = client.get_workload(wid).replica_list
    assert {r.node for r in replicas} == {"sim-a", "sim-b"}
    rank0 = next(r.node for r in replicas if r.number == 0)
    assert fake.cluster.port_requests == [(rank0, 1)]
    master = {x.env["MASTER_PORT"] for x in fake.launches}
    assert master == {str(fake.cluster.FIRST_PORT)}


def test_without_multi_node_only_nodes_on_this_host_are_taken(start: Start) -> None:
    server, provider, _fake = start(frozenset({Capability.FOLLOW_LOGS}))
    provider.add(simulated_node("far", cpus=4, memory_mib=16384, address="10.1.2.3"))
    provider.add(simulated_node("near", cpus=4, memory_mib=16384))
    wait_until(lambda: "near" in node_names(server), what="near registered")
    assert "far" not in node_names(server)
