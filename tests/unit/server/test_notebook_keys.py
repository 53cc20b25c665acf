"""The notebook key: Jupyter tokens per notebook and run, one-time open tokens, session cookies."""

from __future__ import annotations

import stat
from pathlib import Path

from gpupool.server.notebook_keys import OPEN_TOKEN_TTL_S, SESSION_TTL_S, NotebookKeys, notebook_launch_env


def test_tokens_differ_per_notebook_and_run_and_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "notebook.key"
    keys = NotebookKeys.from_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    tokens = {keys.jupyter_token(w, r) for w in (1, 2) for r in (1, 2)}
    assert len(tokens) == 4 and all(len(t) == 48 for t in tokens)
    assert NotebookKeys.from_file(path).jupyter_token(1, 1) == keys.jupyter_token(1, 1)  # same key file
    assert NotebookKeys(b"x" * 32).jupyter_token(1, 1) != keys.jupyter_token(1, 1)


def test_open_tokens_work_once_for_their_notebook_until_they_expire() -> None:
    keys = NotebookKeys(b"k" * 32)
    token = keys.open_token(7, 12, now=1000)
    assert keys.redeem_open_token(token, 13, now=1000) is None  # another notebook
    grant = keys.redeem_open_token(token, 12, now=1001)
    assert grant is not None and (grant.user_id, grant.workload_id) == (7, 12)
    assert keys.redeem_open_token(token, 12, now=1002) is None  # used
    late = keys.open_token(7, 12, now=1000)
    assert keys.redeem_open_token(late, 12, now=1000 + OPEN_TOKEN_TTL_S + 1) is None  # expired
    forged = token.replace("7.", "8.", 1)
    assert keys.redeem_open_token(forged, 12, now=1000) is None
    assert keys.redeem_open_token("garbage", 12, now=1000) is None


def test_session_cookies_open_one_notebook_for_a_working_day() -> None:
    keys = NotebookKeys(b"k" * 32)
    name, value = keys.session_cookie(7, 12, now=1000)
    assert name == "gpupool_nb_12"
    assert keys.check_session(value, 12, now=1000 + SESSION_TTL_S) is not None
    assert keys.check_session(value, 12, now=1001 + SESSION_TTL_S) is None
    assert keys.check_session(value, 11, now=1000) is None


def test_only_notebooks_get_the_jupyter_environment() -> None:
    keys = NotebookKeys(b"k" * 32)
    assert notebook_launch_env("job", 1, 1, "127.0.0.1", keys) == {}
    env = notebook_launch_env("notebook", 1, 2, "10.0.0.5", keys)
    assert env == {"JUPYTER_TOKEN": keys.jupyter_token(1, 2), "GPUPOOL_NOTEBOOK_IP": "10.0.0.5"}
