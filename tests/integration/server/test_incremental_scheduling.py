"""The scheduling loop's incremental passes over a real store (SQLite and PostgreSQL): the state it keeps
between passes equals a full read whenever it would use it, its decisions and writes equal those of a loop
that reads everything on every pass over random histories, and a pass with nothing new reads no workload,
replica, node or queue row and writes nothing."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, delete, event, select
from tests.integration.server.scheduling_history import apply, random_changes, seed, store_view, submit_row
from tests.support.databases import temporary_postgres_database

from gpupool.scheduler.placement.registry import make_policy
from gpupool.scheduler.placement.resource_fit import BinpackPolicy
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.scheduler.snapshot import ClusterSnapshot
from gpupool.server.workers.scheduling import SchedulingLoop
from gpupool.store import changes
from gpupool.store.db import Database
from gpupool.store.orm import ChangeCounterRow, NodeRow

PROFILE = SchedulerProfile(policy="binpack", preemption=True, backfill=True, min_runtime_s=20.0)
NEVER = 1e12  # a loop built with this never falls back to its periodic full read: only the sequence decides


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ports(_node: str, count: int) -> list[int]:
    return list(range(40000, 40000 + count))


def _databases(kind: str, tmp_path: Path, count: int) -> Iterator[list[Database]]:
    if kind == "sqlite":
        dbs = [Database(f"sqlite:///{tmp_path / f'pool{k}.db'}") for k in range(count)]
        for db in dbs:
            seed(db)
        yield dbs
        for db in dbs:
            db.dispose()
        return
    with temporary_postgres_database() as first, temporary_postgres_database() as second:
        dbs = [Database(url) for url in (first, second)[:count]]
        for db in dbs:
            seed(db)
        yield dbs
        for db in dbs:
            db.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def twins(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Database]]:
    yield from _databases(request.param, tmp_path, 2)


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    for dbs in _databases(request.param, tmp_path, 1):
        yield dbs[0]


def loop(db: Database, clock: Clock, full_rebuild_s: float, policy: str = "binpack") -> SchedulingLoop:
    chosen = BinpackPolicy() if policy == "binpack" else make_policy(policy)
    return SchedulingLoop(db, clock, PROFILE, ports, policy=chosen, full_rebuild_s=full_rebuild_s)


def _sequence(db: Database) -> int | None:
    with db.session(write=False) as session:
        return changes.current(session)


@pytest.mark.parametrize(("seed_value", "policy"), [(1, "binpack"), (2, "binpack"), (3, "fgd"), (4, "random")])
def test_incremental_state_and_decisions_equal_a_full_rebuild_over_random_histories(
        twins: list[Database], seed_value: int, policy: str) -> None:
    """fgd learns the workload mix from what is submitted; random draws from its generator in every cycle
    (so its loop never skips one)."""
    rng, clock = random.Random(seed_value), Clock()
    incremental, rebuilding = loop(twins[0], clock, NEVER, policy), loop(twins[1], clock, 0.0, policy)
    passes = 120
    for _ in range(passes):
        clock.now += rng.choice([0.0, 1.0, 5.0, 15.0, 40.0])
        apply(twins, random_changes(rng), clock.now)
        kept = incremental.kept_state()
        if kept is not None and _sequence(twins[0]) == kept.seq:  # the next step uses the kept state
            assert kept.state == incremental.read_state()
        assert incremental.step() == rebuilding.step()
        assert store_view(twins[0]) == store_view(twins[1])
    # the incremental path was taken: passes without a read, and passes without a cycle
    assert rebuilding.full_reads == passes
    assert incremental.full_reads < passes * 0.8
    assert (incremental.skipped_cycles == 0) if policy == "random" else (incremental.skipped_cycles > 0)


@pytest.mark.parametrize(("seed_value", "policy"), [(5, "fgd"), (6, "fgd"), (7, "binpack")])
def test_a_copied_empty_snapshot_decides_as_one_built_anew_over_random_histories(
        twins: list[Database], seed_value: int, policy: str) -> None:
    """A step starts from a copy of the empty snapshot it kept (its nodes unchanged), and fgd keeps its tables
    across steps then; a twin loop that builds every snapshot anew decides the same in every step (node edits,
    submits, ends and cancels in between)."""
    rng, clock = random.Random(seed_value), Clock()
    copying, building = loop(twins[0], clock, NEVER, policy), loop(twins[1], clock, NEVER, policy)
    built = [0]

    def anew(nodes: Any) -> ClusterSnapshot:
        built[0] += 1
        return ClusterSnapshot(nodes)

    building._snapshot_of = anew  # type: ignore[method-assign]
    copied = []
    for _ in range(120):
        clock.now += rng.choice([0.0, 1.0, 5.0, 15.0, 40.0])
        apply(twins, random_changes(rng), clock.now)
        before = copying._empty_snapshot
        assert copying.step() == building.step()
        copied.append(before is not None and copying._empty_snapshot is before)
        assert store_view(twins[0]) == store_view(twins[1])
    assert built[0] > 20 and sum(copied) > 10 and not all(copied), (built, sum(copied))


@pytest.mark.parametrize(("seed_value", "policy"), [(8, "binpack"), (9, "fgd")])
def test_kept_views_of_waiting_workloads_decide_as_views_made_anew_over_random_histories(
        twins: list[Database], seed_value: int, policy: str) -> None:
    """A read keeps a waiting workload's scheduler view while its spec, queue, submit time, nomination and
    fair-share preemptors are the same; a twin loop that makes every view anew on every read decides the same
    in every step, and the kept views are the ones a fresh read would make (submits, ends, cancels,
    preemptions, node and queue edits in between; both loops read everything on every step)."""
    rng, clock = random.Random(seed_value), Clock()
    keeping, making = loop(twins[0], clock, 0.0, policy), loop(twins[1], clock, 0.0, policy)
    reused = 0
    for _ in range(120):
        clock.now += rng.choice([0.0, 1.0, 5.0, 15.0, 40.0])
        apply(twins, random_changes(rng), clock.now)
        before = {k: view[2] for k, view in keeping._pending_cache.items()}
        making._pending_cache = {}
        assert keeping.step() == making.step()
        assert store_view(twins[0]) == store_view(twins[1])
        after = keeping._pending_cache
        reused += sum(1 for k, view in after.items() if before.get(k) is view[2])
        assert {k: view[2] for k, view in after.items()} == {k: view[2] for k, view in making._pending_cache.items()}
    assert reused > 50, reused


def test_a_bind_on_a_node_whose_cards_changed_after_the_read_waits_for_the_next_pass(database: Database) -> None:
    """The cards' version is checked (its row locked) before the binds are written: a node whose GPUs changed
    since the step read the pool gets no bind from that step; the next step reads the change and binds."""
    clock = Clock()
    with database.session() as session:
        session.add(submit_row(1, {"kind": "job", "name": "j", "command": "x",
                                   "resources": {"cpu": 1, "memory": "1GiB", "gpu": 4}}, clock.now))
    scheduler = loop(database, clock, NEVER)
    read = scheduler._state

    def read_then_cards_change(now: float) -> Any:
        found = read(now)
        with database.session() as session:  # e.g. an admin's MIG or sharing change on every node
            for node in session.scalars(select(NodeRow)):
                node.gpus_version += 1
        return found

    scheduler._state = read_then_cards_change  # type: ignore[method-assign]
    first = scheduler.step()
    assert len(first.binds) == 1 and store_view(database)[0][1] == "pending", store_view(database)
    scheduler._state = read  # type: ignore[method-assign]
    second = scheduler.step()
    assert len(second.binds) == 1 and store_view(database)[0][1] == "scheduled", store_view(database)


def _quiet(db: Database, clock: Clock) -> SchedulingLoop:
    """A loop over 7 one-GPU jobs running on the 8 GPUs and 3 four-GPU jobs waiting (no max_runtime: no
    reservation can be made), stepped until its decisions stand."""
    with db.session() as session:
        for k in range(10):
            gpu = 1 if k < 7 else 4
            session.add(submit_row(1, {"kind": "job", "name": f"j{k}", "command": "x",
                                       "resources": {"cpu": 1, "memory": "1GiB", "gpu": gpu}}, clock.now + k))
    clock.now += 10
    scheduler = loop(db, clock, NEVER)
    for _ in range(3):
        scheduler.step()
    clock.now += PROFILE.min_runtime_s + 1  # past every minimum run time
    scheduler.step()  # a full read (its own writes changed the sequence), then nothing new
    return scheduler


def test_a_pass_with_nothing_new_reads_one_row_and_writes_nothing(database: Database) -> None:
    clock = Clock()
    scheduler = _quiet(database, clock)
    before, decided = store_view(database), scheduler.last_decisions
    assert decided is not None and len(decided.pending) == 3 and not decided.binds
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    skipped = scheduler.skipped_cycles
    event.listen(Engine, "before_cursor_execute", record)
    try:
        clock.now += 5.0
        decisions = scheduler.step()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert decisions == decided and scheduler.skipped_cycles == skipped + 1
    queries = [s for s in statements if s.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK")]
    assert len(queries) == 1 and "change_counter" in queries[0], queries
    assert not any(s.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE")) for s in statements)
    assert store_view(database) == before


def test_several_submits_together_are_handled_in_one_pass(database: Database) -> None:
    clock = Clock()
    scheduler = _quiet(database, clock)
    reads = scheduler.full_reads
    with database.session() as session:
        rows = [submit_row(2, {"kind": "job", "name": f"new{k}", "command": "x",
                               "resources": {"cpu": 1, "memory": "1GiB", "gpu": 1}}, clock.now) for k in range(3)]
        session.add_all(rows)
    decisions = scheduler.step()
    ids = {str(r.id) for r in rows}
    # one GPU was free: one of the three is bound, the other two wait with a reason, all in this one pass
    assert len(ids & set(decisions.bound())) == 1
    assert len(ids & set(decisions.pending_by_id())) == 2
    assert scheduler.full_reads == reads + 1


def test_a_pass_after_a_change_reads_only_the_specs_it_has_not_parsed(database: Database) -> None:
    """A waiting or running workload's spec never changes: a full read after a change reads the spec of the new
    workloads only, and the decisions equal a fresh loop's, which reads them all."""
    clock = Clock()
    scheduler = _quiet(database, clock)
    specs_read: list[set[int]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if "workloads.spec" in statement:  # the ids it names: positional (SQLite) or named (PostgreSQL)
            values = parameters.values() if isinstance(parameters, dict) else parameters
            specs_read.append({v for v in values if isinstance(v, int)})

    with database.session() as session:
        row = submit_row(2, {"kind": "job", "name": "new", "command": "x",
                             "resources": {"cpu": 1, "memory": "1GiB", "gpu": 1}}, clock.now)
        session.add(row)
    event.listen(Engine, "before_cursor_execute", record)
    try:
        decisions = scheduler.step()
    finally:
        event.remove(Engine, "before_cursor_execute", record)
    assert specs_read and all(ids == {row.id} for ids in specs_read), specs_read  # the new one's, to bind it
    fresh = loop(database, clock, NEVER)
    assert fresh.read_state().pending == scheduler.read_state().pending
    assert str(row.id) in decisions.bound() or str(row.id) in decisions.pending_by_id()


def test_an_untracked_column_changes_nothing_and_the_periodic_rebuild_still_reads(database: Database) -> None:
    clock = Clock()
    scheduler = _quiet(database, clock)
    kept = scheduler.kept_state()
    assert kept is not None
    with database.session() as session:  # the heartbeat is not read by the scheduler
        node = session.get(NodeRow, "n1")
        assert node is not None
        node.heartbeat_at = clock.now
    assert _sequence(database) == kept.seq
    scheduler.full_rebuild_s = 30.0
    clock.now += 31.0
    reads = scheduler.full_reads
    scheduler.step()
    assert scheduler.full_reads == reads + 1  # the safety net: a full read after 30 s whatever the sequence


def test_a_failed_pass_drops_the_kept_state(database: Database) -> None:
    clock = Clock()
    failures = [RuntimeError("the reconciler could not be woken")]

    def wake() -> None:
        if failures:
            raise failures.pop()

    scheduler = SchedulingLoop(database, clock, PROFILE, ports, on_change=wake, policy=BinpackPolicy(),
                               full_rebuild_s=NEVER)
    with database.session() as session:
        session.add(submit_row(1, {"kind": "job", "name": "j", "command": "x",
                                   "resources": {"cpu": 1, "memory": "1GiB", "gpu": 1}}, clock.now))
    with pytest.raises(RuntimeError):
        scheduler.step()  # bound and written, then the wake failed
    assert scheduler.kept_state() is None
    reads = scheduler.full_reads
    scheduler.step()
    assert scheduler.full_reads == reads + 1


def test_without_the_counter_row_every_pass_reads_everything(database: Database) -> None:
    clock = Clock()
    scheduler = _quiet(database, clock)
    with database.session() as session:
        session.execute(delete(ChangeCounterRow))
    reads = scheduler.full_reads
    scheduler.step()
    scheduler.step()
    assert scheduler.full_reads == reads + 2 and scheduler.kept_state() is None
