"""Pipeline schedules with an injected clock on a real database: fire times across DST changes in a named
timezone, catch-up after downtime (none / latest / all), concurrency (forbid records why, replace cancels
the old run), pause/resume, and a kill -9 of the worker mid-fire that neither loses nor doubles a fire."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select
from tests.support.servers import ManualClock

from gpupool.api import pipeline_schemas as ps
from gpupool.domain.specs import WorkloadSpec
from gpupool.executors.storage import StorageLayout
from gpupool.server.services import pipelines as service
from gpupool.server.services.auth import principal_for
from gpupool.server.services.bootstrap import ensure_admin
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.services.schedules import next_fire
from gpupool.server.workers.pipelines import PipelineWorker
from gpupool.store.db import Database
from gpupool.store.orm import PipelineRow, PipelineRunRow, ScheduleFireRow, WorkloadRow
from gpupool.store.repos import accounts

BERLIN = ZoneInfo("Europe/Berlin")
HOUR = 3600.0


class AlwaysFits(FeasibilityCache):
    """Every step fits (this test has no nodes and no scheduler: steps stay pending, runs stay active)."""

    def never_fits_reason(self, session: Any, spec: WorkloadSpec, queue: str) -> str | None:
        return None


class Harness:
    """A database with the first administrator, a pipeline worker on a manual clock, and helpers."""

    def __init__(self, tmp: Path, start: float) -> None:
        self.db = Database(f"sqlite:///{tmp / 'gpupool.db'}")
        self.db.migrate()
        ensure_admin(self.db, "admin", tmp / "token", start)
        self.clock = ManualClock(start)
        self.worker = PipelineWorker(self.db, self.clock, StorageLayout(tmp), AlwaysFits())

    def submit(self, schedule: dict[str, Any], name: str = "nightly", runs_end: bool = True) -> int:
        """A pipeline with this schedule; with `runs_end` its one step is skipped (`when: false`), so each
        run ends in the pass that starts it; otherwise runs stay running (nothing here runs their step)."""
        step: dict[str, Any] = {"command": "true"} | ({"when": "false"} if runs_end else {})
        spec = {"kind": "pipeline", "name": name, "schedule": schedule, "steps": {"a": step}}
        with self.db.session() as session:
            admin = accounts.user_by_name(session, "admin")
            assert admin is not None
            row = service.submit_pipeline(session, principal_for(session, admin), ps.PipelineSubmit(spec=spec),
                                          self.clock(), next_fire)
            return row.id

    def fires(self, pipeline_id: int) -> list[tuple[float, str, str, int | None]]:
        with self.db.session(write=False) as session:
            rows = session.scalars(select(ScheduleFireRow).where(ScheduleFireRow.pipeline_id == pipeline_id)
                                   .order_by(ScheduleFireRow.fire_at)).all()
            return [(r.fire_at, r.outcome, r.reason, r.run_id) for r in rows]

    def runs(self, pipeline_id: int) -> list[tuple[int, str, float | None]]:
        with self.db.session(write=False) as session:
            rows = session.execute(select(WorkloadRow.id, WorkloadRow.status, PipelineRunRow.fire_at)
                                   .join(PipelineRunRow, PipelineRunRow.run_id == WorkloadRow.id)
                                   .where(PipelineRunRow.pipeline_id == pipeline_id)
                                   .order_by(WorkloadRow.id)).all()
            return [(r[0], r[1], r[2]) for r in rows]

    def run_for(self, seconds: float, step_s: float = HOUR) -> None:
        """The server is up: the worker passes every `step_s` seconds of the manual clock."""
        end = self.clock() + seconds
        while self.clock() < end:
            self.clock.advance(min(step_s, end - self.clock()))
            self.worker.step()


def local(at: float) -> str:
    return datetime.fromtimestamp(at, BERLIN).strftime("%m-%d %H:%M%z")


def at(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=BERLIN).timestamp()


def test_a_nightly_schedule_fires_once_a_night_across_both_dst_changes(tmp_path: Path) -> None:
    spring = Harness(tmp_path / "spring", at("2026-03-27 12:00"))
    pid = spring.submit({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "concurrency": "allow"})
    spring.run_for(4 * 24 * HOUR)
    fired = [(local(f), outcome) for f, outcome, _, _ in spring.fires(pid)]
    # 29 March: 02:00 -> 03:00, so 02:30 does not exist that night and fires at the change
    assert fired == [("03-28 02:30+0100", "ran"), ("03-29 03:00+0200", "ran"), ("03-30 02:30+0200", "ran"),
                     ("03-31 02:30+0200", "ran")]
    assert len(spring.runs(pid)) == 4

    autumn = Harness(tmp_path / "autumn", at("2026-10-24 12:00"))
    pid = autumn.submit({"cron": "30 2 * * *", "timezone": "Europe/Berlin", "concurrency": "allow"})
    autumn.run_for(3 * 24 * HOUR)
    fired = [local(f) for f, _, _, _ in autumn.fires(pid)]
    # 25 October: 03:00 -> 02:00, so 02:30 happens twice; the night still gets one run
    assert fired == ["10-25 02:30+0200", "10-26 02:30+0100", "10-27 02:30+0100"]


@pytest.mark.parametrize(("catch_up", "ran", "skipped"), [("none", 0, 3), ("latest", 1, 2), ("all", 2, 1)])
def test_after_three_missed_fires_catch_up_decides_what_runs(tmp_path: Path, catch_up: str, ran: int,
                                                            skipped: int) -> None:
    h = Harness(tmp_path, at("2026-06-01 00:10"))
    pid = h.submit({"cron": "0 * * * *", "timezone": "Europe/Berlin", "catch_up": catch_up, "max_catch_up": 2,
                    "concurrency": "allow"})
    h.clock.advance(3 * HOUR)  # the server was down over 01:00, 02:00 and 03:00
    h.worker.step()
    fires = h.fires(pid)
    assert [local(f) for f, _, _, _ in fires] == ["06-01 01:00+0200", "06-01 02:00+0200", "06-01 03:00+0200"]
    assert [o for _, o, _, _ in fires].count("ran") == ran and [o for _, o, _, _ in fires].count("skipped") == skipped
    assert all(f"catch_up: {catch_up}" in reason for _, o, reason, _ in fires if o == "skipped")
    if ran:
        assert fires[-1][1] == "ran"  # the latest is the one kept
    assert sorted(run[2] or 0 for run in h.runs(pid)) == [f for f, o, _, _ in fires if o == "ran"]
    h.run_for(HOUR, step_s=60)  # back up: 04:00 fires on time, whatever catch_up says
    assert h.fires(pid)[-1][:2] == (at("2026-06-01 04:00"), "ran")


def test_forbid_skips_with_the_reason_and_replace_cancels_the_old_run(tmp_path: Path) -> None:
    h = Harness(tmp_path, at("2026-06-01 00:10"))
    forbid = h.submit({"cron": "0 * * * *", "timezone": "UTC", "concurrency": "forbid"}, "forbid", runs_end=False)
    replace = h.submit({"cron": "0 * * * *", "timezone": "UTC", "concurrency": "replace"}, "replace",
                       runs_end=False)
    h.run_for(2 * HOUR, step_s=600)  # two fires; the first run never ends (nothing runs its step here)
    (first, second) = h.fires(forbid)
    assert first[1] == "ran" and second[1] == "skipped"
    assert f"run {first[3]} is still running (concurrency: forbid)" == second[2]
    assert [r[1] for r in h.runs(forbid)] == ["running"]
    h.worker.step()  # the replaced run's steps are cancelled on the next pass
    runs = h.runs(replace)
    assert [r[1] for r in runs] == ["cancelled", "running"]
    assert "replaced run" in h.fires(replace)[1][2]
    with h.db.session(write=False) as session:  # the old run's step was cancelled with it
        old_steps = service.steps_of(session, runs[0][0])
        child = session.get(WorkloadRow, old_steps[0].workload_id)
        assert old_steps[0].state == "cancelled" and child is not None and child.status == "cancelled"


def test_a_paused_schedule_does_not_fire_and_resumes_from_now(tmp_path: Path) -> None:
    h = Harness(tmp_path, at("2026-06-01 00:10"))
    pid = h.submit({"cron": "0 * * * *", "timezone": "UTC", "catch_up": "all", "concurrency": "allow"})
    with h.db.session() as session:
        admin = accounts.user_by_name(session, "admin")
        assert admin is not None
        service.set_paused(session, principal_for(session, admin), "nightly", None, True, h.clock(), next_fire)
    h.run_for(3 * HOUR, step_s=600)
    assert h.fires(pid) == []
    with h.db.session() as session:
        admin = accounts.user_by_name(session, "admin")
        assert admin is not None
        row = service.set_paused(session, principal_for(session, admin), "nightly", None, False, h.clock(),
                                 next_fire)
        assert row.next_fire_at == h.clock() - h.clock() % HOUR + HOUR
    h.run_for(HOUR, step_s=600)
    assert [o for _, o, _, _ in h.fires(pid)] == ["ran"]  # only the fire after resuming


KILLED_PASS = """
import sys
from gpupool.executors.storage import StorageLayout
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.workers.pipelines import PipelineWorker
from gpupool.store.db import Database

