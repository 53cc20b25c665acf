"""The trial SDK outside a sweep: the same training script runs as a plain job, reporting nothing."""

from __future__ import annotations

import os
import subprocess
import sys

import gpupool


def test_report_and_should_prune_are_harmless_outside_a_trial() -> None:
    assert "GPUPOOL_TRIAL_TOKEN" not in os.environ
    assert gpupool.report(1, loss=0.5) is False
    assert gpupool.should_prune() is False


def test_a_trial_whose_server_is_gone_fails_after_waiting_not_at_once() -> None:
    """With a trial's variables but no server, report retries, then raises the transport error."""
    code = ("import gpupool.client.trial as t, time; t.UNREACHABLE_WAIT_S = 0.6; t.RETRY_EVERY_S = 0.2\n"
            "start = time.monotonic()\n"
            "try:\n    t.report(1, loss=1.0)\nexcept Exception as e:\n"
            "    print(type(e).__name__, round(time.monotonic() - start, 1) >= 0.6)\n")
    env = {**os.environ, "GPUPOOL_TRIAL_TOKEN": "x", "GPUPOOL_WORKLOAD_ID": "1", "GPUPOOL_URL": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.split() == ["ConnectError", "True"]
