"""Job arrays on a real server and database: one submit makes N tasks; the cap holds over many cycles; the
array's status follows its tasks; cancel of the array and of one task; a task's logs, index and command."""

from __future__ import annotations

import time
from collections import Counter

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from tests.integration.server.conftest import ServerFactory
from tests.support.gpus import stop_local_replicas
from tests.support.servers import TestServer, wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import NotFoundError, PermissionDeniedError, ValidationError
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor, ScriptedOutcome
from gpupool.server.api import schemas
from gpupool.server.services import workloads
from gpupool.server.services.auth import principal_for
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts

HOLDING = ("scheduled", "starting", "running")
ARRAY = "name: frames\narray: {array}\ncommand: render --frame {{{{array.index}}}}\nresources: {{gpu: 1}}\n"


def cycle(server: TestServer) -> None:
    """One scheduling cycle, one reconciler pass, one array pass."""
    services = server.services
    assert services.scheduling_loop and services.reconciler_loop and services.array_worker
    services.scheduling_loop.step()
    services.reconciler_loop.step()
    services.array_worker.step()


def statuses(client: Client, array_id: int) -> Counter[str]:
    return Counter(t.status for t in client.get_workload(array_id).tasks)


def test_a_capped_array_never_runs_more_than_its_cap_and_succeeds(server_factory: ServerFactory) -> None:
    fake = FakeExecutor(default=ScriptedOutcome(running_polls=2))  # each task runs for two reconciler passes
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)  # room for 4 tasks at once
    with server.client() as client:
        submitted = client.submit(ARRAY.format(array="0-19%3"))
        array = submitted.workload
        assert submitted.created and array.kind == "array" and array.array is not None
        assert (array.array.tasks, array.array.limit, array.array.by_status) == (20, 3, {"pending": 20})
        assert array.tasks == []  # the answer to a submit has the counts; show lists the tasks
        assert [t.index for t in client.get_workload(array.id).tasks] == list(range(20))
        assert client.array_task(array.id, 19).pending_reason == (
            f"array {array.id} runs at most 3 task(s) at once; waiting for a turn"
        )
        most, seen_at_cap = 0, 0
        for _ in range(60):
            cycle(server)
            holding = sum(n for s, n in statuses(client, array.id).items() if s in HOLDING)
            live = len(fake.running())
            assert holding <= 3 and live <= 3, f"{holding} tasks hold resources, {live} processes run"
            most = max(most, holding)
            seen_at_cap += holding == 3
            if client.get_workload(array.id).status == "succeeded":
                break
        done = client.get_workload(array.id)
        assert done.status == "succeeded" and done.message == "all 20 tasks succeeded"
        assert most == 3 and seen_at_cap >= 3  # the cap was reached, again and again, never passed
        assert sorted(int(x.env["GPUPOOL_ARRAY_INDEX"]) for x in fake.launches) == list(range(20))
        assert {x.command for x in fake.launches} == {f"render --frame {i}" for i in range(20)}
        history = [(e.from_status, e.to_status) for e in done.events if e.to_status]
        assert history == [("pending", "scheduled"), ("scheduled", "running"), ("running", "succeeded")]
        started = sorted((x.env["GPUPOOL_ARRAY_INDEX"], x) for x in fake.launches)
        assert started[0][1].env["GPUPOOL_ARRAY_ID"] == str(array.id)


