"""The local executor: each replica is a real process on this machine, supervised so that it survives a
server crash and its exit code is never lost.

Per replica, `start` creates a state directory `root/replicas/<workload_id>/<replica>.<attempt>/` (mode
0700: a replica never reads another's state) and launches a supervisor (`_supervisor.py`, run as
`python -I -S`) in a session of its own; the supervisor starts `bash -c COMMAND` (not a login shell: no
profile is read) as the leader of a new session and process group, with cwd = launch.cwd, env = base env +
launch.env, stdout and stderr copied by the supervisor to `launch.log_dir/replica-<n>.log` (up to
`log_cap_bytes`), as the OS identity `launch.run_as` when given (the server must be root), with the read-only
bind mounts of `launch.read_only_paths`, and with PR_SET_PDEATHSIG so that it dies with its supervisor. Files
of the state directory:

    supervisor.lock  flock-ed by the executor before it spawns the supervisor and held by the supervisor
                   for its whole life (the locked file description is inherited): while it is locked, a
                   supervisor runs this replica, so a start after a crash adopts it instead of a second one
    supervisor.json  pid and start time of the supervisor (written by the supervisor before the command)
    handle.json    the handle start returned (start is idempotent: a second start returns it)
    command.json   pid and start time of the command (written by the supervisor once it runs)
    stop.json      a stop request: grace period and when it was asked (written by stop)
    exit.json      exit code, signal, whether a stop was asked and SIGKILL needed (written by the supervisor)

The handle names the supervisor by (boot id, pid, start time), so any LocalExecutor given the same `root`
tells, from files and /proc alone: still running (the supervisor is alive), ended (exit.json), or lost
(the supervisor is gone without writing exit.json: it was killed, or the machine restarted).

Stop writes stop.json and sends SIGTERM to the supervisor, which sends SIGTERM to the command's process
group and SIGKILL to it when the grace period ends — so the escalation happens even when the server dies
in between. As a safeguard, `poll` SIGKILLs the group itself when the command outlives its deadline by
more than `kill_slack_s`, and `stop` signals the group directly (with a timer thread for the SIGKILL) when
the supervisor is already gone. When `poll` declares a replica lost, it SIGKILLs every process left of it
(found by the GPUPOOL_REPLICA_MARKER entry of their environment, and by session while the leader runs), so
a lost replica never keeps a GPU that the scheduler hands out again.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gpupool.domain.errors import ValidationError
from gpupool.executors import _supervisor as supervisor
from gpupool.executors import logfiles, procfs
from gpupool.executors.base import (
    Capability,
    Endpoint,
    Executor,
    ExecutorError,
    Handle,
    ReplicaLaunch,
    ReplicaState,
    ReplicaStatus,
    RunAs,
)
from gpupool.executors.environment import default_base_env
from gpupool.executors.storage import validate_scope_name
from gpupool.executors.warm_pool import WarmPool, notebook_assignment, warm_candidate

HANDLE_FILE = "handle.json"
LOCK_FILE = "lock"
HANDLE_KIND = "local"
HANDLE_VERSION = 1
SUPERVISOR_SCRIPT = Path(supervisor.__file__).resolve()
MARKER_VAR = "GPUPOOL_REPLICA_MARKER"
PRIVATE_DIR_MODE = 0o700
# How long start waits for a supervisor that holds the lock to write supervisor.json: it does so within
# milliseconds of starting; 10 s covers a machine under heavy load.
ADOPT_WAIT_S = 10.0


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (between threads and processes alike)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


LOOPBACK = "127.0.0.1"


def pick_free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """`count` distinct TCP ports free on `host` right now (the kernel picks them). Another process may
    take one before the replica binds it; the window is short and a clash fails the rendezvous loudly."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


def can_enforce_read_only() -> bool:
    """True when this process may give replicas read-only bind mounts (root: the supervisor mounts them)."""
    return os.geteuid() == 0


