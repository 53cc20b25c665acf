"""The Ray executor and node provider against a fake Ray (tests/support/fake_ray.py): a node stays while Ray
reports it alive even when its agent does not answer, replicas are lost only when Ray declares the node dead,
agent handles are cached and looked up again after an actor error, and a silent node logs one warning per
episode. Behaviour over time is driven pass by pass (node passes and polls), as the node worker and the
reconciler do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from tests.support.fake_ray import ANSWER, TIMEOUT, FakeRay

from gpupool.executors.base import ExecutorError, NodeGoneError, ReplicaLaunch, ReplicaState
from gpupool.executors.ray import AGENT_PREFIX, RayExecutor
from gpupool.server.ray_nodes import RAY_NODE_LABEL, RayNodeProvider

NODE_A, NODE_B, NODE_C = "aa" * 28, "bb" * 28, "cc" * 28  # Ray node ids: 28 bytes in hex
PASSES = 5  # node passes (and polls) while an agent is silent: enough to see any per-pass repetition


@pytest.fixture
def fake() -> FakeRay:
    cluster = FakeRay()
    cluster.add_node(NODE_A, "node-a")
    cluster.add_node(NODE_B, "node-b")
    return cluster


def _agent(node_id: str) -> str:
    return AGENT_PREFIX + node_id[:16]


def _handle(executor: RayExecutor, node: str, replica_id: str = "r1") -> dict[str, Any]:
    agent = executor.agent_of(node)
    return {"executor": "ray", "agent": agent, "node": node, "inner": {"id": replica_id}, "server_log": "/nowhere"}


def _names(provider: RayNodeProvider) -> list[str]:
    return [n.node.name for n in provider.nodes()]


def test_a_node_whose_agent_times_out_stays_until_ray_declares_it_dead(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    first = {n.node.name: n for n in provider.nodes()}
    assert sorted(first) == ["node-a", "node-b"]
    handle = _handle(executor, "node-b")
    labels = dict(first["node-b"].node.labels)
    fake.agent_on(NODE_B).mode = TIMEOUT  # a busy or restarting agent: calls time out
    for _ in range(PASSES):
        assert _names(provider) == ["node-a"]  # node-b is not offered (no new work goes there)...
        assert provider.keeps(labels)  # ...but kept: the node worker does not take it away
        with pytest.raises(ExecutorError, match="did not answer"):
            executor.poll(handle)  # not LOST: the node is alive, the next poll asks again
    fake.agent_on(NODE_B).mode = ANSWER
    assert executor.poll(handle).state is ReplicaState.RUNNING
    again = {n.node.name: n for n in provider.nodes()}
    assert again["node-b"] is first["node-b"]  # the same node, GPUs and all: it never left
    fake.declare_dead(NODE_B)  # Ray's health check: only now is the node gone
    assert _names(provider) == ["node-a"]
    assert not provider.keeps(labels)
    lost = executor.poll(handle)
    assert lost.state is ReplicaState.LOST and "node node-b left the pool" in lost.message
    assert executor.health.silence(_agent(NODE_B)) is None  # a node that left is not a silent one


def test_a_killed_agent_is_recreated_and_its_node_never_leaves(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    assert _names(provider) == ["node-a", "node-b"]
    handle = _handle(executor, "node-b")
    fake.kill_agent(_agent(NODE_B))  # ray.kill without restart: the name is free until recreated
    assert _names(provider) == ["node-a"]  # the pass sees the dead handle...
    assert provider.keeps({RAY_NODE_LABEL: _agent(NODE_B)})  # ...and keeps the node
    with pytest.raises(ExecutorError):
        executor.poll(handle)  # between this pass and the next: no agent, the node alive
    assert _names(provider) == ["node-a", "node-b"]  # the next creates the agent again, which answers
    assert fake.created.count(_agent(NODE_B)) == 2
    assert executor.poll(handle).state is ReplicaState.RUNNING  # the new agent answers for the replica


def test_a_new_node_joins_only_once_its_agent_answers(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    assert _names(provider) == ["node-a", "node-b"]
    fake.add_node(NODE_C, "node-c")
    fake.starting.add(NODE_C)  # its agent is still starting: its calls time out
    assert _names(provider) == ["node-a", "node-b"]
    fake.starting.clear()
    assert _names(provider) == ["node-a", "node-b", "node-c"]


def test_agent_handles_are_cached_and_looked_up_again_after_an_actor_error(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    RayNodeProvider(executor).nodes()
    handle = _handle(executor, "node-b")
    executor2 = RayExecutor("fake", api=fake)  # a restarted server: no handle cached yet
    for _ in range(PASSES):
        assert executor2.poll(handle).state is ReplicaState.RUNNING
    assert fake.lookups == [_agent(NODE_B)]  # one lookup, then the cached handle
    fake.agent_on(NODE_B).mode = TIMEOUT
    with pytest.raises(ExecutorError):
        executor2.poll(handle)
    fake.agent_on(NODE_B).mode = ANSWER
    executor2.poll(handle)
    assert len(fake.lookups) == 1  # a timeout keeps the handle: the actor is the same, only slow
    old = fake.agent_on(NODE_B)
    fake.kill_agent(old.name)
    with pytest.raises(ExecutorError):
        executor2.poll(handle)  # the actor error drops the handle
    provider = RayNodeProvider(executor)
    provider.nodes()  # the node worker finds its own handle dead and drops it...
    provider.nodes()  # ...and creates the agent again on the next pass
    assert executor2.poll(handle).state is ReplicaState.RUNNING
    assert fake.lookups == [_agent(NODE_B)] * 2  # looked up again, and the new agent found
    assert fake.agent_on(NODE_B) is not old


def test_a_silent_node_logs_one_warning_per_episode_and_one_line_when_it_answers(
    fake: FakeRay, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gpupool")
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    provider.nodes()
    handle = _handle(executor, "node-b")
    caplog.clear()
    for episode in range(2):
        fake.agent_on(NODE_B).mode = TIMEOUT
        for _ in range(PASSES):
            provider.nodes()
            with pytest.raises(ExecutorError):
                executor.poll(handle)
            executor.stop(handle, 1.0)  # the reconciler sends a stop again while it is not confirmed
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        text = warnings[0].getMessage()
        assert "node-b" in text and "no answer within" in text and "\n" not in text, text
        assert warnings[0].exc_info is None  # no traceback
        fake.agent_on(NODE_B).mode = ANSWER
        for _ in range(PASSES):
            provider.nodes()
            executor.poll(handle)
        recovered = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        assert len(recovered) == 1 and "node-b answers again" in recovered[0], (episode, recovered)
        caplog.clear()


def test_a_method_that_fails_on_the_agent_is_an_answer_with_its_message(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    RayNodeProvider(executor).nodes()
    with pytest.raises(ExecutorError, match="cannot choose -1 ports"):
        executor.free_ports("node-a", -1)
    assert executor.health.silence(_agent(NODE_A)) is None  # it answered: not a silent agent


def test_a_start_on_a_node_whose_agent_is_silent_is_refused_at_once_for_another_placement(
    fake: FakeRay, tmp_path: Path
) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    provider.nodes()
    fake.agent_on(NODE_B).mode = TIMEOUT
    provider.nodes()  # the node pass finds the agent silent
    launch = ReplicaLaunch("w1", 0, "worker", "sleep 1", {}, tmp_path, tmp_path, node="node-b")
    calls = len(fake.agent_on(NODE_B).calls)
    with pytest.raises(NodeGoneError, match="node-b does not answer now"):
        executor.start(launch)  # the reconciler places it again without using a retry
    assert len(fake.agent_on(NODE_B).calls) == calls  # no call made: the launch is not held up


def test_a_node_that_does_not_see_the_shared_storage_is_refused_with_one_warning(
    fake: FakeRay, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor, storage_root=tmp_path / "storage")
    assert _names(provider) == ["node-a", "node-b"]
    fake.agent_on(NODE_B).sees_storage = False  # its shared filesystem was unmounted
    caplog.clear()
    for _ in range(PASSES):
        assert _names(provider) == ["node-a"]
    refused = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "node-b refused: it does not see the shared storage" in refused[0]


def test_what_a_start_that_died_left_is_released_by_the_agent_of_its_node(fake: FakeRay) -> None:
    executor = RayExecutor("fake", api=fake)
    provider = RayNodeProvider(executor)
    provider.nodes()
    executor.release_unstarted("w7", 0, 1, grace_s=2, node="node-b")
    assert fake.agent_on(NODE_B).released == [("w7", 0, 1)] and fake.agent_on(NODE_A).released == []
    fake.agent_on(NODE_B).mode = TIMEOUT
    provider.nodes()  # the node pass finds the agent silent
    calls = len(fake.agent_on(NODE_B).calls)
    with pytest.raises(ExecutorError, match="node-b does not answer now"):
        executor.release_unstarted("w8", 0, 0, node="node-b")
    assert len(fake.agent_on(NODE_B).calls) == calls  # no call to a silent agent: the reconciler goes on
    fake.declare_dead(NODE_B)
    executor.release_unstarted("w9", 0, 0, node="node-b")  # the node is gone, and what ran there with it


def test_every_node_pass_tells_each_agent_which_environments_to_keep_warm(fake: FakeRay) -> None:
    named = ["/shared/home/environments/cache/abc/bin/python"]
    executor = RayExecutor("fake", api=fake, warm_environments=lambda: list(named))
    provider = RayNodeProvider(executor)
    provider.nodes()
    assert [fake.agent_on(n).warm_environments for n in (NODE_A, NODE_B)] == [named, named]
    fake.kill_agent(_agent(NODE_B))  # an agent made again knows nothing until the next pass tells it
    provider.nodes()
    provider.nodes()
    assert fake.agent_on(NODE_B).warm_environments == named
    named.append("/shared/home/environments/cache/def/bin/python")  # a second environment built meanwhile
    provider.nodes()
    assert [fake.agent_on(n).warm_environments for n in (NODE_A, NODE_B)] == [named, named]