def test_the_list_folds_an_array_into_one_line(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as client:
        array = client.submit(ARRAY.format(array="1,5,9")).workload
        single = client.submit("command: x\n").workload
        page = client.list_workloads()
        assert [w.id for w in page.items] == [single.id, array.id] and page.total == 2
        assert page.items[1].array is not None and page.items[1].array.by_status == {"pending": 3}
        task = client.array_task(array.id, 5)
        assert (task.array_index, task.parent_id, task.kind, task.spec["command"]) == (
            5,
            array.id,
            "job",
            "render --frame 5",
        )
        with pytest.raises(NotFoundError, match=f"array {array.id} has no task 4; its indices are 1,5,9"):
            client.array_task(array.id, 4)
        with pytest.raises(ValidationError, match="not an array"):
            client.array_task(single.id, 0)
        with pytest.raises(
            ValidationError, match=f"is a job array; name one of its tasks, e.g. `gpupool logs {array.id}.7`"
        ):
            list(client.logs(array.id))


def test_cancel_one_task_then_the_array(server_factory: ServerFactory) -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as client:
        array = client.submit(ARRAY.format(array="0-5")).workload
        for _ in range(3):
            cycle(server)
        assert statuses(client, array.id) == {"running": 4, "pending": 2}
        assert client.get_workload(array.id).status == "running"
        seven = client.array_task(array.id, 2)
        assert client.cancel(seven.id).status == "cancelled"
        cycle(server)
        cycle(server)  # its replica is stopped, a waiting task takes its GPU
        assert statuses(client, array.id) == {"running": 4, "pending": 1, "cancelled": 1}
        assert client.get_workload(array.id).status == "running"
        cancelled = client.cancel(array.id)
        assert cancelled.status == "cancelled" and cancelled.array and cancelled.array.by_status == {"cancelled": 6}
        cycle(server)
        cycle(server)
        assert fake.running() == []  # every task's process was stopped
        assert client.get_workload(array.id).status == "cancelled"


def test_an_array_fails_when_a_task_fails_after_all_ended(server_factory: ServerFactory) -> None:
    fake = FakeExecutor(default=RUN_FOREVER)
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as client:
        array = client.submit(ARRAY.format(array="0-2")).workload
        cycle(server)
        cycle(server)
        ids = {t.index: t.id for t in client.get_workload(array.id).tasks}
        fake.finish(str(ids[0]), 0, exit_code=3)
        cycle(server)
        assert client.get_workload(array.id).status == "running"  # tasks 1 and 2 still run
        fake.finish(str(ids[1]), 0)
        fake.finish(str(ids[2]), 0)
        cycle(server)
        done = client.get_workload(array.id)
        assert done.status == "failed" and "1 of 3 tasks failed" in done.message


def test_a_real_task_gets_its_index_in_env_and_command_and_its_logs_are_read(server_factory: ServerFactory) -> None:
    server = server_factory()  # the local executor: real processes
    try:
        with server.client() as client:
            spec = (
                "name: echo\narray: 3-5\ncommand: 'echo index=$GPUPOOL_ARRAY_INDEX arg={{array.index}}'\n"
                "resources: {cpu: 0.5, memory: 64MiB}\n"
            )
            array = client.submit(spec).workload
            done = wait_until(
                lambda: (w := client.get_workload(array.id)).status == "succeeded" and w,
                timeout_s=60,
                what="array succeeded",
            )
            assert done.array is not None and done.array.by_status == {"succeeded": 3}
            four = client.array_task(array.id, 4)
            assert list(client.logs(four.id)) == ["index=4 arg=4"]
    finally:
        stop_local_replicas(server.settings.home)


def test_an_uncapped_array_is_offered_only_what_the_pool_could_hold(server_factory: ServerFactory) -> None:
    fake = FakeExecutor(default=ScriptedOutcome(running_polls=1))
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)  # 4 one-GPU tasks at most
    loop = server.services.scheduling_loop
    assert loop is not None
    offered_at_most = 4 + loop.profile.reservation_depth + 1  # the pool's room, the reservations, one more
    with server.client() as client:
        array = client.submit(ARRAY.format(array="0-59")).workload
        seen = []
        for _ in range(200):
            cycle(server)
            decided = loop.last_decisions
            assert decided is not None
            seen.append(len(decided.binds) + len(decided.pending))
            if client.get_workload(array.id, tasks=0).status == "succeeded":
                break
        assert client.get_workload(array.id, tasks=0).array.by_status == {"succeeded": 60}  # type: ignore[union-attr]
    assert max(seen) == offered_at_most  # the first cycles: 13 of the 60 pending tasks were seen
    assert sorted(int(x.env["GPUPOOL_ARRAY_INDEX"]) for x in fake.launches) == list(range(60))


def test_a_large_array_is_accepted_whole(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)  # accept time: benchmarks/
    with server.client() as client:
        array = client.submit(ARRAY.format(array="0-2999")).workload
        assert array.array is not None and array.array.tasks == 3000
        shown = client.get_workload(array.id)  # show carries the first page; the rest are paged
        assert [t.index for t in shown.tasks] == list(range(50)) and shown.tasks_next == 49
        tasks = list(client.all_array_tasks(array.id))
        assert [t.index for t in tasks] == list(range(3000))
        assert len(client.get_workload(tasks[-1].id).events) == 1  # each task has its submitted event
        assert client.array_task(array.id, 2999).spec["command"] == "render --frame 2999"


