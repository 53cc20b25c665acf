"""Nodes, queues and quotas over HTTP, and the borrow-then-reclaim scenario with the fake executor."""

from __future__ import annotations

import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import NotFoundError, ValidationError
from gpupool.executors.fake import FakeExecutor


def test_this_host_registers_as_nodes_with_simulated_gpus(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="2xA100-80GB,1xT4", nodes=3, gpu_mode="exclusive")
    with server.client() as client:
        nodes = client.nodes()
    assert [n.name for n in nodes] == ["node-0", "node-1", "node-2"]
    node = nodes[0]
    assert node.capacity.cpu_milli == 4000 and node.capacity.memory_mib == 16 * 1024
    assert [(g.model, g.memory_mib, g.mode, g.simulated) for g in node.gpus] == [
        ("A100-80GB", 80 * 1024, "exclusive", True), ("A100-80GB", 80 * 1024, "exclusive", True),
        ("T4", 16 * 1024, "exclusive", True)]
    assert node.simulated_gpus and node.labels["gpupool.io/simulated-gpus"] == "true"


def test_a_restart_with_fewer_nodes_removes_the_idle_ones(server_factory: ServerFactory, fake: FakeExecutor,
                                                          tmp_path: object) -> None:
    first = server_factory(executor=fake, nodes=2)
    first.stop()
    second = server_factory(executor=fake, nodes=1, home=first.settings.home)
    with second.client() as client:
        assert [n.name for n in client.nodes()] == ["node"]


def test_node_and_queue_usage_follow_running_work(admin: Client) -> None:
    wid = admin.submit("command: x\nresources: {cpu: 2, memory: 4GiB, gpu: 0.5}\n").workload.id
    wait_until(lambda: admin.get_workload(wid).status == "running", what="running")
    node = admin.nodes()[0]
    assert (node.allocated.cpu_milli, node.allocated.memory_mib, node.allocated.gpu_milli) == (2000, 4096, 500)
    assert sum(g.allocated_milli for g in node.gpus) == 500
    queue = next(q for q in admin.queues() if q.name == "default")
    assert (queue.usage.gpu_milli, queue.running, queue.pending) == (500, 1, 0)


def test_queue_quotas_are_parsed_and_checked(admin: Client) -> None:
    admin.create_project("vision")
    q = admin.update_queue("vision", guaranteed={"gpu": 2, "memory": "64GiB"}, limit={"gpu": 3}, weight=2,
                           lend=False)
    assert (q.guaranteed.gpu_milli, q.guaranteed.memory_mib, q.limit.gpu_milli, q.limit.cpu_milli) == \
        (2000, 65536, 3000, None)
    assert q.weight == 2 and not q.lend
    with pytest.raises(ValidationError, match="exceeds the limit"):
        admin.update_queue("vision", guaranteed={"gpu": 4})
    with pytest.raises(ValidationError, match='did you mean "gpu"'):
        admin.update_queue("vision", limit={"gpus": 1})
    with pytest.raises(ValidationError, match="needs a unit"):
        admin.update_queue("vision", guaranteed={"memory": 64})
    with pytest.raises(NotFoundError, match="does not exist"):
        admin.update_queue("nope", weight=1)
    q = admin.update_queue("vision", limit={})
    assert q.limit.gpu_milli is None and q.guaranteed.gpu_milli == 2000


def test_borrowed_gpus_are_reclaimed_for_the_owner(admin: Client, fake: FakeExecutor) -> None:
    """Pool: 4 CPU, 16 GiB, 4 GPUs. a and b are guaranteed half each. a borrows b's idle half; when b submits,
    2 of a's jobs are preempted and requeued (same ids), and b's run."""
    for name in ("a", "b"):
        admin.create_project(name)
        admin.update_queue(name, guaranteed={"gpu": 2, "cpu": 2, "memory": "8GiB"})
    a_jobs = [admin.submit(f"project: a\nname: a{k}\ncommand: x\nresources: {{gpu: 1}}\n").workload.id
              for k in range(4)]
    wait_until(lambda: all(admin.get_workload(w).status == "running" for w in a_jobs), what="a runs 4")
    b_jobs = [admin.submit(f"project: b\nname: b{k}\ncommand: x\nresources: {{gpu: 1}}\n").workload.id
              for k in range(2)]
    wait_until(lambda: all(admin.get_workload(w).status == "running" for w in b_jobs), timeout_s=15,
               what="b runs 2")
    wait_until(lambda: sum(admin.get_workload(w).status == "running" for w in a_jobs) == 2, what="a keeps 2")
    a_now = [admin.get_workload(w) for w in a_jobs]
    waiting = [w for w in a_now if w.status == "pending"]
    assert len(waiting) == 2  # requeued with the same ids, waiting for b's guarantee to free up
    assert all(w.preemptions >= 1 and w.pending_reason for w in waiting)
    assert all(any(e.to_status == "preempted" for e in w.events) for w in waiting)
    queues = {q.name: q for q in admin.queues()}
    assert (queues["a"].usage.gpu_milli, queues["b"].usage.gpu_milli) == (2000, 2000)


def test_a_spec_beyond_its_queues_limit_is_accepted_with_a_warning(admin: Client) -> None:
    """The warning comes from the submit's own reading of the queue (single, replayed and batch submits)."""
    admin.update_queue("default", limit={"gpu": 1})
    over = admin.submit("name: over\ncommand: x\nresources: {gpu: 2}\n", idempotency_key="over")
    wid = over.workload.id
    expected = [f"workload {wid} can never start under the current limit of queue default (gpu 2 > limit 1) "
                "unless the limit is raised; it stays pending until then"]
    assert over.created and over.warnings == expected
    replayed = admin.submit("name: over\ncommand: x\nresources: {gpu: 2}\n", idempotency_key="over")
    assert not replayed.created and replayed.warnings == expected
    assert admin.submit("command: x\nresources: {gpu: 1}\n").warnings == []
    items = admin.submit_batch(["command: x\nresources: {gpu: 1}\n", "command: x\nresources: {gpu: 3}\n"]).items
    assert [len(item.warnings) for item in items] == [0, 1]
    assert "gpu 3 > limit 1" in items[1].warnings[0] and f"workload {items[1].workload.id} " in items[1].warnings[0]
    admin.update_queue("default", limit={})
    assert admin.submit("command: x\nresources: {gpu: 2}\n").warnings == []