def replica_marker(state_dir: Path) -> str:
    """The value of GPUPOOL_REPLICA_MARKER for the replica of `state_dir` (a digest of its path: the same
    after a server restart, different for every replica attempt)."""
    return hashlib.sha256(str(state_dir).encode()).hexdigest()[:24]


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def log_file_name(replica: int, attempt: int) -> str:
    """`replica-<n>.log` for the first attempt, `replica-<n>.attempt-<a>.log` for later ones."""
    return f"replica-{replica}.log" if attempt == 0 else f"replica-{replica}.attempt-{attempt}.log"


class _Ref:
    """A parsed local handle: where the replica's files are and which process supervises it."""

    def __init__(self, handle: Handle) -> None:
        self.state_dir = Path(handle["state_dir"])
        self.log_path = Path(handle["log_path"])
        self.supervisor = procfs.ProcessIdentity(int(handle["pid"]), int(handle["start_time"]),
                                                 str(handle.get("boot_id", "")))

    def file(self, name: str) -> Path:
        return self.state_dir / name

    def command(self) -> procfs.ProcessIdentity | None:
        data = _read_json(self.file(supervisor.COMMAND_FILE))
        if not data or data.get("start_time") is None:
            return None
        return procfs.ProcessIdentity(int(data["pid"]), int(data["start_time"]), self.supervisor.boot_id)


def _parse(handle: Handle) -> _Ref | None:
    if not isinstance(handle, Mapping) or handle.get("executor") != HANDLE_KIND:
        return None
    try:
        return _Ref(handle)
    except (KeyError, TypeError, ValueError):
        return None