def test_the_tasks_are_paged_in_index_order_with_a_cursor(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as client:
        array = client.submit(ARRAY.format(array="0-2000:10")).workload  # 201 tasks: 0, 10, ..., 2000
        client.cancel(client.array_task(array.id, 1500).id)
        pages, after = [], None
        while True:
            page = client.array_tasks(array.id, limit=70, after=after)
            pages.append([t.index for t in page.tasks])
            if page.next_after is None:
                break
            after = page.next_after
        assert [len(p) for p in pages] == [70, 70, 61]
        assert [i for p in pages for i in p] == list(range(0, 2001, 10))
        exact = client.array_tasks(array.id, limit=1, after=1990)  # the last task exactly fills the page
        assert [t.index for t in exact.tasks] == [2000] and exact.next_after is None
        cancelled = client.array_tasks(array.id, status=["cancelled"])
        assert [(t.index, t.status) for t in cancelled.tasks] == [(1500, "cancelled")]
        summary = client.get_workload(array.id, tasks=0)
        assert summary.tasks == [] and summary.tasks_next is None
        assert summary.array is not None and summary.array.by_status == {"pending": 200, "cancelled": 1}
        first = client.get_workload(array.id, tasks=5)
        assert [t.index for t in first.tasks] == [0, 10, 20, 30, 40] and first.tasks_next == 40
        with pytest.raises(ValidationError, match=r"unknown status .finished.; use one of"):
            client.array_tasks(array.id, status=["finished"])
        job = client.submit("command: 'true'\nresources: {cpu: 1}\n").workload
        with pytest.raises(ValidationError, match=f"workload {job.id} is a job, not an array"):
            client.array_tasks(job.id)
        wire = httpx.get(
            f"{server.url}/api/v1/workloads/{array.id}/tasks",
            params={"limit": 1001},
            headers={"Authorization": f"Bearer {server.admin_token}"},
        )
        assert wire.status_code == 422  # a page holds at most 1000 tasks


def test_only_members_of_the_project_see_or_cancel_an_array_and_its_tasks(
    server_factory: ServerFactory, fake: FakeExecutor
) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as admin:
        admin.create_project("lab")
        admin.create_project("other")
        viewer = admin.create_user("vic", project="lab", role="viewer").token
        outsider = admin.create_user("max", project="other").token
        array = admin.submit(ARRAY.format(array="0-2") + "project: lab\n").workload
        task = admin.array_task(array.id, 1)
    with server.client(outsider) as other:
        for look in (
            lambda: other.get_workload(array.id),
            lambda: other.array_task(array.id, 1),
            lambda: other.array_tasks(array.id),
            lambda: other.cancel(task.id),
            lambda: other.cancel(array.id),
        ):
            with pytest.raises(NotFoundError):
                look()
        assert other.list_workloads().items == []
    with server.client(viewer) as vic:
        assert vic.array_task(array.id, 1).id == task.id
        assert [t.id for t in vic.array_tasks(array.id, after=0, limit=1).tasks] == [task.id]
        for act in (lambda: vic.cancel(task.id), lambda: vic.cancel(array.id)):
            with pytest.raises(PermissionDeniedError):
                act()
    with server.client() as admin:
        assert {t.status for t in admin.get_workload(array.id).tasks} == {"pending"}


def test_the_console_shows_an_array_with_its_tasks(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    with server.client() as admin:
        array = admin.submit(ARRAY.format(array="0-2")).workload
        first = admin.array_task(array.id, 0)
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=30) as browser:
        assert browser.post("/signin", data={"token": server.admin_token, "next": "/workloads"}).status_code == 303
        page = browser.get(f"/workloads/{array.id}").text
        listing = browser.get("/workloads?kind=array").text
    assert "<h2>Tasks</h2>" in page and f'href="/workloads/{first.id}"' in page and "Indices 0-2: 3 pending" in page
    assert 'id="logs"' not in page  # an array has no output of its own; each task's page follows its logs
    assert f"/workloads/{array.id}" in listing and f'/workloads/{first.id}"' not in listing


def test_an_array_is_stored_whole_or_not_at_all_and_once_per_key(
    server_factory: ServerFactory, fake: FakeExecutor
) -> None:
    server = server_factory(executor=fake, gpus="4xA100-80GB", workers=False)
    services = server.services
    body = schemas.SubmitRequest(spec_yaml=ARRAY.format(array="0-99"))
    with pytest.raises(RuntimeError), services.db.session() as session:  # the server dies before the commit
        principal = principal_for(session, accounts.user_by_id(session, 1))
        workloads.submit(session, principal, body, time.time(), services.feasibility)
        raise RuntimeError("killed")
    with services.db.session(write=False) as session:
        assert session.scalar(select(func.count(WorkloadRow.id))) == 0
    with server.client() as client:
        first = client.submit(ARRAY.format(array="0-2"), idempotency_key="frames-1")
        again = client.submit(ARRAY.format(array="0-2"), idempotency_key="frames-1")
        assert first.created and not again.created and again.workload.id == first.workload.id
    with services.db.session() as session:
        assert session.scalar(select(func.count(WorkloadRow.id))) == 4  # the array and its three tasks
        task = session.scalars(select(WorkloadRow).where(WorkloadRow.array_index == 1)).one()
        with pytest.raises(IntegrityError), session.begin_nested():  # a task index is unique in its array
            session.add(WorkloadRow(**{c: getattr(task, c) for c in COPIED}))
            session.flush()


COPIED = (
    "name",
    "kind",
    "project_id",
    "queue",
    "user_id",
    "spec",
    "status",
    "priority",
    "replica_count",
    "submitted_at",
    "updated_at",
    "attempt",
    "retries_used",
    "preemptions",
    "message",
    "parent_id",
    "array_index",
)
