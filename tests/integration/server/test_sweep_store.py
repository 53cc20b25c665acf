"""Where sweep studies live: Optuna's RDB storage beside gpupool's tables (SQLite: a sibling file; PostgreSQL:
the schema gpupool_sweeps of the same database), so neither touches the other's `alembic_version`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import inspect, text
from tests.support.databases import fresh_database

from gpupool.domain.specs import parse_spec
from gpupool.domain.sweeps import SweepSpec
from gpupool.optuna_space import distributions
from gpupool.server.services.sweep_study import SweepStudies, trial_key, trial_number, trial_token
from gpupool.store.db import Database

SPEC = {"kind": "sweep", "name": "s", "objective": {"metric": "loss"}, "search": {"x": {"uniform": [0, 1]},
        "k": {"choice": ["a", "b"]}}, "algorithm": {"sampler": "tpe", "seed": 3}, "trials": 4,
        "trial": {"command": "true"}}


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as url:
        yield url


def test_studies_live_beside_gpupool_and_leave_its_migrations_alone(database_url: str) -> None:
    db = Database(database_url)
    db.migrate()
    with db.engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    spec = parse_spec(SPEC)
    assert isinstance(spec, SweepSpec)
    studies = SweepStudies(database_url)
    try:
        study = studies.study(1, spec)
        trial = study.ask(distributions(spec))
        study.tell(trial.number, 0.5)
        again = SweepStudies(database_url).study(1, spec)  # another server process: the same study
        assert [t.value for t in again.trials] == [0.5]
        assert studies.secret(again) == studies.secret(study) and len(studies.secret(study)) == 64
    finally:
        studies.close()
    with db.engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == version
    names = set(inspect(db.engine).get_table_names())
    assert "studies" not in names and "trials" not in names  # not in gpupool's namespace
    db.dispose()


def test_seeded_samplers_draw_new_points_after_a_restart(tmp_path: Path) -> None:
    """The sampler is reseeded with (seed, trials asked), so a restarted server does not repeat its draws."""
    spec = parse_spec(SPEC)
    assert isinstance(spec, SweepSpec)
    url = f"sqlite:///{tmp_path / 'gpupool.db'}"
    drawn = []
    for asked in range(3):
        studies = SweepStudies(url)  # a fresh server each time
        drawn.append(studies.study(7, spec, asked).ask(distributions(spec)).params["x"])
        studies.close()
    assert len(set(drawn)) == 3


def test_trial_keys_and_tokens() -> None:
    assert trial_number(5, trial_key(5, 12)) == 12
    assert trial_number(6, trial_key(5, 12)) is None and trial_number(5, None) is None
    assert trial_number(5, "sweep-5-trial-x") is None
    assert trial_token("s", 1) != trial_token("s", 2) != trial_token("t", 2)
    assert trial_token("s", 1) == trial_token("s", 1)