class LocalExecutor(Executor):
    """Runs replicas as supervised processes on this machine (see the module docstring).

    `root`: where state directories live (e.g. $GPUPOOL_HOME/executor). `base_env`: the environment every
    replica starts from (default: `default_base_env` of the server's environment, with the server's Python
    first on PATH). `read_only`: enforce ReplicaLaunch.read_only_paths with read-only bind mounts (None:
    when possible, see `can_enforce_read_only`; True: required, ExecutorError when not possible).
    `log_cap_bytes`: the most a replica's log file holds; then one line says so and the rest is discarded.
    `warm_notebooks`: K parked JupyterLab slots kept per Python that `warm_pythons()` names (default: the
    `python` of `base_env`'s PATH), handed to notebook launches (`warm_pool.py`); 0 keeps none.
    """

    name = "local"

    def __init__(self, root: Path, *, base_env: Mapping[str, str] | None = None, read_only: bool | None = None,
                 python: str | None = None, shell: str = "bash", follow_interval_s: float = 0.1,
                 kill_slack_s: float = 5.0, log_cap_bytes: int = supervisor.DEFAULT_LOG_CAP,
                 warm_notebooks: int = 0, warm_pythons: Callable[[], Sequence[str]] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(PRIVATE_DIR_MODE)
        self.base_env = dict(base_env) if base_env is not None else default_base_env(
            os.environ, str(Path(sys.executable).parent))
        self.python = python or sys.executable
        self.shell = shutil.which(shell) or shell
        self.follow_interval_s = follow_interval_s
        self.kill_slack_s = kill_slack_s
        self.log_cap_bytes = log_cap_bytes
        possible = can_enforce_read_only()
        if read_only and not possible:
            raise ExecutorError("read-only paths need the server to run as root")
        self._read_only = possible if read_only is None else read_only
        self.capabilities = frozenset({Capability.FOLLOW_LOGS, Capability.REATTACH, Capability.SESSION_IDS}
                                      | ({Capability.READ_ONLY_PATHS} if self._read_only else set()))
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._children_lock = threading.Lock()
        self._ended = logfiles.SharedCheck()  # whether a followed replica ended, shared by its followers
        self._timers: list[threading.Timer] = []
        self.warm = WarmPool(self.root, warm_notebooks, warm_pythons or self._default_pythons, self._start_slot)
        self.warm.start_refilling()

    # -- start -------------------------------------------------------------------------------------------

    def state_dir(self, workload_id: str, replica: int, attempt: int = 0) -> Path:
        """The state directory of one replica attempt (validates the workload id as a path component)."""
        try:
            validate_scope_name(workload_id, "workload_id")
        except ValidationError as error:
            raise ExecutorError(f"cannot use workload id {workload_id!r} as a directory name: {error}") from None
        if replica < 0 or attempt < 0:
            raise ExecutorError(f"replica and attempt must not be negative, got {replica} and {attempt}")
        return self.root / "replicas" / workload_id / f"{replica}.{attempt}"

    def free_ports(self, node: str, count: int) -> list[int]:
        """Free ports on this host, which runs every replica of this executor whatever its node is called."""
        return pick_free_ports(count)

    def endpoints(self, launch: ReplicaLaunch) -> dict[int, Endpoint]:
        """Replicas run on this host: reached on the loopback address."""
        return {name: Endpoint(LOOPBACK, port) for name, port in sorted(launch.ports.items())}

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Launch the replica's supervisor and return the handle at once (the command starts within
        milliseconds; poll says STARTING until it runs). Idempotent per (workload_id, replica, attempt),
        across executor instances and server restarts: the handle is kept in the state directory. Raises
        ExecutorError when the working directory is missing, the process cannot be created or the replica's
        files cannot be written (a full disk, a path taken by a file): one replica's failure is its own."""
        state_dir = self.state_dir(launch.workload_id, launch.replica, launch.attempt)
        self._reap()
        try:
            for directory in (self.root / "replicas", state_dir.parent, state_dir):
                directory.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            with _locked(state_dir / LOCK_FILE):
                existing = _read_json(state_dir / HANDLE_FILE)
                if existing is not None:
                    return existing
                handle = self._adopt(launch, state_dir) or self._warm_start(launch, state_dir) \
                    or self._launch(launch, state_dir)
                supervisor.write_json_atomic(str(state_dir / HANDLE_FILE), handle)
        except OSError as error:
            raise ExecutorError(f"cannot start replica {launch.replica} of {launch.workload_id}: "
                                f"{error.strerror or error} ({error.filename or state_dir})") from None
        return handle

    def _handle(self, launch: ReplicaLaunch, state_dir: Path, pid: int, start_time: int) -> Handle:
        return {
            "executor": HANDLE_KIND, "version": HANDLE_VERSION, "workload_id": launch.workload_id,
            "replica": launch.replica, "attempt": launch.attempt, "node": launch.node,
            "state_dir": str(state_dir), "log_path": str(Path(launch.log_dir) / log_file_name(launch.replica,
                                                                                                launch.attempt)),
            "pid": pid, "start_time": start_time, "boot_id": procfs.boot_id(),
            "marker": replica_marker(state_dir),
        }

    def _adopt(self, launch: ReplicaLaunch, state_dir: Path) -> Handle | None:
        """The handle of a supervisor that a start interrupted by a crash (after the spawn, before the handle
        was written) left behind: running (it holds supervisor.lock), or ended or killed (supervisor.json
        without the lock). None when no supervisor ever ran for this state directory."""
        lock = state_dir / supervisor.SUPERVISOR_LOCK
        fd = _try_lock(lock)
        if fd is not None:
            os.close(fd)
            known = _read_json(state_dir / supervisor.SUPERVISOR_FILE)
        else:  # a supervisor holds it: it writes supervisor.json within milliseconds of starting
            deadline = time.monotonic() + ADOPT_WAIT_S
            while (known := _read_json(state_dir / supervisor.SUPERVISOR_FILE)) is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            if known is None:
                raise ExecutorError(f"a supervisor holds {lock} but has not identified itself; try again")
        if known is None or not isinstance(known.get("pid"), int):
            return None
        return self._handle(launch, state_dir, known["pid"], int(known.get("start_time") or -1))

    def command_argv(self, launch: ReplicaLaunch, env: Mapping[str, str]) -> list[str]:
        """The argv the supervisor runs: `bash -c COMMAND`, a non-login shell that reads no profile (a
        user's profile can take seconds, e.g. pyenv's, and the replica's environment is already complete).
        The read-only bind mounts are made by the supervisor itself (`supervisor_options`)."""
        return [self.shell, "-c", launch.command]

    def supervisor_options(self, launch: ReplicaLaunch) -> list[str]:
        """`--run-as` and `--read-only` options of the supervisor for `launch` (see _supervisor.py)."""
        options = ["--log-cap", str(self.log_cap_bytes)]
        if launch.run_as is not None:
            who = launch.run_as
            options += ["--run-as", f"{who.uid}:{who.gid}:{','.join(str(g) for g in who.groups)}"]
        if launch.read_only_paths and self._read_only:
            for path in launch.read_only_paths:
                options += ["--read-only", str(Path(path).resolve())]
        return options

    def _launch(self, launch: ReplicaLaunch, state_dir: Path) -> Handle:
        if not launch.cwd.is_dir():
            raise ExecutorError(f"the working directory {launch.cwd} does not exist")
        if launch.run_as is not None and os.geteuid() != 0:
            raise ExecutorError(f"cannot run a replica as {launch.run_as.user}: the server is not root")
        for name in (supervisor.COMMAND_FILE, supervisor.EXIT_FILE, supervisor.STOP_FILE):
            (state_dir / name).unlink(missing_ok=True)  # leftovers of a start that crashed before its spawn
        env = _replica_env(self.base_env, launch.env, launch.run_as, replica_marker(state_dir))
        log_path = Path(launch.log_dir) / log_file_name(launch.replica, launch.attempt)
        lock_fd = _try_lock(state_dir / supervisor.SUPERVISOR_LOCK)
        if lock_fd is None:
            raise ExecutorError(f"another supervisor started replica {launch.replica} of {launch.workload_id} "
                                "meanwhile; try again")
        argv = [self.python, "-I", "-S", str(SUPERVISOR_SCRIPT), str(state_dir), "--lock-fd", str(lock_fd),
                *self.supervisor_options(launch), "--", *self.command_argv(launch, env)]
        try:
            log_fd = logfiles.open_for_append(log_path)
        except OSError as error:
            os.close(lock_fd)
            raise ExecutorError(f"cannot open the log file {log_path}: {error.strerror}") from None
        try:
            child = subprocess.Popen(argv, cwd=launch.cwd, env=env, stdin=subprocess.DEVNULL, stdout=log_fd,
                                     stderr=log_fd, start_new_session=True, close_fds=True, pass_fds=(lock_fd,))
        except (OSError, ValueError) as error:  # ValueError: a NUL byte in the environment or command
            raise ExecutorError(f"cannot start replica {launch.replica} of {launch.workload_id}: "
                                f"{getattr(error, 'strerror', None) or error}") from None
        finally:
            os.close(log_fd)
            os.close(lock_fd)  # the supervisor holds the lock through its inherited copy
        with self._children_lock:
            self._children[child.pid] = child
        identity = procfs.identify(child.pid)
        return self._handle(launch, state_dir, child.pid, identity.start_time if identity else -1)

    # -- the notebook warm pool (warm_pool.py) -------------------------------------------------------------

    def _default_pythons(self) -> list[str]:
        found = shutil.which("python", path=self.base_env.get("PATH"))
        return [found] if found else []

    def _start_slot(self, slot: Path, argv: list[str]) -> Handle:
        """Start a parked slot's supervisor in `slot`: the server's identity, no GPU, output to the slot."""
        launch = ReplicaLaunch(workload_id="warm", replica=0, role="warm", command=shlex.join(["exec", *argv]),
                               env={"CUDA_VISIBLE_DEVICES": ""}, cwd=slot, log_dir=slot)
        return self._launch(launch, slot)

    def _warm_start(self, launch: ReplicaLaunch, state_dir: Path) -> Handle | None:
        """Start a notebook in a warm slot: the one this replica claimed before a crash, else a newly claimed
        one; None (a cold start) when the launch is no notebook or no slot of its Python is ready."""
        slot = self.warm.claimed_slot(state_dir) if launch.notebook else None  # also when the pool is off now
        if slot is None:
            if not warm_candidate(launch, self.warm.size) or (launch.run_as is not None and os.geteuid() != 0):
                return None  # not a notebook, or one whose cold start reports the error
            python = shutil.which("python", path=launch.env.get("PATH") or self.base_env.get("PATH"))
            slot = self.warm.claim(python, state_dir) if python else None
            if slot is None:
                return None
        self.warm.wake()  # refill
        log_path = Path(launch.log_dir) / log_file_name(launch.replica, launch.attempt)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        env = _replica_env(self.base_env, launch.env, launch.run_as, replica_marker(slot))
        self.warm.assign(slot, notebook_assignment(launch, env, log_path, self._read_only))
        started = self.warm.slot_handle(slot) or {}
        return {**self._handle(launch, slot, int(started["pid"]), int(started["start_time"])), "warm": True}

    def release_unstarted(self, workload_id: str, replica: int, attempt: int, grace_s: float = 10.0,
                          node: str = "") -> None:
        """Release what a start of this replica that died before its handle was recorded left: a warm slot it
        claimed goes back to the pool (or is stopped once it was the notebook's), a supervisor it spawned is
        stopped. Nothing when no start of it began. Every replica runs on this host, whatever `node` says."""
        state_dir = self.state_dir(workload_id, replica, attempt)
        if not state_dir.is_dir():
            return
        with _locked(state_dir / LOCK_FILE):
            handle = _read_json(state_dir / HANDLE_FILE)
            if handle is None:
                slot = self.warm.release(state_dir)  # an assigned slot: its supervisor runs the notebook
                handle = self.warm.slot_handle(slot) if slot is not None else self._spawned(state_dir)
        if handle is not None:
            self.stop(handle, grace_s)

    @staticmethod
    def _spawned(state_dir: Path) -> Handle | None:
        """A handle naming the supervisor a start spawned in `state_dir` before it died (None: none was)."""
        known = _read_json(state_dir / supervisor.SUPERVISOR_FILE)
        if known is None or not isinstance(known.get("pid"), int):
            return None
        return {"executor": HANDLE_KIND, "version": HANDLE_VERSION, "state_dir": str(state_dir),
                "log_path": str(state_dir / "unused.log"), "pid": known["pid"],
                "start_time": int(known.get("start_time") or -1), "boot_id": procfs.boot_id()}

    # -- poll --------------------------------------------------------------------------------------------

    def _reap(self, pid: int | None = None) -> None:
        """Collect the exit status of supervisor `pid` (default: of all) if this instance started it and it
        has ended, so that no zombie is left behind."""
        with self._children_lock:
            pids = list(self._children) if pid is None else [pid] if pid in self._children else []
            for ended in [p for p in pids if self._children[p].poll() is not None]:
                del self._children[ended]

    def poll(self, handle: Handle) -> ReplicaStatus:
        """The replica's status from its files and /proc; never blocks. STARTING until the command runs,
        RUNNING while it runs, then SUCCEEDED (exit code 0), FAILED, or STOPPED (ended after stop). LOST
        when the supervisor is gone without an exit record, and for an unknown or malformed handle."""
        ref = _parse(handle)
        if ref is None:
            return ReplicaStatus(ReplicaState.LOST, message="unknown replica handle")
        self._reap(ref.supervisor.pid)
        ended = _read_json(ref.file(supervisor.EXIT_FILE))
        if ended is None and procfs.is_running(ref.supervisor):
            self._enforce_deadline(ref)
            if ref.file(supervisor.COMMAND_FILE).exists():
                return ReplicaStatus(ReplicaState.RUNNING)
            return ReplicaStatus(ReplicaState.STARTING, message="starting the command")
        ended = ended or _read_json(ref.file(supervisor.EXIT_FILE))  # it may have ended just now
        if ended is not None:
            return _ended_status(ended)
        killed = self._kill_leftovers(ref, handle)
        leftovers = f"; killed {killed} process(es) left of it" if killed else ""
        if ref.file(supervisor.STOP_FILE).exists():
            return ReplicaStatus(ReplicaState.STOPPED, message="stopped; its exit code was not recorded" + leftovers)
        return ReplicaStatus(ReplicaState.LOST, message="the replica's supervisor process is gone without "
                             "recording an exit code (it was killed, or the machine restarted)" + leftovers)

    @staticmethod
    def _kill_leftovers(ref: _Ref, handle: Handle) -> int:
        """SIGKILL every process left of a replica whose supervisor is gone; how many were signalled."""
        marker = str(handle.get("marker") or replica_marker(ref.state_dir))
        if ref.supervisor.boot_id and ref.supervisor.boot_id != procfs.boot_id():
            return 0  # another boot: nothing of it can be left
        return procfs.kill_all(procfs.replica_processes(f"{MARKER_VAR}={marker}".encode(), ref.command()))

    def _enforce_deadline(self, ref: _Ref) -> None:
        """SIGKILL the command's group when a stop's grace period is long over and it still runs."""
        request = _read_json(ref.file(supervisor.STOP_FILE))
        if not request:
            return
        deadline = float(request.get("requested_at", 0)) + float(request.get("grace_s", 0)) + self.kill_slack_s
        command = ref.command()
        if time.time() > deadline and command is not None and procfs.is_running(command):
            procfs.signal_group(command.pid, signal.SIGKILL)

    def session_id(self, handle: Handle) -> int | None:
        """The command's pid while it runs: the supervisor starts it as the leader of a new session, so
        every process the replica spawns (unless it calls setsid itself) has this session id. None before
        the command started, after it ended, and for an unknown handle."""
        ref = _parse(handle)
        command = ref.command() if ref is not None else None
        if command is None or not procfs.is_running(command):
            return None
        return command.pid

    # -- stop --------------------------------------------------------------------------------------------

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """Ask the replica to stop: SIGTERM to its process group now, SIGKILL `grace_s` later if it still
        runs (done by its supervisor, so it happens even if the server dies meanwhile). Returns at once.
        Idempotent: a second stop keeps the earliest deadline; an unknown or ended replica is left alone."""
        ref = _parse(handle)
        if ref is None or ref.file(supervisor.EXIT_FILE).exists():
            return
        grace_s = min(max(0.0, float(grace_s)), supervisor.MAX_GRACE_S)
        self._record_stop(ref, grace_s)
        if procfs.signal_process(ref.supervisor, signal.SIGTERM):
            return
        command = ref.command()  # the supervisor is gone: handle the orphaned command ourselves
        if command is not None and procfs.is_running(command):
            procfs.signal_group(command.pid, signal.SIGTERM)
            timer = threading.Timer(grace_s, self._kill_if_running, args=(command,))
            timer.daemon = True
            timer.start()
            self._timers.append(timer)

    @staticmethod
    def _record_stop(ref: _Ref, grace_s: float) -> None:
        path = ref.file(supervisor.STOP_FILE)
        with _locked(ref.file(LOCK_FILE)):
            now = time.time()
            previous = _read_json(path)
            if previous is not None:
                previous_deadline = float(previous.get("requested_at", now)) + float(previous.get("grace_s", 0))
                if previous_deadline <= now + grace_s:
                    return
            supervisor.write_json_atomic(str(path), {"grace_s": grace_s, "requested_at": now})

    @staticmethod
    def _kill_if_running(command: procfs.ProcessIdentity) -> None:
        if procfs.is_running(command):
            procfs.signal_group(command.pid, signal.SIGKILL)

    # -- logs and close ----------------------------------------------------------------------------------

    def logs(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """Lines of the replica's log file (without newlines); the last `tail` lines when given. With
        `follow`, blocks for new lines (checking every `follow_interval_s`) until the replica is in a
        terminal state and its output is drained. An unknown handle yields nothing."""
        ref = _parse(handle)
        if ref is None:
            return
        for lines in self._log_blocks(ref, handle, tail, follow):
            yield from lines

    def log_text(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """`logs` as text, one chunk of whole lines per block read from the file (see Executor.log_text)."""
        ref = _parse(handle)
        if ref is not None:
            yield from logfiles.as_text(self._log_blocks(ref, handle, tail, follow))

    async def log_stream(self, handle: Handle, tail: int | None = None, follow: bool = False) -> AsyncIterator[str]:
        """`log_text` without a thread per follower: what is in the file now is read in a worker thread,
        block by block; following then waits on the event loop (`logfiles.follow_text`), and the followers
        of one replica share one poll of it a second."""
        ref = _parse(handle)
        if ref is None:
            return
        end = logfiles.file_size(ref.log_path)
        start = 0 if tail is None else await asyncio.to_thread(logfiles.tail_start, ref.log_path, tail, end)
        blocks = logfiles.as_text(logfiles.read_blocks(ref.log_path, start, end))
        done = object()
        while (chunk := await asyncio.to_thread(next, blocks, done)) is not done:
            yield str(chunk)
        if follow:
            key = f"{ref.state_dir}:{ref.supervisor.pid}:{ref.supervisor.start_time}"
            ended = lambda: self._ended.ask(key, lambda: self.poll(handle).state.is_terminal)  # noqa: E731
            async for chunk in logfiles.follow_text(ref.log_path, end, ended):
                yield chunk

    def _log_blocks(self, ref: _Ref, handle: Handle, tail: int | None, follow: bool) -> Iterator[list[str]]:
        end = logfiles.file_size(ref.log_path)
        start = 0 if tail is None else logfiles.tail_start(ref.log_path, tail, end)
        yield from logfiles.read_blocks(ref.log_path, start, end)
        if follow:
            yield from logfiles.follow_blocks(ref.log_path, end, lambda: self.poll(handle).state.is_terminal,
                                              self.follow_interval_s)

    def close(self) -> None:
        """Forget this instance's child objects and cancel its timers; replicas keep running. Idempotent."""
        self.warm.close()
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        self._reap()


def _replica_env(base: Mapping[str, str], env: Mapping[str, str], run_as: RunAs | None,
                 marker: str) -> dict[str, str]:
    """The command's environment: base, the launch's variables, the identity of `run_as` (HOME, USER,
    LOGNAME) and the replica marker."""
    merged = {**base, **env}
    if run_as is not None:
        merged.update(HOME=run_as.home, USER=run_as.user, LOGNAME=run_as.user)
    merged[MARKER_VAR] = marker
    return merged


def _ended_status(ended: Mapping[str, Any]) -> ReplicaStatus:
    code = ended.get("exit_code")
    exit_code = int(code) if isinstance(code, int) else None
    signal_name = ended.get("signal")
    detail = f"killed by {signal_name}" if signal_name else f"exit code {exit_code}"
    if ended.get("stop_requested"):
        forced = " after the grace period" if ended.get("killed") else ""
        return ReplicaStatus(ReplicaState.STOPPED, exit_code, f"stopped ({detail}{forced})")
    if exit_code == 0:
        return ReplicaStatus(ReplicaState.SUCCEEDED, 0, "exit code 0")
    return ReplicaStatus(ReplicaState.FAILED, exit_code, detail)

