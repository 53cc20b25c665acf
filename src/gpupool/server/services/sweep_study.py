"""The Optuna side of sweeps: where studies live, and a sweep spec's sampler, pruner and distributions.

Studies are stored with Optuna's RDB storage beside gpupool's own tables, never in the same table namespace:
Optuna keeps its schema revision in a table named `alembic_version`, the very table gpupool's migrations use, so
sharing one namespace would make each refuse the other's revision. With PostgreSQL the studies live in the same
database, in the schema `gpupool_sweeps`; with SQLite in the file `<database>-sweeps.db` next to gpupool's file
(a separate file also keeps Optuna's writes from queueing behind the server's own SQLite writer lock).

A study is named `sweep-<workload id>` and remembers a random secret (a study system attribute) from which
each trial's report token is derived (`trial_token`): a trial can report only to its own trial.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, text

from gpupool.domain.sweeps import SweepSpec
from gpupool.optuna_space import load_optuna, pruner, sampler
from gpupool.store.db import normalise_url

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("gpupool.sweeps")
PG_SCHEMA = "gpupool_sweeps"
SQLITE_SUFFIX = "-sweeps.db"
SQLITE_TIMEOUT_S = 30.0  # as long as gpupool's own SQLite busy timeout allows a writer to wait
SECRET_ATTR = "gpupool_secret"
PRUNE_ATTR = "gpupool_prune"  # set on a trial the pruner stopped (the step it was pruned at)
MESSAGE_ATTR = "gpupool_message"  # why a trial was told failed


def study_name(sweep_id: int) -> str:
    """The Optuna study of sweep `sweep_id`."""
    return f"sweep-{sweep_id}"


def trial_key(sweep_id: int, number: int) -> str:
    """The idempotency key of the child job of trial `number`: a replayed submit returns the same job."""
    return f"sweep-{sweep_id}-trial-{number}"


def trial_number(sweep_id: int, key: str | None) -> int | None:
    """The trial number in a child's idempotency key, or None when the key is not one of this sweep's."""
    prefix = f"sweep-{sweep_id}-trial-"
    if key is None or not key.startswith(prefix) or not key[len(prefix):].isdigit():
        return None
    return int(key[len(prefix):])


def trial_token(secret: str, workload_id: int) -> str:
    """The report token of the trial that runs as workload `workload_id` (HMAC-SHA256 of the id)."""
    return hmac.new(secret.encode(), f"trial:{workload_id}".encode(), hashlib.sha256).hexdigest()


class SweepStudies:
    """Opens the Optuna storage on first use (see the module docstring) and the study of each sweep."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self._storage: Any = None
        self._lock = threading.Lock()
        self._secrets: dict[str, str] = {}  # study name -> its secret (set once, never changed)

    def storage(self) -> optuna.storages.RDBStorage:
        """The shared RDBStorage (created, with its tables, on first use; thread-safe)."""
        with self._lock:
            if self._storage is None:
                self._storage = self._open()
            return self._storage

    def _open(self) -> Any:
        optuna = load_optuna()
        url = normalise_url(self.database_url)
        if url.get_backend_name() == "sqlite":
            path = Path(str(url.database)).expanduser()
            target = url.set(database=str(path.with_name(path.stem + SQLITE_SUFFIX)))
            kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "check_same_thread": False}}
        else:
            engine = create_engine(url)
            try:
                with engine.begin() as connection:
                    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {PG_SCHEMA}"))
            finally:
                engine.dispose()
            target = url
            kwargs = {"connect_args": {"options": f"-csearch_path={PG_SCHEMA}"}, "pool_pre_ping": True}
        return optuna.storages.RDBStorage(target.render_as_string(hide_password=False), engine_kwargs=kwargs)

    def study(self, sweep_id: int, spec: SweepSpec, asked: int = 0) -> optuna.Study:
        """The study of the sweep (created with its secret when missing), with a sampler for the next ask."""
        optuna = load_optuna()
        storage = self.storage()
        name = study_name(sweep_id)
        if name not in self._secrets:  # first use in this process: create (or find) the study and its secret
            study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                        direction=spec.direction)
            attrs = storage.get_study_system_attrs(study._study_id)
            if SECRET_ATTR not in attrs:
                storage.set_study_system_attr(study._study_id, SECRET_ATTR, secrets.token_hex(32))
                attrs = storage.get_study_system_attrs(study._study_id)
            with self._lock:
                self._secrets[name] = str(attrs[SECRET_ATTR])
        return optuna.Study(name, storage, sampler=sampler(spec, asked), pruner=pruner(spec))

    def secret(self, study: optuna.Study) -> str:
        """The study's secret (set by `study`, which every caller has used first)."""
        return self._secrets[study.study_name]

    def close(self) -> None:
        """Release the storage's connections (idempotent)."""
        with self._lock:
            if self._storage is not None:
                self._storage.engine.dispose()
                self._storage = None
