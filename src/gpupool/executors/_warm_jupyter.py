"""A parked JupyterLab: an interpreter that has imported JupyterLab and waits to become one notebook's server.

The local executor's warm pool (`warm_pool.py`) starts this script under a replica supervisor, as
`PYTHON -I _warm_jupyter.py SLOT_DIR READY_TOKEN`, with the interpreter of an environment (its site-packages
hold jupyterlab; gpupool itself need not be installed there), so it uses the standard library only until it
imports JupyterLab. It:

1. blocks SIGUSR1 (the wake-up call), imports `jupyterlab.labapp` (the bulk of Jupyter's start time: Python
   imports), then writes READY_TOKEN (atomically; its content is the slot's name): from then on the
   executor may claim the slot, by renaming that token away, which only one claimant can do;
2. waits (SIGUSR1, with a periodic re-check) until the executor has written `SLOT_DIR/assign.json`: the
   notebook's Jupyter arguments, environment, working directory, log file, OS identity and read-only paths;
3. becomes the notebook (its supervisor already copies its output to the notebook's log file, with the
   log cap): the read-only bind mounts are made;
   it drops to the notebook's OS identity (groups, gid, uid; then PR_SET_PDEATHSIG again, which the drop
   resets); its environment is replaced by the notebook's (token, GPU variables, storage scopes), it moves
   to the working directory, writes JupyterLab's settings overrides under the user's HOME as the user, and
   runs JupyterLab in this process. Nothing of the pre-start survives but the imported modules: no other
   user's files, token or environment were ever in it (it is started fresh for every notebook, never reused).

Exit codes: 0..255 Jupyter's; 126 when the assignment cannot be applied (the reason is in the log).
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import os
import signal
import sys
from typing import Any

ASSIGN_FILE = "assign.json"
SETUP_FAILED_EXIT_CODE = 126
# How often the parked process re-reads the slot without a wake-up call: a lost signal costs at most this
# long; one stat per second per parked process is nothing.
RECHECK_S = 1.0
PR_SET_PDEATHSIG = 1
# What JupyterLab's start imports after `jupyterlab.labapp` (its server extensions and the request handlers,
# recorded with sys.modules around LabApp.initialize_server): importing them while parked cut the time from
# assignment to listening by a third (0.61 -> 0.41 s, measured on a loaded machine). A module missing in
# another version of Jupyter is skipped.
PREIMPORTS = (
    "jupyter_server.serverapp", "jupyter_lsp", "jupyter_lsp.serverextension", "jupyter_server_terminals",
    "notebook_shim", "notebook_shim.nbserver", "terminado", "jinja2.ext", "httpx", "IPython",
    "tornado.platform.asyncio", "jupyter_server.kernelspecs.handlers", "jupyter_server.nbconvert.handlers",
    "jupyter_server.view.handlers", "jupyter_server.services.shutdown",
    *(f"jupyter_server.services.{name}.handlers" for name in (
        "api", "config", "contents", "events", "kernels", "kernelspecs", "nbconvert", "security", "sessions")))
SETTINGS_DIR = (".cache", "gpupool", "lab-settings")


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def park(slot_dir: str, ready_token: str) -> dict[str, Any]:
    """Import JupyterLab, say so, and wait for the assignment; returns it."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    import jupyterlab.labapp  # noqa: F401, PLC0415  (the point of parking: the imports are done once here)

    for name in PREIMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:
            continue

    _write_atomic(ready_token, os.path.basename(slot_dir))
    path = os.path.join(slot_dir, ASSIGN_FILE)
    while not os.path.exists(path):
        signal.sigtimedwait({signal.SIGUSR1}, RECHECK_S)
    with open(path, encoding="utf-8") as data:
        assignment: dict[str, Any] = json.load(data)
    return assignment


def _supervisor_module() -> Any:
    """The replica supervisor's module (its read-only mount code), loaded from beside this file."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_supervisor.py")
    spec = importlib.util.spec_from_file_location("gpupool_supervisor", here)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def become(assignment: dict[str, Any]) -> list[str]:
    """Apply the assignment to this process (see the module docstring, step 3); Jupyter's argv."""
    libc = ctypes.CDLL(None, use_errno=True)
    read_only = [str(p) for p in assignment.get("read_only") or []]
    if read_only:
        _supervisor_module().make_read_only(libc, read_only)
    run_as = assignment.get("run_as")
    if run_as:
        uid, gid, groups = run_as
        os.setgroups([int(g) for g in groups])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    parent = int(assignment.get("supervisor_pid") or os.getppid())
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0 or os.getppid() != parent:
        raise OSError("the supervisor is gone")
    os.environ.clear()
    os.environ.update({str(k): str(v) for k, v in dict(assignment["env"]).items()})
    os.chdir(str(assignment["cwd"]))
    settings = os.path.join(os.environ.get("HOME") or ".", *SETTINGS_DIR)
    os.makedirs(settings, exist_ok=True)
    with open(os.path.join(settings, "overrides.json"), "w", encoding="utf-8") as out:
        out.write(str(assignment.get("lab_overrides") or "{}"))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})  # kernels must not inherit the block
    return ["jupyter-lab", f"--LabApp.app_settings_dir={settings}", *[str(a) for a in assignment["args"]]]


def main(args: list[str]) -> int:
    """`SLOT_DIR READY_TOKEN`: park, then run JupyterLab for the notebook assigned."""
    if len(args) != 2:
        print("usage: _warm_jupyter.py SLOT_DIR READY_TOKEN", file=sys.stderr)
        return 2
    assignment = park(args[0], args[1])
    try:
        sys.argv = become(assignment)
    except (OSError, KeyError, TypeError, ValueError) as error:
        print(f"gpupool: cannot start the notebook in a warm slot: {error}", file=sys.stderr, flush=True)
        return SETUP_FAILED_EXIT_CODE
    from jupyterlab.labapp import main as lab_main  # noqa: PLC0415  (imported in park())

    lab_main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
