"""Submissions handled at once are limited (SUBMITS_AT_ONCE), so that a crowd of submitters leaves the scheduling
and reconcile workers their share of the interpreter; other calls are not held behind them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import TestServer

from gpupool.executors.fake import FakeExecutor
from gpupool.server import context
from gpupool.server.services import workloads

LIMIT = 2
HOLD_S = 0.4


class Gauge:
    """Counts the submissions inside `prepare_submission` at once, each held there HOLD_S."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.entered = threading.Event()

    def wrap(self, prepare: Any) -> Any:
        def held(*args: Any, **kwargs: Any) -> Any:
            with self.lock:
                self.now += 1
                self.most = max(self.most, self.now)
            self.entered.set()
            try:
                time.sleep(HOLD_S)
                return prepare(*args, **kwargs)
            finally:
                with self.lock:
                    self.now -= 1
        return held


@pytest.fixture
def gauge(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gauge]:
    found = Gauge()
    monkeypatch.setattr(context, "SUBMITS_AT_ONCE", LIMIT)
    monkeypatch.setattr(workloads, "prepare_submission", found.wrap(workloads.prepare_submission))
    yield found


@pytest.fixture
def limited(server_factory: ServerFactory, gauge: Gauge) -> TestServer:
    return server_factory(executor=FakeExecutor(), gpus="4xA100-80GB")


def post(server: TestServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/workloads{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {server.admin_token}"})


def spec(k: int) -> dict[str, Any]:
    return {"spec_yaml": f"name: j{k}\ncommand: 'true'\nresources: {{cpu: 0.1, memory: 64MiB}}\n"}


def test_no_more_than_the_limit_are_handled_at_once_and_every_one_is_stored(limited: TestServer,
                                                                            gauge: Gauge) -> None:
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda k: post(limited, "", spec(k)), range(8)))
    assert [a.status_code for a in answers] == [201] * 8
    assert gauge.most == LIMIT  # they did overlap up to the limit, never beyond
    ids = {a.json()["workload"]["id"] for a in answers}
    listed = httpx.get(f"{limited.url}/api/v1/workloads", params={"status": [], "limit": 100}, timeout=30,
                       headers={"Authorization": f"Bearer {limited.admin_token}"}).json()
    assert ids == {w["id"] for w in listed["items"]} and len(ids) == 8


def test_a_batch_counts_as_one_and_reads_are_not_held_behind_submissions(limited: TestServer, gauge: Gauge) -> None:
    with ThreadPoolExecutor(6) as pool:
        pending = [pool.submit(post, limited, "", spec(k)) for k in range(4)]
        pending.append(pool.submit(post, limited, "/batch", {"items": [spec(10), spec(11)]}))
        assert gauge.entered.wait(10)
        began = time.monotonic()
        listed = httpx.get(f"{limited.url}/api/v1/workloads", timeout=30,
                           headers={"Authorization": f"Bearer {limited.admin_token}"})
        waited = time.monotonic() - began
        statuses = [f.result().status_code for f in pending]
    assert listed.status_code == 200
    # five requests at HOLD_S each, two at a time, take >= 3 x HOLD_S; a read does not wait for them
    assert waited < 2 * HOLD_S
    assert statuses == [201] * 5 and gauge.most == LIMIT


def test_a_submission_waits_while_the_scheduler_is_behind_and_never_longer_than_the_bound(
        server_factory: ServerFactory) -> None:
    """While a scheduling pass that picked up a submission's wake runs longer than SCHEDULER_BEHIND_S, the next
    submissions wait for it, at most HOLD_SUBMIT_MAX_S each, and are then stored; once it ended they do not."""
    server = server_factory(executor=FakeExecutor(), gpus="4xA100-80GB")
    scheduler = server.services.scheduler
    assert scheduler is not None
    release, blocked = threading.Event(), threading.Event()
    step = scheduler.step

    def slow_step() -> object:
        if not release.is_set():
            blocked.set()
            release.wait(20)
        return step()

    scheduler.step = slow_step
    try:
        assert post(server, "", spec(0)).status_code == 201  # its wake starts a pass that blocks
        assert blocked.wait(10)
        time.sleep(context.SCHEDULER_BEHIND_S + 0.1)
        began = time.monotonic()
        held = post(server, "", spec(1))
        waited = time.monotonic() - began
        assert held.status_code == 201
        assert context.HOLD_SUBMIT_MAX_S - 0.05 <= waited < context.HOLD_SUBMIT_MAX_S + 2
    finally:
        release.set()
    deadline = time.monotonic() + 30
    while scheduler.lag_s() > 0 and time.monotonic() < deadline:  # the blocked pass ends, the next catches up
        time.sleep(0.05)
    began = time.monotonic()
    assert post(server, "", spec(2)).status_code == 201
    assert time.monotonic() - began < context.HOLD_SUBMIT_MAX_S - 0.05  # not held for the bound