class AlwaysFits(FeasibilityCache):
    def never_fits_reason(self, session, spec, queue):
        return None

now = float(sys.argv[2])
worker = PipelineWorker(Database(sys.argv[1]), lambda: now, StorageLayout(sys.argv[3]), AlwaysFits())
print("ready", flush=True)
while True:
    worker.step()
"""


def test_a_kill_9_during_a_fire_neither_loses_nor_doubles_it(tmp_path: Path) -> None:
    h = Harness(tmp_path, at("2026-06-01 00:10"))
    pid = h.submit({"cron": "*/10 * * * *", "timezone": "UTC", "catch_up": "all", "max_catch_up": 100,
                    "concurrency": "allow"}, runs_end=False)  # each run submits its step: a child workload
    now = h.clock() + 4 * HOUR  # 24 fires due at once: a pass takes long enough to be killed inside it
    url = f"sqlite:///{tmp_path / 'gpupool.db'}"
    command = [sys.executable, "-c", KILLED_PASS, url, str(now), str(tmp_path)]
    for delay in (0.1, 0.4):
        process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
            time.sleep(delay)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
    h.clock.now = now
    h.worker.step()  # the restarted worker finishes what the killed ones left
    fires = h.fires(pid)
    expected = [at("2026-06-01 00:20") + 600 * k for k in range(24)]
    assert [f for f, _, _, _ in fires] == expected  # every fire once
    assert all(o == "ran" for _, o, _, _ in fires)
    runs = h.runs(pid)
    assert sorted(r[2] or 0 for r in runs) == expected  # one run per fire, none twice
    assert sorted(r for _, _, _, r in fires) == [r[0] for r in runs]
    with h.db.session(write=False) as session:  # and each run's step went to the queue exactly once
        for run_id, _, _ in runs:
            children = session.scalars(select(WorkloadRow.id).where(WorkloadRow.parent_id == run_id)).all()
            (step,) = service.steps_of(session, run_id)
            assert len(children) == 1 and step.workload_id == children[0] and step.state == "submitted"
    with h.db.session(write=False) as session:
        assert session.get(PipelineRow, pid).next_fire_at == at("2026-06-01 04:20")  # type: ignore[union-attr]
