"""Submitting, running, waiting, cancelling, retrying and losing workloads over HTTP (fake executor)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, event, select
from tests.integration.server.conftest import ServerFactory
from tests.support.servers import ManualClock, TestServer, wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import ConflictError, UnsatisfiableError
from gpupool.executors.fake import SUCCEED, FakeExecutor, ScriptedOutcome, fail, replica_key
from gpupool.server.api import schemas
from gpupool.server.services import workloads
from gpupool.server.services.auth import principal_for
from gpupool.store.orm import NodeRow, WorkloadRow
from gpupool.store.repos import accounts

JOB = "kind: job\nname: {name}\ncommand: python train.py\nresources: {{cpu: 1, memory: 1GiB, gpu: {gpu}}}\n"


def job(name: str = "train", gpu: float = 1, **extra: object) -> str:
    text = JOB.format(name=name, gpu=gpu)
    return text + "".join(f"{k}: {v}\n" for k, v in extra.items())


def status_of(client: Client, workload_id: int) -> str:
    return client.get_workload(workload_id).status


def test_a_job_runs_to_success_and_its_history_says_how(admin: Client, fake: FakeExecutor) -> None:
    submitted = admin.submit(job())
    assert submitted.created and submitted.workload.status == "pending"
    wid = submitted.workload.id
    fake.script(str(wid), SUCCEED)  # not started yet: the scheduler runs in the background
    wait_until(lambda: fake.launches, what="launch")
    done = admin.wait(wid, timeout_s=10)
    assert done.status == "succeeded"
    changes = [(e.from_status, e.to_status) for e in done.events if e.to_status]
    assert changes == [("pending", "scheduled"), ("scheduled", "starting"), ("starting", "running"),
                       ("running", "succeeded")]
    assert done.replica_list[0].exit_code == 0 and done.replica_list[0].gpus[0].milli == 1000
    assert [w.id for w in admin.list_workloads(status=["succeeded"]).items] == [wid]


def test_pending_workloads_show_their_reason_and_position(admin: Client, fake: FakeExecutor) -> None:
    big = admin.submit(job("big", 4)).workload.id
    wait_until(lambda: status_of(admin, big) == "running", what="big running")
    first = admin.submit(job("first", 1)).workload.id
    second = admin.submit(job("second", 1)).workload.id
    wait_until(lambda: len({w.id for w in admin.list_workloads(status=["pending"]).items
                            if w.pending_reason}) == 2, what="two reasons")
    by_id = {w.id: w for w in admin.list_workloads(status=["pending"]).items}
    assert (by_id[first].queue_position, by_id[second].queue_position) == (1, 2)
    assert "gpu" in (by_id[first].pending_reason or "").lower()
    assert admin.get_workload(second).pending_reason == by_id[second].pending_reason
    admin.cancel(big)
    for wid in (first, second):
        wait_until(lambda wid=wid: status_of(admin, wid) == "running", what=f"{wid} running")
    assert admin.get_workload(first).pending_reason is None


def test_cancel_stops_running_replicas_and_a_second_cancel_conflicts(admin: Client, fake: FakeExecutor) -> None:
    wid = admin.submit(job(replicas=2)).workload.id
    wait_until(lambda: status_of(admin, wid) == "running", what="running")
    cancelled = admin.cancel(wid)
    assert cancelled.status == "cancelled"
    wait_until(lambda: len(fake.stops) == 2, what="both replicas stopped")
    wait_until(lambda: all(r.state == "stopped" for r in admin.get_workload(wid).replica_list), what="stopped")
    with pytest.raises(ConflictError, match="already ended"):
        admin.cancel(wid)


def test_a_pending_workload_is_cancelled_without_starting(admin: Client, fake: FakeExecutor) -> None:
    blocker = admin.submit(job("blocker", 4)).workload.id
    wait_until(lambda: status_of(admin, blocker) == "running", what="blocker running")
    wid = admin.submit(job("waits", 1)).workload.id
    assert admin.cancel(wid).status == "cancelled"
    admin.cancel(blocker)
    assert [launch.workload_id for launch in fake.launches] == [str(blocker)]


def test_failed_replicas_are_retried_then_the_job_fails(admin: Client, fake: FakeExecutor) -> None:
    wid = admin.submit(job(retries=1)).workload.id
    fake.script(str(wid), fail(exit_code=3))
    if any(launch.workload_id == str(wid) for launch in fake.launches):
        fake.finish(str(wid), 0, exit_code=3)  # the first run started before the script: it fails the same way
    done = admin.wait(wid, timeout_s=15)
    assert done.status == "failed" and done.retries_used == 1 and done.attempt == 2
    assert "exit code 3" in done.message and "no retries left" in done.message
    assert any("retry 1 of 1" in e.reason for e in done.events)
    assert sorted((launch.replica, launch.attempt) for launch in fake.launches) == [(0, 0), (0, 1)]


def test_a_retry_that_succeeds_ends_the_job_succeeded(admin: Client, fake: FakeExecutor) -> None:
    # attempts already started when the script switches to success may still fail: leave room for them
    wid = admin.submit(job(retries=3)).workload.id
    fake.script(str(wid), fail(exit_code=1))
    wait_until(lambda: admin.get_workload(wid).retries_used == 1, what="first retry")
    fake.script(str(wid), SUCCEED)
    done = admin.wait(wid, timeout_s=15)
    assert done.status == "succeeded" and done.retries_used in (1, 2, 3)


def test_a_lost_replica_makes_the_workload_lost(admin: Client, fake: FakeExecutor) -> None:
    wid = admin.submit(job()).workload.id
    wait_until(lambda: status_of(admin, wid) == "running", what="running")
    fake.lose(str(wid), 0)
    done = admin.wait(wid, timeout_s=10)
    assert done.status == "lost" and "vanished" in done.message


def test_max_runtime_is_enforced(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    clock = ManualClock()
    server = server_factory(executor=fake, clock=clock)
    with server.client() as client:
        wid = client.submit(job(gpu=0, max_runtime="1h")).workload.id
        wait_until(lambda: status_of(client, wid) == "running", what="running")
        clock.advance(3599)
        assert status_of(client, wid) == "running"
        clock.advance(2)
        done = client.wait(wid, timeout_s=10)
    assert done.status == "failed" and "max_runtime" in done.message
    wait_until(lambda: fake.stops, what="stop")


STUCK_STARTING = ScriptedOutcome(starting_polls=10**9)  # the command never begins to run


def test_a_workload_stuck_starting_fails_after_the_start_timeout(server_factory: ServerFactory,
                                                                 fake: FakeExecutor) -> None:
    clock = ManualClock()
    fake.default = STUCK_STARTING
    server = server_factory(executor=fake, clock=clock, start_timeout_s=300)
    with server.client() as client:
        wid = client.submit(job(gpu=0)).workload.id
        wait_until(lambda: status_of(client, wid) == "starting", what="starting")
        clock.advance(299)  # 299 s <= 300 s: still starting
        time.sleep(0.3)
        assert status_of(client, wid) == "starting"
        clock.advance(2)  # 301 s > 300 s
        done = client.wait(wid, timeout_s=10)
    assert done.status == "failed" and "did not start within 300s" in done.message
    wait_until(lambda: fake.stops, what="stop")


def test_max_runtime_covers_a_replica_stuck_starting(server_factory: ServerFactory, fake: FakeExecutor) -> None:
    clock = ManualClock()
    fake.default = STUCK_STARTING
    server = server_factory(executor=fake, clock=clock)  # start timeout 600 s, max_runtime 60 s
    with server.client() as client:
        wid = client.submit(job(gpu=0, max_runtime="1m")).workload.id
        wait_until(lambda: status_of(client, wid) == "starting", what="starting")
        clock.advance(61)
        done = client.wait(wid, timeout_s=10)
    assert done.status == "failed" and "max_runtime" in done.message


def test_a_replica_stopped_behind_the_workloads_back_ends_it(admin: Client, fake: FakeExecutor) -> None:
    # e.g. a second server on the same database stopped it: the workload must not wait in starting forever
    fake.default = STUCK_STARTING
    wid = admin.submit(job()).workload.id
    wait_until(lambda: status_of(admin, wid) == "starting", what="starting")
    fake.stop({"executor": "fake", "id": replica_key(str(wid), 0)}, grace_s=0)
    done = admin.wait(wid, timeout_s=10)
    assert done.status == "failed" and "stopped" in done.message


def test_a_request_no_node_can_ever_hold_is_refused(admin: Client) -> None:
    with pytest.raises(UnsatisfiableError, match="largest node has 4"):
        admin.submit(job(gpu=8))
    with pytest.raises(UnsatisfiableError, match="CPU"):
        admin.submit("command: x\nresources: {cpu: 64}\n")
    assert admin.list_workloads(status=[]).total == 0


def test_idempotent_submission(admin: Client) -> None:
    first = admin.submit(job(), idempotency_key="run-42")
    again = admin.submit(job(), idempotency_key="run-42")
    assert first.created and not again.created and again.workload.id == first.workload.id
    with pytest.raises(ConflictError, match="different spec"):
        admin.submit(job("other"), idempotency_key="run-42")
    assert admin.list_workloads(status=[]).total == 1


def test_a_key_replayed_after_its_spec_became_unsatisfiable_answers_with_its_workload(
        server_factory: ServerFactory, fake: FakeExecutor) -> None:
    """A submit's key is read only when the insert finds it taken or the spec is refused: a replay whose spec
    no node can hold any more still gets the workload its key stored; another spec under the key still
    conflicts; a new key gets the refusal."""
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")
    with server.client() as admin:
        first = admin.submit(job("keyed", gpu=4), idempotency_key="k")
        with server.services.db.session() as session:  # the pool shrinks to one card per node
            for node in session.scalars(select(NodeRow)):
                node.gpus = node.gpus[:1]
        with pytest.raises(UnsatisfiableError):
            admin.submit(job("keyed", gpu=4), idempotency_key="fresh")
        again = admin.submit(job("keyed", gpu=4), idempotency_key="k")
        assert not again.created and again.workload.id == first.workload.id
        with pytest.raises(ConflictError, match="different spec"):
            admin.submit(job("other", gpu=4), idempotency_key="k")
        assert [w.id for w in admin.list_workloads(status=[]).items] == [first.workload.id]


def test_a_new_key_is_not_read_before_the_insert_and_a_replay_reads_it(server_factory: ServerFactory,
                                                                        fake: FakeExecutor) -> None:
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")
    statements: list[str] = []

    def executed(_conn: object, _cursor: object, sql: str, *_rest: object) -> None:
        statements.append(" ".join(sql.split()))

    with server.client() as admin:
        admin.submit(job("warm"), idempotency_key="warm")  # the setup cache filled, the token's use recorded
        event.listen(server.services.db.engine, "before_cursor_execute", executed)
        try:
            first = admin.submit(job("keyed"), idempotency_key="k")
            new_key = list(statements)
            again = admin.submit(job("keyed"), idempotency_key="k")
        finally:
            event.remove(server.services.db.engine, "before_cursor_execute", executed)
    assert again.workload.id == first.workload.id and not again.created
    by_key = [s for s in statements if s.startswith("SELECT workloads.id FROM workloads WHERE")]
    assert not [s for s in new_key if s in by_key]  # the insert's ON CONFLICT stands for the read
    assert by_key  # the replay found the key taken, then read it


def test_concurrent_submissions_with_one_key_create_one_workload(server: TestServer) -> None:
    ids: list[int] = []
    lock = threading.Lock()

    def submit() -> None:
        with server.client() as client:
            result = client.submit(job("same"), idempotency_key="same-key")
        with lock:
            ids.append(result.workload.id)

    threads = [threading.Thread(target=submit) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # PostgreSQL runs submits concurrently
def test_submits_waiting_for_the_write_lock_share_a_transaction_and_each_gets_its_own_answer(
        server_factory: ServerFactory, fake: FakeExecutor) -> None:
    """Eight submits that wait at once (the test holds SQLite's write lock) are stored in one write transaction
    of the request threads (store/group_commit.py): each answer is its own job, a refused one fails alone, two
    with one idempotency key give one workload."""
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")
    db = server.services.db
    specs = [(job(f"burst-{i}"), None) for i in range(5)] + [(job("keyed"), "k"), (job("keyed"), "k"),
                                                             (job("too-big", gpu=64), None)]
    answers: list[object] = [None] * len(specs)
    begins: list[str] = []

    def submit(i: int) -> None:
        with server.client() as client:
            try:
                answers[i] = client.submit(specs[i][0], idempotency_key=specs[i][1])
            except UnsatisfiableError as error:
                answers[i] = error

    with server.client() as admin:
        admin.submit(job("warm"))  # the token's first use is recorded, the setup cache filled
        before = _submit_counters(admin)
    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(specs))]
    event.listen(db.engine, "begin", lambda _c: begins.append(threading.current_thread().name))
    with db.session() as session:  # the write lock, until every submit waits for it
        session.connection()
        for thread in threads:
            thread.start()
        wait_until(lambda: len(server.services.submit_group()._waiting) == len(specs), what="submits queued")
    for thread in threads:
        thread.join(30)
    names = [a.workload.name for a in answers[:7]]  # type: ignore[attr-defined]
    assert names == [*(f"burst-{i}" for i in range(5)), "keyed", "keyed"]
    assert isinstance(answers[7], UnsatisfiableError)
    ids = [a.workload.id for a in answers[:7]]  # type: ignore[attr-defined]
    assert len(set(ids[:6])) == 6 and ids[6] == ids[5]
    created = [a.created for a in answers[:7]]  # type: ignore[attr-defined]
    assert created[:5] == [True] * 5 and sorted(created[5:]) == [False, True]  # the keyed pair: either came first
    assert len([b for b in begins if b.startswith("AnyIO")]) == 1, begins
    with server.client() as admin:
        assert admin.list_workloads(status=[]).total == 1 + 6
        after = _submit_counters(admin)
    assert (after[0] - before[0], after[1] - before[1]) == (1, 8)  # on /metrics: one transaction, eight submits


def _submit_counters(admin: Client) -> tuple[float, float]:
    """/metrics: the single submits' write transactions, and the submits they ran."""
    samples = {sample.name: sample.value for family in text_string_to_metric_families(admin.prometheus_metrics())
               for sample in family.samples}
    return samples["gpupool_submit_transactions_total"], samples["gpupool_submits_in_transactions_total"]


def test_logs_of_a_replica(admin: Client, fake: FakeExecutor) -> None:
    blocker = admin.submit(job("blocker", 4)).workload.id
    wait_until(lambda: status_of(admin, blocker) == "running", what="blocker running")
    waiting = admin.submit(job("waiting", 1)).workload.id
    with pytest.raises(ConflictError, match="has not started yet"):
        list(admin.logs(waiting))
    admin.cancel(blocker)
    fake.script(str(waiting), ScriptedOutcome(logs=("epoch 1", "epoch 2", "done")))
    admin.wait(waiting, timeout_s=10)
    assert list(admin.logs(waiting)) == ["epoch 1", "epoch 2", "done"]
    assert list(admin.logs(waiting, tail=1)) == ["done"]


def test_what_a_submit_read_before_its_transaction_is_checked_again_inside(server: TestServer) -> None:
    """The reads run before the write transaction (`plan_submission`); a key stored meanwhile is replayed,
    and a project whose queue changed meanwhile is planned again inside."""
    services = server.services
    body = schemas.SubmitRequest(spec_yaml=job("raced"), idempotency_key="raced-key")
    spec = workloads.prepare_submission(body)
    with services.db.session(write=False) as session:
        principal = principal_for(session, accounts.user_by_id(session, 1))
        plan = workloads.plan_submission(session, principal, body, spec, services.feasibility)
    assert plan.replay is None
    with server.client() as client:  # another request with the same key commits first
        first = client.submit(job("raced"), idempotency_key="raced-key").workload.id
    with services.db.session() as session:
        row, created = workloads.submit(session, principal, body, time.time(), services.feasibility,
                                        prepared=spec, plan=plan)
        assert (row.id, created) == (first, False)
    stale = replace(plan, queue="gone")  # as if the project's queue were replaced after the plan
    fresh = schemas.SubmitRequest(spec_yaml=job("replanned"))
    with services.db.session() as session:
        row, created = workloads.submit(session, principal, fresh, time.time(), services.feasibility,
                                        prepared=workloads.prepare_submission(fresh), plan=stale)
        assert created and row.queue == plan.queue == "default"
    with services.db.session(write=False) as session:
        named = session.scalars(select(WorkloadRow.id).where(WorkloadRow.name.in_(["raced", "replanned"]))).all()
    assert len(named) == 2  # one each: nothing doubled


def test_a_submit_is_one_write_transaction_besides_its_authentication(server_factory: ServerFactory,
                                                                      fake: FakeExecutor) -> None:
    """A submit by a caller already seen runs two transactions: the body limit's authentication (read-only) and
    one that plans and writes (project, queue and key read inside it; no savepoint); the job is stored once with
    its first event, and a replay of its key answers with it."""
    server = server_factory(executor=fake, workers=False, gpus="4xA100-80GB")  # no worker transaction between
    begins: list[str] = []
    statements: list[str] = []

    def begun(_connection: object) -> None:
        begins.append(threading.current_thread().name)

    def executed(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(statement)

    with server.client() as admin:
        admin.submit(job("warm"))  # the token's first use is recorded, the setup cache filled
        event.listen(Engine, "begin", begun)
        event.listen(Engine, "before_cursor_execute", executed)
        try:
            created = admin.submit(job("once"), idempotency_key="once")
        finally:
            event.remove(Engine, "begin", begun)
            event.remove(Engine, "before_cursor_execute", executed)
        replay = admin.submit(job("once"), idempotency_key="once")
        shown = admin.get_workload(created.workload.id)
    assert len(begins) == 2, begins
    assert not [s for s in statements if "SAVEPOINT" in s.upper()], statements
    assert sum(1 for s in statements if s.lstrip().upper().startswith("INSERT INTO WORKLOADS")) == 1
    assert (created.created, replay.created, replay.workload.id) == (True, False, created.workload.id)
    assert [e.reason for e in shown.events] == ["submitted by admin to queue default"]
