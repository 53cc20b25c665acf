"""Busy / idle GPU-hours survive a server restart: a real server with a simulated A100 at 70 % utilisation
writes the sampler's observations to the usage ledger; a new server on the same database reports them at once."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.databases import fresh_database
from tests.support.gpus import a100s, write_description
from tests.support.servers import server_settings, start_server, wait_until

from gpupool.executors.fake import RUN_FOREVER, FakeExecutor
from gpupool.server.settings import Settings
from gpupool.store.db import Database
from gpupool.store.repos import usage_ledger

JOB = "name: train\ncommand: sleep 600\nresources: {cpu: 0.5, memory: 256MiB, gpu: 1}\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def _stored_observed_s(url: str) -> float:
    db = Database(url)
    try:
        with db.session(write=False) as session:
            return sum(e.observed_s for e in usage_ledger.entries(session, None, 0.0, 4e9, {}))
    finally:
        db.dispose()


def _settings(tmp_path: Path, home: str, database_url: str, flush_interval_s: float) -> Settings:
    description = write_description(tmp_path, {"node": "m", "gpus": [a100s(1, utilization=70)]})
    return server_settings(tmp_path / home, database_url, gpu_description=description, sample_interval_s=0.05,
                           usage_flush_interval_s=flush_interval_s)


def test_busy_hours_written_before_a_restart_are_reported_after_it(database_url: str, tmp_path: Path) -> None:
    def settings(home: str) -> Settings:
        return _settings(tmp_path, home, database_url, 0.2)

    first = start_server(settings("first"), FakeExecutor(default=RUN_FOREVER))
    try:
        with first.client() as admin:
            wid = admin.submit(JOB).workload.id
            wait_until(lambda: admin.get_workload(wid).status == "running", 20, what="workload running")
        wait_until(lambda: _stored_observed_s(database_url) > 5.0, 60, what="observations flushed to the ledger")
    finally:
        first.stop()
    stored_s = _stored_observed_s(database_url)
    second = start_server(settings("second"), FakeExecutor(default=RUN_FOREVER))
    try:
        with second.client(first.admin_token) as admin:
            report = admin.usage(by="project", since="1h")
    finally:
        second.stop()
    # the new server has sampled at most a few steps: what it reports was written by the first one
    assert [line.group for line in report.lines] == ["default"]
    line = report.lines[0]
    assert line.observed_gpu_h >= round(stored_s / 3600, 4) > 0  # the report rounds to 4 decimals
    assert line.busy_gpu_h == pytest.approx(0.7 * line.observed_gpu_h, rel=0.02, abs=2e-4)
    assert line.idle_gpu_h == 0


def test_a_clean_stop_writes_the_counters_not_flushed_yet(database_url: str, tmp_path: Path) -> None:
    server = start_server(_settings(tmp_path, "home", database_url, 3600.0), FakeExecutor(default=RUN_FOREVER))
    try:
        with server.client() as admin:
            admin.submit(JOB)
            wait_until(lambda: admin.usage().total_busy_gpu_h * 3600 > 1.0, 60, what="busy time observed")
            reported_h = admin.usage().lines[0].observed_gpu_h
        assert _stored_observed_s(database_url) == 0  # an hour's flush interval: nothing written yet
    finally:
        server.stop()
    # everything reported before the stop was written by it (the report rounds to 4 decimals)
    assert round(_stored_observed_s(database_url) / 3600, 4) >= reported_h > 0
