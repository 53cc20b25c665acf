"""Episodes of silence of node agents: one warning when one begins, one line when it ends, and an answer to a
call made before the episode began does not end it (calls of several threads overlap)."""

from __future__ import annotations

import logging

import pytest

from gpupool.executors.ray_health import CAUSE_MAX_CHARS, AgentHealth, short_cause


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_answer_to_a_call_made_before_the_episode_does_not_end_it(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gpupool")
    clock = Clock()
    health = AgentHealth(clock)
    asked_early = health.now()  # a poll sent while the agent still worked
    clock.now += 1
    health.failed("agent-1", "node-b", "ActorDiedError: the actor died")  # another thread finds it dead
    clock.now += 0.1
    health.answered("agent-1", "node-b", asked_early)  # the early poll's answer arrives after that
    assert health.silence("agent-1") is not None
    clock.now += 5
    health.failed("agent-1", "node-b", "no agent of that name")  # same episode: no second warning
    clock.now += 10
    health.answered("agent-1", "node-b", health.now())
    assert health.silence("agent-1") is None
    messages = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in messages] == ["WARNING", "INFO"], messages
    assert "node node-b answers again" in messages[1][1] and "after 15.1 s" in messages[1][1]
    assert "(2 calls failed)" in messages[1][1]


def test_a_node_that_left_ends_its_episode_without_a_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gpupool")
    health = AgentHealth(Clock())
    health.failed("agent-1", None, "no answer within 5 s")
    health.forget("agent-1")
    health.answered("agent-1", "node-b")
    assert len(caplog.records) == 1 and "has not described its node" in caplog.records[0].getMessage()


def test_a_cause_is_one_short_line() -> None:
    error = RuntimeError("first line\n  Traceback (most recent call last):\n  more" + "x" * 500)
    assert short_cause(error) == "RuntimeError: first line"
    assert len(short_cause(RuntimeError("y" * 1000))) == CAUSE_MAX_CHARS
    assert short_cause(RuntimeError()) == "RuntimeError"
