"""The SDK of a sweep trial: `gpupool.report(step, val_loss=...)` and `gpupool.should_prune()`.

A trial's job finds what it needs in its environment (GPUPOOL_URL, GPUPOOL_WORKLOAD_ID, GPUPOOL_TRIAL_TOKEN,
set by the server for trials only). Outside a sweep both are harmless: `report` does nothing and
`should_prune` answers False, so the same training script runs as a plain job.
"""

from __future__ import annotations

import math
import os
import time

import httpx

REPORT_TIMEOUT_S = 30.0  # a report is one small write; 30 s rides out a busy server without hanging a trial
UNREACHABLE_WAIT_S = 300.0  # how long a trial waits for its server to come back (a restart takes seconds)
RETRY_EVERY_S = 0.5
_state = {"prune": False}


def in_trial() -> bool:
    """True inside a sweep trial's job."""
    return bool(os.environ.get("GPUPOOL_TRIAL_TOKEN") and os.environ.get("GPUPOOL_WORKLOAD_ID"))


def report(step: int, **metrics: float) -> bool:
    """Report the trial's metrics at `step` (e.g. the epoch); the sweep's objective metric is what Optuna
    sees. Returns whether the trial should stop now (the pruner stopped it; its job is then stopped by the
    server shortly). While the server is unreachable (a restart) it retries for up to UNREACHABLE_WAIT_S.
    Outside a trial it does nothing and returns False. Raises httpx errors (an HTTP error answer, or no server
    after that wait) and ValueError for a metric that is not a finite number."""
    if not in_trial():
        return False
    pairs = []
    for name, value in metrics.items():
        number = float(value)
        if not math.isfinite(number):
            raise ValueError(f"metric {name} is {value!r}; report finite numbers")
        pairs.append(("metric", f"{name}={number!r}"))
    url = f"{os.environ.get('GPUPOOL_URL', '').rstrip('/')}/api/v1/sweeps/trials/" \
          f"{os.environ['GPUPOOL_WORKLOAD_ID']}/report"
    params = [("step", str(int(step))), *pairs]
    headers = {"X-Gpupool-Trial-Token": os.environ["GPUPOOL_TRIAL_TOKEN"]}
    deadline = time.monotonic() + UNREACHABLE_WAIT_S
    while True:
        try:
            response = httpx.post(url, params=params, headers=headers, timeout=REPORT_TIMEOUT_S)
            break
        except httpx.TransportError:  # the server restarts: the trial waits for it rather than failing
            if time.monotonic() > deadline:
                raise
            time.sleep(RETRY_EVERY_S)
    response.raise_for_status()
    _state["prune"] = bool(response.json().get("should_prune"))
    return _state["prune"]


def should_prune() -> bool:
    """Whether the last report was answered "stop": the pruner judged this trial's curve worse than the
    others'. False outside a trial or before the first report."""
    return _state["prune"]
