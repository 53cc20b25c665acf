"""The sweep controller: drives each sweep's Optuna study with ordinary child jobs.

One pass (level-triggered, so a restart at any point is harmless), for every sweep that is not over or still
has live trials:
1. tell: a trial whose job ended is told to Optuna: complete with the last value it reported for the
   objective, pruned when the pruner stopped it, failed otherwise (its job's own `retries` re-ran it first;
   a preempted job is requeued by its lifecycle and simply goes on);
2. prune: a trial the pruner flagged (see `services.sweeps.report`) has its job cancelled, which stops its
   processes;
3. repair: a running trial without a job (the server died between asking Optuna and submitting) gets its
   job, with the same idempotency key, so it is never submitted twice; parameters it lacks (the server died
   inside the ask, which stores the trial and then each parameter) are drawn first;
4. ask: while fewer than `parallel` trials run and fewer than `trials` were asked, ask Optuna for one more
   (stored first) and submit its job;
5. status: pending -> running at the first trial; succeeded when every trial ended and one completed,
   failed when none did; a stopped (cancelled) sweep has its remaining trials cancelled and told failed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from gpupool.domain.errors import GpupoolError
from gpupool.domain.lifecycle import set_controller_status
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.domain.sweeps import SweepSpec
from gpupool.optuna_space import distributions, load_optuna
from gpupool.server.api import schemas
from gpupool.server.services import workloads as workload_service
from gpupool.server.services.auth import principal_for
from gpupool.server.services.feasibility import FeasibilityCache
from gpupool.server.services.sweep_study import (
    MESSAGE_ATTR,
    PRUNE_ATTR,
    SweepStudies,
    trial_key,
    trial_number,
)
from gpupool.store.db import Database
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.sweeps")
_S = WorkloadStatus
# A pass reads each active study; trials run for seconds to hours, so a pass every half second adds little to
# a trial's start, and the reconciler wakes the controller as soon as a job ends or changes status.
SWEEP_INTERVAL_S = 0.5


@dataclass
class _Trial:
    number: int
    state: str  # Optuna's TrialState name
    params: dict[str, Any]
    last: tuple[int, float] | None  # last (step, value) reported
    prune_step: int | None
    child: WorkloadRow | None
    told: bool = False  # told to Optuna during this pass


class SweepController:
    """Runs the passes described in the module docstring; `step()` does one."""

    def __init__(self, db: Database, clock: Callable[[], float], studies: SweepStudies,
                 feasibility: FeasibilityCache, on_change: Callable[[], None] = lambda: None) -> None:
        self.db = db
        self.clock = clock
        self.studies = studies
        self.feasibility = feasibility
        self.on_change = on_change

    def step(self) -> None:
        """One pass over every sweep that needs one."""
        with self.db.session(write=False) as session:
            ids = _sweeps_to_drive(session)
        changed = False
        for sweep_id in ids:
            try:
                changed = self.drive(sweep_id) or changed
            except GpupoolError as exc:
                log.error("sweep %s: %s", sweep_id, exc)
            except Exception:  # one sweep's trouble (e.g. its study's database) must not stall the others
                log.exception("sweep %s: the controller pass failed; it runs again next pass", sweep_id)
        if changed:
            self.on_change()

    def drive(self, sweep_id: int) -> bool:
        """One pass over one sweep; True when a job was submitted or cancelled."""
        with self.db.session(write=False) as session:
            row = repo.workload_by_id(session, sweep_id)
            if row is None:
                return False
            spec = parse_spec(row.spec)
            children = _children(session, sweep_id)
            status = row.current_status
        if not isinstance(spec, SweepSpec):
            return False
        study = self.studies.study(sweep_id, spec)
        trials = _trials(study, sweep_id, children, spec.metric)
        if status.is_terminal():
            return self._wind_down(sweep_id, study, trials)
        changed = self._tell_and_prune(sweep_id, study, trials)
        running = [t for t in trials if t.state == "RUNNING" and not t.told]
        for trial in running:
            if trial.child is None:
                params = trial.params if trial.params.keys() >= distributions(spec).keys() else \
                    self._draw_missing(sweep_id, spec, trial.number)
                changed = self._submit(sweep_id, spec, trial.number, params) or changed
        asked = len(trials)
        while len(running) < spec.parallel and asked < spec.trials:
            study = self.studies.study(sweep_id, spec, asked)
            new = study.ask(distributions(spec))
            asked += 1
            running.append(_Trial(new.number, "RUNNING", dict(new.params), None, None, None))
            changed = self._submit(sweep_id, spec, new.number, dict(new.params)) or changed
        self._update_status(sweep_id, study, spec, asked, bool(running))
        return changed

    # ------------------------------------------------------------------------------------- steps
    def _tell_and_prune(self, sweep_id: int, study: Any, trials: list[_Trial]) -> bool:
        changed = False
        for trial in trials:
            if trial.state != "RUNNING" or trial.child is None:
                continue
            child_status = trial.child.current_status
            if child_status.is_terminal():
                _tell(study, trial, child_status)
            elif trial.prune_step is not None:
                changed = self._cancel(trial.child.id, f"pruned at step {trial.prune_step}") or changed
        return changed

    def _wind_down(self, sweep_id: int, study: Any, trials: list[_Trial]) -> bool:
        """A stopped or finished sweep: running trials are told failed first, then their jobs cancelled."""
        optuna_state = _trial_state()
        for trial in trials:
            if trial.state == "RUNNING":
                if trial.child is not None and trial.child.current_status.is_terminal():
                    _tell(study, trial, trial.child.current_status)
                else:
                    study._storage.set_trial_system_attr(_trial_id(study, trial.number), MESSAGE_ATTR,
                                                         "the sweep was stopped")
                    study.tell(trial.number, state=optuna_state.FAIL)
        changed = False
        for trial in trials:
            if trial.child is not None and not trial.child.current_status.is_terminal():
                changed = self._cancel(trial.child.id, "its sweep was stopped") or changed
        return changed

    def _draw_missing(self, sweep_id: int, spec: SweepSpec, number: int) -> dict[str, Any]:
        """The parameters of running trial `number`, drawing those it lacks: Optuna's ask stores a new trial, then
        each parameter in a write of its own, so a server killed in between leaves a running trial with some
        or none. Suggesting a parameter the trial has returns its stored value; the others are drawn by the
        sampler the ask used (seeded with the trials asked before it)."""
        optuna = load_optuna()
        study = self.studies.study(sweep_id, spec, number)
        study.get_trials(deepcopy=False)  # a new study object's storage cache learns the trial (writes need it)
        trial = optuna.trial.Trial(study, _trial_id(study, number))
        for name, dist in distributions(spec).items():
            if isinstance(dist, optuna.distributions.CategoricalDistribution):
                trial.suggest_categorical(name, dist.choices)
            elif isinstance(dist, optuna.distributions.IntDistribution):
                trial.suggest_int(name, dist.low, dist.high, log=dist.log)
            else:
                trial.suggest_float(name, dist.low, dist.high, log=dist.log)
        log.info("sweep %s: trial %s had lost parameters to a stop of the server; drawn again", sweep_id, number)
        return dict(trial.params)

    def _submit(self, sweep_id: int, spec: SweepSpec, number: int, params: dict[str, Any]) -> bool:
        try:
            body = schemas.SubmitRequest(spec=spec.trial_spec(number, params),
                                         idempotency_key=trial_key(sweep_id, number))
            with self.db.session() as session:
                owner = repo.workload_by_id(session, sweep_id)
                user = accounts.user_by_id(session, owner.user_id) if owner is not None else None
                if user is None:
                    return False
                principal = principal_for(session, user)
                child, created = workload_service.submit(session, principal, body, self.clock(), self.feasibility,
                                                         parent_id=sweep_id)
                if created:
                    repo.add_event(session, sweep_id, self.clock(), f"trial {number} submitted as workload "
                                   f"{child.id}")
            return created
        except GpupoolError as exc:  # e.g. the owner lost the project: the trial fails, the sweep goes on
            log.warning("sweep %s: trial %s could not be submitted: %s", sweep_id, number, exc)
            study = self.studies.study(sweep_id, spec)
            study._storage.set_trial_system_attr(_trial_id(study, number), MESSAGE_ATTR, f"not submitted: {exc}")
            study.tell(number, state=_trial_state().FAIL)
            return False

    def _cancel(self, workload_id: int, reason: str) -> bool:
        with self.db.session() as session:
            row = repo.workload_by_id(session, workload_id, for_update=True)
            if row is None or row.current_status.is_terminal():
                return False
            transition(row, _S.CANCELLED, reason, self.clock())
            workload_service.request_stop(session, row, self.clock())
        return True

    def _update_status(self, sweep_id: int, study: Any, spec: SweepSpec, asked: int, running: bool) -> None:
        now = self.clock()
        with self.db.session() as session:
            row = repo.workload_by_id(session, sweep_id, for_update=True)
            if row is None or row.current_status.is_terminal():
                return
            first = "the sweep's first trial was submitted"
            if asked:
                set_controller_status(row, _S.RUNNING, f"running up to {spec.parallel} trial(s) at once", now,
                                      start_reason=first)
            if asked >= spec.trials and not running:
                states = [t.state.name for t in study.get_trials(deepcopy=False)]
                done = states.count("COMPLETE")
                if done and all(s != "RUNNING" for s in states):
                    set_controller_status(row, _S.SUCCEEDED, f"{len(states)} trials ended, {done} completed", now,
                                          start_reason=first)
                elif all(s != "RUNNING" for s in states):
                    set_controller_status(row, _S.FAILED, f"none of the {len(states)} trials completed", now,
                                          start_reason=first)


# ------------------------------------------------------------------------------------- helpers
def _trial_state() -> Any:
    from optuna.trial import TrialState  # noqa: PLC0415  (Optuna loads on first use)

    return TrialState


def _trial_id(study: Any, number: int) -> int:
    return int(study._storage.get_trial_id_from_study_id_trial_number(study._study_id, number))


def _tell(study: Any, trial: _Trial, child_status: WorkloadStatus) -> None:
    """Tell Optuna how the trial's job ended (see the module docstring)."""
    state = _trial_state()
    storage, tid = study._storage, _trial_id(study, trial.number)
    if trial.prune_step is not None:
        study.tell(trial.number, state=state.PRUNED)
    elif child_status == _S.SUCCEEDED and trial.last is not None:
        study.tell(trial.number, trial.last[1])
    else:
        why = "its job succeeded without reporting the objective" if child_status == _S.SUCCEEDED \
            else f"its job ended {child_status.value}"
        storage.set_trial_system_attr(tid, MESSAGE_ATTR, why)
        study.tell(trial.number, state=state.FAIL)
    trial.told = True


