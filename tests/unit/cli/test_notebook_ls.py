"""What `gpupool notebook ls` writes in its MESSAGE column for one notebook of the API's answer."""

from __future__ import annotations

from gpupool.cli.notebooks import _message

WARNING = {"at": 100.0, "text": "idle for 31s; culled in 9s unless used (idle_timeout 40s)",
           "summary": "culls in 9s unless used"}


def test_a_running_notebook_under_the_cullers_warning_says_so() -> None:
    notebook = {"status": "running", "message": "", "cull_warning": WARNING}
    assert _message(notebook) == "warning: culls in 9s unless used"


def test_a_running_notebook_without_a_warning_has_no_message() -> None:
    assert _message({"status": "running", "message": "started", "cull_warning": None}) == ""


def test_a_stopped_notebook_says_why_and_an_old_warning_is_not_shown() -> None:
    notebook = {"status": "stopped", "message": "culled after 40s idle", "cull_warning": WARNING}
    assert _message(notebook) == "culled after 40s idle"
