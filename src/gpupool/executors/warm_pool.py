"""The notebook warm pool of the local executor: K parked JupyterLab interpreters per Python, handed out once.

A **slot** is a replica supervisor (the same `_supervisor.py` as any replica) running `_warm_jupyter.py` with
one Python (the default interpreter, or an environment's `bin/python`): an interpreter that has imported
JupyterLab and waits, holding no GPU (`CUDA_VISIBLE_DEVICES` empty), no user's files and no token. It is not
a workload: the scheduler never sees it. Files, under `ROOT/warm/` (ROOT is the executor's root, 0700):

    slots/<slot>/          the slot's supervisor state directory (supervisor.json, command.json, exit.json ...)
    slots/<slot>/slot.json the slot's Python and the supervisor's handle (written when the slot is started)
    ready/<key>/<slot>     the ready token, written by the parked process once its imports are done
                           (<key> names the Python); its content is the slot's name

**Claiming** a slot for a replica is `rename(ready/<key>/<slot>, <replica state dir>/warm-slot)`: atomic, so
one claimant wins and the others get FileNotFoundError and try the next token; and durable in the
filesystem, so after a server restart the token is either still ready or recorded in the replica that took
it, never both: a slot is never handed out twice. The claimant then writes `slots/<slot>/assign.json` (the
notebook's arguments, environment, working directory, log file, identity) and wakes the parked process
(SIGUSR1), which becomes that notebook's JupyterLab (see `_warm_jupyter.py`). A start interrupted by a
crash finds `warm-slot` in the replica's directory and finishes the same assignment; when that slot has died
meanwhile it falls back to a cold start. When the replica is cancelled instead, before any retry, `release`
gives the slot back at once (the token is renamed back into `ready/`, atomically again). The replica's
handle names the slot's supervisor, so poll, stop, logs and the session id work as for any replica.

**Refilling** (`fill`, run by the executor's refill thread after each claim and every REFILL_INTERVAL_S):
for each configured Python, remove dead unclaimed slots and start new ones until K are live and unclaimed
(parking or ready). A slot that has produced no token within STALE_SLOT_S is stopped (one that hangs while
parking, or a claimed one whose replica went away without `release`). K = 0 turns the pool off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpupool.domain.notebooks import LAB_OVERRIDES, jupyter_arguments
from gpupool.executors import _supervisor as supervisor
from gpupool.executors import procfs
from gpupool.executors._warm_jupyter import ASSIGN_FILE
from gpupool.executors.base import ExecutorError, ReplicaLaunch

WARM_SCRIPT = Path(__file__).resolve().with_name("_warm_jupyter.py")
SLOT_FILE = "slot.json"
CLAIM_FILE = "warm-slot"  # in the replica's state directory: which slot it took
# A parked interpreter imports JupyterLab in 2-4 s on an idle machine and 15-25 s on a loaded 2-core one; a
# slot without its token after 5 minutes is not parking any more (or was claimed by a start that died).
STALE_SLOT_S = 300.0
# How often the pool is topped up without a claim (a parked process that died, a new environment to warm):
# a few cheap directory listings, so every 10 s costs nothing.
REFILL_INTERVAL_S = 10.0
# The supervisor switches its output file within milliseconds of the signal; 2 s covers a loaded machine, and
# missing it only puts Jupyter's first lines in the slot's own log.
RELOG_WAIT_S = 2.0


def python_key(python: str) -> str:
    """The directory name of one Python's ready tokens: a digest of its absolute path, not resolved (an
    environment's `bin/python` is a link to the base interpreter, but its site-packages are its own)."""
    return hashlib.sha256(os.path.abspath(python).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a parked slot becomes: Jupyter's arguments, the full environment, the working directory, the log
    file, the OS identity (uid, gid, groups; None: the server's) and the read-only paths."""

    args: Sequence[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    run_as: tuple[int, int, Sequence[int]] | None
    read_only: Sequence[Path]
    lab_overrides: str


class WarmPool:
    """K parked JupyterLab slots per Python (see the module docstring). `start_slot(slot_dir, argv)` starts
    a supervisor running `argv` in `slot_dir` and returns its handle (the executor's own launch); `pythons()`
    says which Pythons to keep warm (evaluated at each fill, so a new environment is picked up). Thread-safe."""

    def __init__(self, root: Path, size: int, pythons: Callable[[], Sequence[str]],
                 start_slot: Callable[[Path, list[str]], dict[str, Any]]) -> None:
        self.root = root / "warm"
        self.size = size
        self.pythons = pythons
        self._start_slot = start_slot
        self._lock = threading.Lock()
        self._closed = False
        self._wake = threading.Event()

    def start_refilling(self) -> None:
        """Fill in a background thread now, after each `wake()` and every REFILL_INTERVAL_S, until `close()`;
        nothing when the size is 0."""
        if self.size > 0:
            threading.Thread(target=self._refill_loop, name="gpupool-warm-pool", daemon=True).start()

    def _refill_loop(self) -> None:
        while not self._closed:
            with contextlib.suppress(OSError, ExecutorError):  # a full disk or a failed start: next round
                self.fill()
            self._wake.wait(REFILL_INTERVAL_S)
            self._wake.clear()

    def wake(self) -> None:
        """Ask the refill thread for a fill now (after a claim)."""
        self._wake.set()

    def close(self) -> None:
        """Start no more slots (waits for a fill in progress); the parked ones keep running for the next
        server on this root."""
        with self._lock:
            self._closed = True
        self._wake.set()

    def stop_unclaimed(self, grace_s: float = 1.0) -> int:
        """Stop every parked slot that no notebook has claimed (SIGTERM); how many. The pool is closed."""
        self.close()
        stopped = 0
        for slot in sorted((self.root / "slots").glob("*")):
            handle = self.slot_handle(slot)
            if handle and not (slot / ASSIGN_FILE).exists():
                key = str((_read_json(slot / SLOT_FILE) or {}).get("key", ""))
                (self.root / "ready" / key / slot.name).unlink(missing_ok=True)
                stopped += procfs.signal_process(procfs.ProcessIdentity(
                    int(handle["pid"]), int(handle["start_time"]), str(handle.get("boot_id", ""))), signal.SIGTERM)
        return stopped

    def _ready_dir(self, python: str) -> Path:
        return self.root / "ready" / python_key(python)

    # -- claim -------------------------------------------------------------------------------------------

    def claim(self, python: str, replica_dir: Path) -> Path | None:
        """Take a ready slot of `python` for the replica whose state directory is `replica_dir` (atomic, see
        the module docstring); the slot's directory, or None when none is ready. A slot found dead is
        dropped and the next one tried."""
        if self.size <= 0:
            return None
        ready = self._ready_dir(python)
        try:
            tokens = sorted(ready.iterdir())
        except FileNotFoundError:
            return None
        for token in tokens:
            try:
                os.rename(token, replica_dir / CLAIM_FILE)
            except FileNotFoundError:
                continue  # another start took it
            slot = self.claimed_slot(replica_dir)
            if slot is not None:
                return slot
        return None

    def claimed_slot(self, replica_dir: Path) -> Path | None:
        """The slot this replica claimed earlier (a start interrupted by a crash): once assigned it is the
        replica's whatever became of it (poll then reports how it ended); before, only while it lives. None
        when it claimed none, or the slot died before its assignment (the claim is dropped: a cold start)."""
        claim = replica_dir / CLAIM_FILE
        try:
            name = claim.read_text().strip()
        except FileNotFoundError:
            return None
        slot = self.root / "slots" / name
        if name and "/" not in name and ((slot / ASSIGN_FILE).exists() or self._alive(slot)):
            return slot
        claim.unlink(missing_ok=True)
        return None

    def release(self, replica_dir: Path) -> Path | None:
        """Give back the slot a replica claimed and never started in (its start died, then it was cancelled):
        an untouched slot's ready token goes back, so the next notebook takes it at once; one that was
        already redirected to the replica's log is stopped (the refill replaces it). Returns the slot when it
        was assigned (it runs as the replica's notebook: the caller stops it), else None."""
        claim = replica_dir / CLAIM_FILE
        slot = self.claimed_slot(replica_dir)  # drops a claim on a slot that died unassigned
        if slot is None or (slot / ASSIGN_FILE).exists():
            return slot
        key = str((_read_json(slot / SLOT_FILE) or {}).get("key", ""))
        ready = self.root / "ready" / key
        if key and "/" not in key and not (slot / supervisor.RELOG_FILE).exists() and ready.is_dir():
            os.rename(claim, ready / slot.name)  # atomic: the token is ready again or still claimed, never lost
        else:
            claim.unlink(missing_ok=True)
            handle = self.slot_handle(slot) or {}
            procfs.signal_process(procfs.ProcessIdentity(int(handle.get("pid", 0)), int(handle.get("start_time", -1)),
                                                         str(handle.get("boot_id", ""))), signal.SIGTERM)
        self.wake()
        return None

    @staticmethod
    def slot_handle(slot: Path) -> dict[str, Any] | None:
        """The supervisor handle the slot was started with (None when unreadable)."""
        try:
            data = json.loads((slot / SLOT_FILE).read_text())
        except (OSError, ValueError):
            return None
        handle = data.get("handle") if isinstance(data, dict) else None
        return handle if isinstance(handle, dict) else None

    def _alive(self, slot: Path) -> bool:
        handle = self.slot_handle(slot)
        if handle is None or (slot / supervisor.EXIT_FILE).exists():
            return False
        return procfs.is_running(procfs.ProcessIdentity(int(handle["pid"]), int(handle["start_time"]),
                                                        str(handle.get("boot_id", ""))))

    def assign(self, slot: Path, assignment: Assignment) -> None:
        """Write the slot's assignment (once: a resumed start keeps the first) and wake the parked process."""
        path = slot / ASSIGN_FILE
        if not path.exists():
            handle = self.slot_handle(slot) or {}
            self._relog(slot, handle, assignment.log_path)
            supervisor.write_json_atomic(str(path), {
                "args": list(assignment.args), "env": assignment.env, "cwd": str(assignment.cwd),
                "log_path": str(assignment.log_path), "read_only": [str(p) for p in assignment.read_only],
                "run_as": list(assignment.run_as) if assignment.run_as else None,
                "lab_overrides": assignment.lab_overrides, "supervisor_pid": handle.get("pid")})
        command = _read_json(slot / supervisor.COMMAND_FILE)
        if command and command.get("start_time") is not None:
            procfs.signal_process(procfs.ProcessIdentity(int(command["pid"]), int(command["start_time"]),
                                                         procfs.boot_id()), signal.SIGUSR1)

    @staticmethod
    def _relog(slot: Path, handle: dict[str, Any], log_path: Path) -> None:
        """Have the slot's supervisor copy the output to the notebook's log from now on (with the log cap),
        waiting up to RELOG_WAIT_S for it to say so (else the first lines land in the slot's own log)."""
        supervisor.write_json_atomic(str(slot / supervisor.RELOG_FILE), {"log_path": str(log_path)})
        (slot / supervisor.RELOGGED_FILE).unlink(missing_ok=True)
        identity = procfs.ProcessIdentity(int(handle.get("pid", 0)), int(handle.get("start_time", -1)),
                                          str(handle.get("boot_id", "")))
        if not procfs.signal_process(identity, signal.SIGUSR2):
            return
        deadline = time.monotonic() + RELOG_WAIT_S
        while not (slot / supervisor.RELOGGED_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.002)

    # -- fill --------------------------------------------------------------------------------------------

    def fill(self) -> int:
        """Top every configured Python up to `size` live unclaimed slots; remove dead ones. How many slots
        were started."""
        if self.size <= 0:
            return 0
        with self._lock:
            if self._closed:
                return 0
            (self.root / "slots").mkdir(parents=True, exist_ok=True, mode=0o700)
            unclaimed = self._sweep()
            started = 0
            for python in dict.fromkeys(self.pythons()):
                for _ in range(self.size - unclaimed.get(python_key(python), 0)):
                    self._start(python)
                    started += 1
            return started

    def _sweep(self) -> dict[str, int]:
        """Remove dead unclaimed slots, stop stale ones; live unclaimed slots per Python key."""
        live: dict[str, int] = {}
        now = time.time()
        for slot in (self.root / "slots").iterdir():
            info = _read_json(slot / SLOT_FILE) or {}
            key = str(info.get("key", ""))
            token = self.root / "ready" / key / slot.name
            if (slot / ASSIGN_FILE).exists():
                continue  # a notebook's now; its replica owns it
            alive = self._alive(slot)
            if not alive:
                token.unlink(missing_ok=True)
                if now - float(info.get("started_at", 0)) > 5:  # not one that is being started right now
                    shutil.rmtree(slot, ignore_errors=True)
                continue
            if token.exists() or now - float(info.get("started_at", now)) < STALE_SLOT_S:
                live[key] = live.get(key, 0) + 1
            else:
                handle = self.slot_handle(slot) or {}
                procfs.signal_process(procfs.ProcessIdentity(int(handle.get("pid", 0)),
                                                             int(handle.get("start_time", -1)),
                                                             str(handle.get("boot_id", ""))), signal.SIGTERM)
        return live

    def _start(self, python: str) -> None:
        name = f"{int(time.time())}-{secrets.token_hex(4)}"
        slot = self.root / "slots" / name
        slot.mkdir(mode=0o700)
        ready = self._ready_dir(python)
        ready.mkdir(parents=True, exist_ok=True, mode=0o700)
        argv = [os.path.abspath(python), "-I", str(WARM_SCRIPT), str(slot), str(ready / name)]
        info = {"python": os.path.abspath(python), "key": python_key(python), "started_at": time.time()}
        supervisor.write_json_atomic(str(slot / SLOT_FILE), info)
        handle = self._start_slot(slot, argv)
        supervisor.write_json_atomic(str(slot / SLOT_FILE), {**info, "handle": handle})


def warm_candidate(launch: ReplicaLaunch, size: int) -> bool:
    """True when `launch` may start in a warm slot: a notebook with its address, port and id, an existing
    working directory, and a pool that keeps slots."""
    needed = ("GPUPOOL_NOTEBOOK_IP", "GPUPOOL_PORT", "GPUPOOL_WORKLOAD_ID")
    return launch.notebook and size > 0 and all(launch.env.get(n) for n in needed) and launch.cwd.is_dir()


def notebook_assignment(launch: ReplicaLaunch, env: dict[str, str], log_path: Path, read_only: bool) -> Assignment:
    """The assignment of a warm slot for notebook `launch` with its full environment `env`: the same Jupyter
    arguments as the cold command, its directory, identity and (when the executor enforces them) read-only
    paths."""
    who = launch.run_as
    return Assignment(
        args=jupyter_arguments(env["GPUPOOL_NOTEBOOK_IP"], env["GPUPOOL_PORT"], env["GPUPOOL_WORKLOAD_ID"]),
        env=env, cwd=launch.cwd, log_path=log_path, run_as=(who.uid, who.gid, tuple(who.groups)) if who else None,
        read_only=[Path(p).resolve() for p in launch.read_only_paths] if read_only else [],
        lab_overrides=LAB_OVERRIDES)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