def _trials(study: Any, sweep_id: int, children: dict[int, WorkloadRow], metric: str) -> list[_Trial]:
    out = []
    for t in study.get_trials(deepcopy=False):
        values = t.intermediate_values  # up to 10**9 steps: the last one without sorting them all
        last = (max(values), values[max(values)]) if values else None
        prune = t.system_attrs.get(PRUNE_ATTR)
        out.append(_Trial(t.number, t.state.name, dict(t.params), last,
                          int(prune) if prune is not None else None, children.get(t.number)))
    return out


def _children(session: Session, sweep_id: int) -> dict[int, WorkloadRow]:
    rows = session.scalars(select(WorkloadRow).where(WorkloadRow.parent_id == sweep_id)).all()
    out = {}
    for row in rows:
        number = trial_number(sweep_id, row.idempotency_key)
        if number is not None:
            session.expunge(row)
            out[number] = row
    return out


def _sweeps_to_drive(session: Session) -> list[int]:
    """Sweeps not over, and ended sweeps that still have a live trial job (to stop it)."""
    active = [_S.PENDING.value, _S.SCHEDULED.value, _S.STARTING.value, _S.RUNNING.value]
    ids = set(session.scalars(select(WorkloadRow.id).where(WorkloadRow.kind == "sweep",
                                                           WorkloadRow.status.in_(active))).all())
    parent = WorkloadRow.__table__.alias("parent")
    live_children = select(WorkloadRow.parent_id).join(parent, parent.c.id == WorkloadRow.parent_id).where(
        parent.c.kind == "sweep", parent.c.status.not_in(active), WorkloadRow.status.in_(
            [*active, _S.PREEMPTED.value]))
    ids |= {i for i in session.scalars(live_children).all() if i is not None}
    return sorted(ids)
