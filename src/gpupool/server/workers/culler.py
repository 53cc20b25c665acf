"""The notebook culler: stops notebooks that stayed idle longer than their idle timeout, freeing their GPU.

Each pass (every `notebook_cull_interval_s`) reads the running notebooks whose Jupyter is ready, asks each
Jupyter for `/api/status` and `/api/kernels` (two reads that do not count as activity), and applies the pure
rule of `gpupool.domain.notebooks.cull_decision`: a warning event once per run when culling is near, then
`stopped` with "culled after <t> idle" (only a run already warned about: a pass that comes late warns and
culls on the next one). Level-triggered: Jupyter keeps the activity times, so a restarted
server reaches the same decision; a notebook that changed run or status meanwhile is left alone
(`services.notebooks.cull` checks under the row lock). The latest figures per notebook are kept for
`gpupool notebook ls` (idle for, culls in).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from gpupool.domain.errors import GpupoolError
from gpupool.domain.notebooks import IDLE_OFF, CullDecision, cull_decision, cull_warning_text, parse_activity
from gpupool.domain.status import WorkloadStatus
from gpupool.server.endpoints import stored_endpoints
from gpupool.server.notebook_keys import NotebookKeys
from gpupool.server.services import notebooks
from gpupool.store.db import Database
from gpupool.store.repos import workloads as repo

log = logging.getLogger("gpupool.culler")
# Two small JSON reads from a Jupyter on this host or the LAN answer in milliseconds; 5 s tolerates a
# notebook whose kernel hogs the CPU without letting one hung server stall the pass for long.
REQUEST_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class _Running:
    workload_id: int
    attempt: int
    host: str
    port: int
    running_since: float
    timeout_s: int
    capped: bool = False  # the project's cap shortened the notebook's own (or the default) timeout


class NotebookCuller:
    """Culls idle notebooks (see the module docstring); `step()` does one pass. `latest` maps a running
    notebook's id to the last decision (idle for, culls in)."""

    def __init__(self, db: Database, clock: Callable[[], float], keys: NotebookKeys, default_timeout: str,
                 on_change: Callable[[], None] = lambda: None,
                 http: Callable[[str, dict[str, str]], Any] | None = None, interval_s: float = 30.0) -> None:
        self.db = db
        self.interval_s = interval_s
        self.clock = clock
        self.keys = keys
        self.default_timeout = default_timeout
        self.on_change = on_change
        self.latest: dict[int, CullDecision] = {}
        self._warned: set[tuple[int, int]] = set()
        self._http = http or _get_json

    def step(self) -> None:
        """One pass: look at every ready notebook, warn or cull as the rule says."""
        running = self._running()
        decisions: dict[int, CullDecision] = {}
        for notebook in running:
            decision = self._look(notebook)
            if decision is not None:
                decisions[notebook.workload_id] = decision
        self.latest = decisions
        self._warned &= {(n.workload_id, n.attempt) for n in running}
        culled = False
        for notebook in running:
            decision = decisions.get(notebook.workload_id)
            if decision is not None:
                culled = self._act(notebook, decision) or culled
        if culled:
            self.on_change()

    def _running(self) -> list[_Running]:
        with self.db.session(write=False) as session:
            rows = [r for r in repo.workloads_in(session, [WorkloadStatus.RUNNING.value]) if r.kind == notebooks.KIND]
            runs = repo.current_replicas(session, rows)
            caps = notebooks.idle_caps(session)
            out = []
            for row in rows:
                endpoint = next((e for r in runs[row.id] if r.number == 0 for e in stored_endpoints(r.endpoints)
                                 if e.ready and e.host), None)
                if endpoint is None or endpoint.host is None:
                    continue
                try:
                    own = notebooks.idle_timeout_of(row.spec, self.default_timeout)
                    timeout = notebooks.idle_timeout_of(row.spec, self.default_timeout, caps.get(row.project_id))
                except GpupoolError:
                    own = timeout = IDLE_OFF
                out.append(_Running(row.id, row.attempt, endpoint.host, endpoint.port,
                                    row.started_at or row.updated_at, timeout, capped=timeout != own))
        return out

    def _look(self, notebook: _Running) -> CullDecision | None:
        base = f"http://{notebook.host}:{notebook.port}/notebooks/{notebook.workload_id}/api"
        headers = {"Authorization": f"token {self.keys.jupyter_token(notebook.workload_id, notebook.attempt)}"}
        try:
            activity = parse_activity(self._http(f"{base}/status", headers), self._http(f"{base}/kernels", headers))
        except (httpx.HTTPError, ValueError, GpupoolError) as exc:
            log.debug("notebook %s: no activity figures (%s)", notebook.workload_id, exc)
            return None
        return cull_decision(activity, notebook.running_since, notebook.timeout_s, self.clock())

    def _act(self, notebook: _Running, decision: CullDecision) -> bool:
        """Warn once per run when culling is near, and cull only a run already warned about (a culler that
        looked late warns now and culls on its next pass), so the warning always comes first."""
        key = (notebook.workload_id, notebook.attempt)
        now = self.clock()
        if not (decision.warn or decision.cull) or decision.idle_for_s is None or decision.culls_in_s is None:
            return False
        if key not in self._warned:
            self._warned.add(key)
            text = cull_warning_text(decision.idle_for_s, max(decision.culls_in_s, self.interval_s),
                                     notebook.timeout_s, notebook.capped)
            with self.db.session() as session:
                repo.add_event(session, notebook.workload_id, now, text)
            return False
        if not decision.cull:
            return False
        with self.db.session() as session:
            return notebooks.cull(session, notebook.workload_id, notebook.attempt, decision.idle_for_s, now)


def _get_json(url: str, headers: dict[str, str]) -> Any:
    response = httpx.get(url, headers=headers, timeout=REQUEST_TIMEOUT_S, trust_env=False)
    response.raise_for_status()
    return response.json()
