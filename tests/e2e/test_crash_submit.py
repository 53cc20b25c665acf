"""kill -9 of a real `gpupool up` while it accepts a 3,000-task array or a 100-job batch, at moments drawn at
random (from a fixed seed) from 0 to 1.5 times what the same request took uninterrupted. After a restart
the array (its row, every task, every task's `submitted` event) or the batch (every job) exists exactly once
or not at all, and a retry with the same idempotency key (keys) answers the ids that are stored, creating
nothing twice."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.engine import Engine
from tests.e2e.conftest import StartServer
from tests.support.databases import temporary_postgres_database
from tests.support.processes import ServerProcess

from gpupool.client.http import Client
from gpupool.store.orm import EventRow, WorkloadRow

pytestmark = pytest.mark.slow  # a few minutes: each kill costs a restart of the server

TASKS = 3000  # an array the server accepts in about half a second here: a kill lands inside it often
BATCH = 100  # jobs in one batch request: one transaction long enough to be hit (several seconds here)
ROUNDS = 4  # kills per kind of request and database: each costs a restart (a few seconds)
CLIENT_TIMEOUT_S = 180  # a 100-job batch took over 30 s on PostgreSQL on a loaded 2-core machine
SEED = 20261204  # fixed: a failure is reproduced by running the test again
# Everything asks for the node's only CPU: one job or task runs, the rest wait (no thousand processes).
ARRAY = "name: {name}\narray: 0-{last}\ncommand: sleep 600\nresources: {{cpu: 1, memory: 64MiB}}\n"
JOB = "name: {name}\ncommand: sleep 600\nresources: {{cpu: 1, memory: 64MiB}}\n"


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database for the server (SQLite in the test's directory, or a scratch PostgreSQL).
    Tests ask for it before `start_server`, so that their servers stop before the database is dropped."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'crash.db'}"
        return
    with temporary_postgres_database() as url:
        yield url


def test_a_killed_array_submit_leaves_the_whole_array_once_or_nothing(database: str,
                                                                      start_server: StartServer) -> None:
    server = start_server("--cpus", "1", "--memory", "4GiB", env={"GPUPOOL_DATABASE_URL": database})
    engine = create_engine(database)
    draw = random.Random(SEED)
    outcomes = []
    try:
        took = _timed(server, lambda c: c.submit(ARRAY.format(name="warm", last=TASKS - 1)))
        for round_no in range(ROUNDS):
            name, key = f"arr{round_no}", f"array-key-{round_no}"
            spec = ARRAY.format(name=name, last=TASKS - 1)
            delay = _moment(draw, round_no, took)
            answered = _submit_then_kill(server, lambda c, s=spec, k=key: c.submit(s, idempotency_key=k).workload.id,
                                         delay)
            server.start()
            stored = _arrays_named(engine, name)
            assert len(stored) <= 1, f"round {round_no}: the array is stored {len(stored)} times"
            if answered is not None:  # the answer came back: it was committed
                assert stored == [answered]
            with _client(server) as client:
                again = client.submit(spec, idempotency_key=key)
            assert again.created == (not stored) and (not stored or again.workload.id == stored[0])
            assert _arrays_named(engine, name) == [again.workload.id]
            assert _task_rows(engine, again.workload.id) == (TASKS, TASKS, TASKS)  # rows, indices, events
            result = "answered" if answered is not None else "stored" if stored else "nothing"
            outcomes.append(f"killed {delay:.2f} s into a {took:.2f} s request: {result}")
    finally:
        engine.dispose()
    print(f"array submits killed: {outcomes}")


def test_a_killed_batch_submit_leaves_the_whole_batch_once_or_nothing(database: str,
                                                                      start_server: StartServer) -> None:
    server = start_server("--cpus", "1", "--memory", "4GiB", env={"GPUPOOL_DATABASE_URL": database})
    engine = create_engine(database)
    draw = random.Random(SEED + 1)
    outcomes = []
    try:
        took = _timed(server, lambda c: c.submit_batch([JOB.format(name=f"warm-{i}") for i in range(BATCH)]))
        for round_no in range(ROUNDS):
            names = [f"b{round_no}-{i}" for i in range(BATCH)]
            keys = [f"batch-key-{round_no}-{i}" for i in range(BATCH)]
            specs = [JOB.format(name=n) for n in names]
            delay = _moment(draw, round_no, took)
            answered = _submit_then_kill(
                server, lambda c, s=specs, k=keys: [i.workload.id for i in c.submit_batch(s, idempotency_keys=k).items],
                delay)
            server.start()
            stored = _ids_by_name(engine, f"b{round_no}-")
            assert len(stored) in (0, BATCH), f"round {round_no}: {len(stored)} of {BATCH} jobs stored"
            assert sum(len(ids) for ids in stored.values()) == len(stored), f"round {round_no}: a job stored twice"
            if answered is not None:
                assert [stored[n] for n in names] == [[i] for i in answered]
            with _client(server) as client:
                again = client.submit_batch(specs, idempotency_keys=keys).items
            assert {i.created for i in again} == {not stored}
            after = _ids_by_name(engine, f"b{round_no}-")
            assert [after[n] for n in names] == [[i.workload.id] for i in again]
            if stored:
                assert after == stored
            result = "answered" if answered is not None else "stored" if stored else "nothing"
            outcomes.append(f"killed {delay:.2f} s into a {took:.2f} s request: {result}")
    finally:
        engine.dispose()
    print(f"batch submits killed: {outcomes}")


def _client(server: ServerProcess) -> Client:
    """A client that waits long enough for a batch on a loaded machine (the default 30 s is not, on PostgreSQL
    right after a restart)."""
    return Client(server.url, (server.home / "token").read_text().strip(), timeout_s=CLIENT_TIMEOUT_S)


def _moment(draw: random.Random, round_no: int, took: float) -> float:
    """When to kill in round `round_no`: a random moment in its share of 0 to 1.5 times `took` (the rounds
    cover the request from its start to past its answer; 1.5: a request after a restart runs slower)."""
    share = 1.5 * took / ROUNDS
    return share * (round_no + draw.random())


def _timed(server: ServerProcess, send: Any) -> float:
    """Seconds `send(client)` takes from the start of the request to the answer (a client made beforehand)."""
    with _client(server) as client:
        client.health()
        began = time.monotonic()
        send(client)
        return time.monotonic() - began


def _submit_then_kill(server: ServerProcess, send: Any, delay_s: float) -> Any:
    """Start `send(client)` in a thread, SIGKILL the server `delay_s` later, and return what `send` answered
    (None when the kill came first and the request failed)."""
    answer: list[Any] = []
    with _client(server) as client:
        client.health()  # connected and warm: the delay counts from the request, as `_timed` measured it

        def request() -> None:
            try:
                answer.append(send(client))
            except Exception:  # the connection dies with the server: that is the point
                answer.append(None)

        thread = threading.Thread(target=request)
        thread.start()
        time.sleep(delay_s)
        server.kill()
        thread.join(60)
    assert not thread.is_alive(), "the request outlived the server"
    return answer[0]


def _arrays_named(engine: Engine, name: str) -> list[int]:
    with engine.connect() as conn:
        return sorted(conn.scalars(select(WorkloadRow.id).where(WorkloadRow.name == name,
                                                                WorkloadRow.kind == "array")).all())


def _task_rows(engine: Engine, array_id: int) -> tuple[int, int, int]:
    """How many task rows the array has, how many distinct indices, and how many `submitted` events."""
    tasks = select(WorkloadRow.id).where(WorkloadRow.parent_id == array_id)
    with engine.connect() as conn:
        rows = conn.scalar(select(func.count()).select_from(tasks.subquery())) or 0
        indices = conn.scalar(select(func.count(func.distinct(WorkloadRow.array_index)))
                              .where(WorkloadRow.parent_id == array_id)) or 0
        events = conn.scalar(select(func.count(EventRow.id)).where(EventRow.workload_id.in_(tasks),
                                                                   EventRow.reason.endswith("submitted with it"))) or 0
    return int(rows), int(indices), int(events)


def _ids_by_name(engine: Engine, prefix: str) -> dict[str, list[int]]:
    with engine.connect() as conn:
        found = conn.execute(select(WorkloadRow.name, WorkloadRow.id).where(WorkloadRow.name.startswith(prefix))
                             .order_by(WorkloadRow.id)).all()
    out: dict[str, list[int]] = {}
    for name, wid in found:
        out.setdefault(name, []).append(int(wid))
    return out
