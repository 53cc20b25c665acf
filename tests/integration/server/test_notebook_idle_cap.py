"""A project's cap on its notebooks' idle_timeout, over HTTP on SQLite and PostgreSQL: who may set it, the
warning at submit, the figures `notebook ls` shows, and the culler applying it pass by pass."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from tests.support.servers import TestServer, wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import PermissionDeniedError, ValidationError
from gpupool.domain.status import WorkloadStatus
from gpupool.server.workers.culler import NotebookCuller
from gpupool.store.orm import ReplicaRow

NOTEBOOK = {"kind": "notebook", "project": "vision", "resources": {"cpu": 0.5, "memory": "1GiB", "gpu": 0.25}}


@pytest.fixture
def team(admin: Client, server: TestServer) -> dict[str, Client]:
    """Project vision with pat (its admin), alice (member) and victor (viewer); bob is a member of nlp."""
    admin.create_project("vision")
    admin.create_project("nlp")
    tokens = {name: admin.create_user(name, project=project, role=role).token
              for name, project, role in (("pat", "vision", "admin"), ("alice", "vision", "member"),
                                          ("victor", "vision", "viewer"), ("bob", "nlp", "member"))}
    return {name: server.client(token) for name, token in tokens.items()}


def test_only_administrators_and_the_projects_admins_may_cap_it(admin: Client, team: dict[str, Client]) -> None:
    for name in ("alice", "victor", "bob"):
        with pytest.raises(PermissionDeniedError, match="may cap"):
            team[name].set_idle_cap("vision", "1h")
    assert admin.set_idle_cap("vision", "4h").max_idle_timeout_s == 4 * 3600
    assert team["pat"].set_idle_cap("vision", "30m").max_idle_timeout_s == 1800
    assert {p.name: p.max_idle_timeout_s for p in team["alice"].projects()} == {"vision": 1800}
    with pytest.raises(ValidationError, match="not a cap"):
        team["pat"].set_idle_cap("vision", "off")
    with pytest.raises(ValidationError, match="out of range"):
        team["pat"].set_idle_cap("vision", "90d")
    assert team["pat"].set_idle_cap("vision", "none").max_idle_timeout_s is None


def test_a_notebook_asking_more_than_the_cap_is_accepted_with_a_warning(admin: Client,
                                                                         team: dict[str, Client]) -> None:
    admin.set_idle_cap("vision", "1h")
    alice = team["alice"]
    longer = alice.submit({**NOTEBOOK, "idle_timeout": "8h"})
    assert any("caps it at 1h" in w and "8h" in w for w in longer.warnings), longer.warnings
    off = alice.submit({**NOTEBOOK, "name": "off", "idle_timeout": "off"})
    assert any("asks idle_timeout off" in w for w in off.warnings), off.warnings
    shorter = alice.submit({**NOTEBOOK, "name": "short", "idle_timeout": "20m"})
    assert not any("caps" in w for w in shorter.warnings)
    shown = {n.id: n.idle_timeout_s for n in alice.notebooks()}
    assert shown == {longer.workload.id: 3600, off.workload.id: 3600, shorter.workload.id: 1200}
    admin.set_idle_cap("vision", "none")
    shown = {n.id: n.idle_timeout_s for n in alice.notebooks()}
    assert shown == {longer.workload.id: 8 * 3600, off.workload.id: 0, shorter.workload.id: 1200}


def _jupyter_idle_since(since: float) -> Any:
    """Jupyter's answers for a notebook idle since `since`: no kernel, nothing connected."""
    stamp = datetime.fromtimestamp(since, UTC).isoformat()

    def answer(url: str, headers: dict[str, str]) -> Any:
        if url.endswith("/status"):
            return {"last_activity": stamp, "connections": 0, "started": stamp}
        return []
    return answer


def test_the_culler_applies_a_new_cap_to_a_running_notebook_that_asked_off(server: TestServer, admin: Client,
                                                                            team: dict[str, Client]) -> None:
    nid = team["alice"].submit({**NOTEBOOK, "idle_timeout": "off"}).workload.id
    wait_until(lambda: admin.get_workload(nid).status == WorkloadStatus.RUNNING.value, 30, 0.1, "running")
    db = server.services.db
    with db.session() as session:  # the fake executor reports no endpoint; say Jupyter answers here
        for replica in session.scalars(select(ReplicaRow).where(ReplicaRow.workload_id == nid)):
            replica.endpoints = {"8888": {"host": "127.0.0.1", "port": 1, "ready": True}}
    start = server.services.clock()
    now = [start]
    keys = server.services.notebook_keys
    assert keys is not None
    culler = NotebookCuller(db, lambda: now[0], keys, "2h", http=_jupyter_idle_since(start))
    culler.step()
    assert culler.latest[nid].culls_in_s is None  # off, no cap: never culled
    now[0] = start + 10 * 60
    admin.set_idle_cap("vision", "1h")
    culler.step()
    assert culler.latest[nid].culls_in_s == pytest.approx(50 * 60, abs=1)  # off under a cap: the cap
    now[0] = start + 55 * 60  # the last 10 minutes: warned, not culled
    culler.step()
    detail = admin.get_workload(nid)
    assert detail.status == WorkloadStatus.RUNNING.value
    assert any("idle_timeout 1h, its project's cap" in e.reason for e in detail.events), detail.events
    now[0] = start + 3601
    culler.step()
    detail = admin.get_workload(nid)
    assert detail.status == WorkloadStatus.STOPPED.value and "culled after 1h" in detail.message
