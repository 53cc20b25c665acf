"""The replica supervisor: a tiny process that runs one replica's command and records how it ended.

The local executor starts one supervisor per replica, in a session of its own, as
`python -I -S _supervisor.py STATE_DIR [OPTIONS] -- ARGV...`. It uses the standard library only (it runs
with `-S`, without site-packages) and outlives the server that started it, so a replica keeps running, and
its exit code is still recorded, when the server crashes or restarts.

Options: `--lock-fd N` (an open file description of STATE_DIR/supervisor.lock, flock-ed by the executor
before it spawned this process, held here for the supervisor's whole life), `--run-as UID:GID:G1,G2` (the
identity the command runs as; needs root), `--read-only PATH` (repeatable: PATH is bind-mounted read-only
in a private mount namespace of the command; needs root), `--log-cap BYTES` (the most the log file may
hold; default 1 GiB).

What it does:
1. holds the lock (taking it itself when no `--lock-fd` is given, and exiting at once when another process
   holds it: one supervisor per state directory, ever), and writes `supervisor.json` ({pid, start_time});
2. forks the command: in the child, a new session (so the command and everything it spawns form one
   process group whose id is the command's pid), the read-only mounts, the drop to `--run-as`, and
   PR_SET_PDEATHSIG=SIGKILL (the command dies with its supervisor, even by kill -9), then exec; writes
   `command.json` ({pid, start_time}) into STATE_DIR; the command's stdout and stderr are a pipe that the
   supervisor copies to its own stdout (the log file) until the log holds `--log-cap` bytes, then writes
   one line saying so and discards the rest (still reading, so the command never blocks on a full pipe);
3. on SIGTERM, SIGINT or SIGHUP (a stop request): sends SIGTERM to the command's process group, and SIGKILL
   to the group when the grace period (read from `stop.json`, written by the executor before it signals)
   has passed and the command still runs; on SIGUSR2, appends the command's output from then on to the file
   `relog.json` names (a warm notebook slot handed to a notebook, whose log that is), with the same cap,
   and writes `relogged.json`;
4. when the command ends: sends SIGKILL to whatever is left in its process group, writes `exit.json`
   ({exit_code, signal, stop_requested, killed, ended_at}) atomically, and exits.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import select
import signal
import sys
import time

COMMAND_FILE = "command.json"
EXIT_FILE = "exit.json"
STOP_FILE = "stop.json"
SUPERVISOR_FILE = "supervisor.json"
SUPERVISOR_LOCK = "supervisor.lock"
RELOG_FILE = "relog.json"  # {"log_path": ...}: where output goes from a SIGUSR2 on (a warm notebook slot)
RELOGGED_FILE = "relogged.json"  # written once the output goes there
DEFAULT_GRACE_S = 10.0
MAX_GRACE_S = 7 * 24 * 3600.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SPAWN_FAILED_EXIT_CODE = 127
DEFAULT_LOG_CAP = 1024**3  # 1 GiB of output per replica run: far more than anyone reads, far less than a disk
PIPE_READ = 64 * 1024
# Linux constants (<sys/prctl.h>, <sched.h>, <sys/mount.h>)
PR_SET_PDEATHSIG = 1
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 1, 32, 4096, 16384, 1 << 18


class RunAs:
    """The OS identity the command runs as: uid, primary gid and supplementary groups."""

    def __init__(self, uid: int, gid: int, groups: list[int]) -> None:
        self.uid, self.gid, self.groups = uid, gid, groups

    @classmethod
    def parse(cls, text: str) -> RunAs:
        """From `UID:GID:G1,G2` (the groups may be empty)."""
        uid, gid, groups = text.split(":")
        return cls(int(uid), int(gid), [int(g) for g in groups.split(",") if g])


def _libc_call(libc: ctypes.CDLL, name: str, *args: object) -> None:
    if getattr(libc, name)(*args) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"{name}: {os.strerror(error)}")


def make_read_only(libc: ctypes.CDLL, paths: list[str]) -> None:
    """In a new private mount namespace, bind-mount each path over itself read-only."""
    _libc_call(libc, "unshare", CLONE_NEWNS)
    _libc_call(libc, "mount", b"none", b"/", None, MS_REC | MS_PRIVATE, None)
    for path in paths:
        raw = os.fsencode(path)
        _libc_call(libc, "mount", raw, raw, None, MS_BIND | MS_REC, None)
        _libc_call(libc, "mount", b"none", raw, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None)


_PLAIN_TEXT = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-.")


def _plain_json(value: object) -> str | None:
    """`value` as JSON for the files written on every start (ints, finite floats, booleans, null, names of
    letters and digits), or None for anything else. It spares the supervisor importing `json` (and with it
    `re`): a few milliseconds of CPU at every replica start."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value - value == 0.0:  # finite (inf - inf and NaN are NaN)
        return repr(value)
    if isinstance(value, str) and _PLAIN_TEXT.issuperset(value):
        return f'"{value}"'
    return None


def json_text(data: dict[str, object]) -> str:
    """`data` (string keys) as one JSON object; the same document `json.dumps` gives, whatever the values."""
    parts = [(_plain_json(key), _plain_json(value)) for key, value in data.items()]
    if all(key is not None and value is not None for key, value in parts):
        return "{" + ", ".join(f"{key}: {value}" for key, value in parts) + "}"
    import json  # noqa: PLC0415  (rare values only: a path, an infinite grace)

    return json.dumps(data)


def json_number(text: str, key: str) -> float:
    """The number `key` has in the flat JSON object `text` (as `json_text` or `json.dumps` write it: no
    nesting); ValueError when it is not there or not a number."""
    _, found, rest = text.partition(f'"{key}":')
    if not found:
        raise ValueError(f"no {key}")
    end = min((i for i in (rest.find(","), rest.find("}")) if i >= 0), default=len(rest))
    return float(rest[:end].strip())


def write_json_atomic(path: str, data: dict[str, object]) -> None:
    """Write `data` as JSON to `path` so that readers see either nothing or the whole file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(json_text(data))
    os.replace(tmp, path)


def process_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (field 22 of /proc/<pid>/stat), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])


class Supervisor:
    """Runs one command, forwards stop requests to its process group and records its exit."""

    def __init__(self, state_dir: str, argv: list[str], run_as: RunAs | None = None,
                 read_only: list[str] | None = None, lock_fd: int | None = None,
                 log_cap: int = DEFAULT_LOG_CAP) -> None:
        self.state_dir = state_dir
        self.log_cap = log_cap
        self.log_capped = False
        self.argv = argv
        self.run_as = run_as
        self.read_only = read_only or []
        self.lock_fd = lock_fd
        self.child_pid: int | None = None
        self.output_fd = -1
        self.stop_requested = False
        self.term_sent = False
        self.killed = False
        self.deadline: float | None = None

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def _grace_s(self) -> float:
        try:
            with open(self._path(STOP_FILE), encoding="utf-8") as stop:
                grace = json_number(stop.read(), "grace_s")
        except (OSError, ValueError):
            return DEFAULT_GRACE_S
        return min(max(0.0, grace), MAX_GRACE_S)  # NaN compares false: max() keeps 0.0

    def _signal_group(self, signum: int) -> None:
        if self.child_pid is None:
            return
        try:  # noqa: SIM105  (contextlib is one import more in a process that should start fast)
            os.killpg(self.child_pid, signum)
        except (ProcessLookupError, PermissionError):
            pass

    def on_stop_signal(self, _signum: int, _frame: object) -> None:
        """A stop request: SIGTERM to the group now, SIGKILL at the (earliest requested) deadline."""
        self.stop_requested = True
        deadline = time.monotonic() + self._grace_s()
        if self.deadline is None or deadline < self.deadline:
            self.deadline = deadline
        if self.child_pid is None:
            return  # not started yet: run() forwards the request right after the start
        if not self.term_sent:
            self.term_sent = True
            self._signal_group(signal.SIGTERM)
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            self.on_deadline(signal.SIGALRM, None)
        else:
            signal.setitimer(signal.ITIMER_REAL, remaining)

    def on_deadline(self, _signum: int, _frame: object) -> None:
        """The grace period is over: SIGKILL the whole group."""
        self.killed = True
        self._signal_group(signal.SIGKILL)

    def on_relog(self, _signum: int, _frame: object) -> None:
        """Send the output to the log file `relog.json` names from now on (with a fresh cap)."""
        import json  # noqa: PLC0415  (once in a warm slot's life; not at every start)

        try:
            with open(self._path(RELOG_FILE), encoding="utf-8") as relog:
                path = str(json.load(relog)["log_path"])
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
        except (OSError, ValueError, KeyError, TypeError):
            return
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self.log_capped = False
        write_json_atomic(self._path(RELOGGED_FILE), {"log_path": path})

    def hold_lock(self) -> bool:
        """Hold STATE_DIR/supervisor.lock for this process's life; False when another process holds it."""
        if self.lock_fd is not None:
            os.set_inheritable(self.lock_fd, False)  # the command must not keep it after we are gone
            return True
        fd = os.open(self._path(SUPERVISOR_LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self.lock_fd = fd
        return True

    def _spawn(self) -> int:
        """Fork and exec the command (see the module docstring); OSError when it could not be executed."""
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getpid()
        env = dict(os.environ)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)  # reports an error of the child before exec
        self.output_fd, output_in = os.pipe2(os.O_CLOEXEC)  # the command's stdout and stderr
        pid = os.fork()
        if pid == 0:  # pragma: no cover  (the child; only async-signal-safe work until exec)
            try:
                os.close(read_end)
                os.dup2(output_in, 1)
                os.dup2(output_in, 2)
                os.setsid()
                if self.read_only:
                    make_read_only(libc, self.read_only)
                if self.run_as is not None:
                    os.setgroups(self.run_as.groups)
                    os.setresgid(self.run_as.gid, self.run_as.gid, self.run_as.gid)
                    os.setresuid(self.run_as.uid, self.run_as.uid, self.run_as.uid)
                    os.chdir(os.getcwd())  # the user must be able to reach the working directory themselves
                _libc_call(libc, "prctl", PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)  # after setuid: it resets
                if os.getppid() != parent:
                    os._exit(SPAWN_FAILED_EXIT_CODE)  # the supervisor died meanwhile
                for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGALRM, *STOP_SIGNALS):
                    signal.signal(signum, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_SETMASK, ())
                os.execve(self.argv[0], self.argv, env)
            except BaseException as error:
                try:
                    os.write(write_end, f"{getattr(error, 'strerror', None) or error}".encode()[:4000])
                finally:
                    os._exit(SPAWN_FAILED_EXIT_CODE)
        os.close(write_end)
        os.close(output_in)
        with os.fdopen(read_end, "rb") as report:
            failure = report.read()
        if failure:
            os.waitpid(pid, 0)
            raise OSError(0, failure.decode(errors="replace"))
        return pid

    def run(self) -> int:
        """Start the command, wait for it, record the exit; returns the supervisor's own exit status."""
        if not self.hold_lock():
            print("gpupool: another supervisor runs this replica already", file=sys.stderr, flush=True)
            return 3
        write_json_atomic(self._path(SUPERVISOR_FILE), {"pid": os.getpid(),
                                                        "start_time": process_start_time(os.getpid())})
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_stop_signal)
        signal.signal(signal.SIGALRM, self.on_deadline)
        signal.signal(signal.SIGUSR2, self.on_relog)
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)  # no stop request while half started
        try:
            pid = self._spawn()
        except OSError as error:
            print(f"gpupool: cannot start {self.argv[0]}: {error.strerror}", file=sys.stderr, flush=True)
            self._record(SPAWN_FAILED_EXIT_CODE, None)
            return 0
        self.child_pid = pid
        write_json_atomic(self._path(COMMAND_FILE), {"pid": pid, "start_time": process_start_time(pid)})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if self.stop_requested:
            self.on_stop_signal(signal.SIGTERM, None)
        status = self._pump(pid)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._signal_group(signal.SIGKILL)  # leftovers of the group (background children) end with it
        code = os.waitstatus_to_exitcode(status) if status is not None else SPAWN_FAILED_EXIT_CODE
        self._record(128 - code if code < 0 else code, -code if code < 0 else None)
        return 0

    def _pump(self, pid: int) -> int | None:
        """Copy the command's output to the log until the command has ended and its output is drained (or
        nothing more came for a second after its end and the SIGKILL of its leftovers); returns the wait
        status, None when it cannot be known."""
        status: int | None = None
        ended = False
        while True:
            ready = select.select([self.output_fd], [], [], 0.2 if not ended else 1.0)[0]
            if ready:
                data = os.read(self.output_fd, PIPE_READ)
                if not data:
                    break  # every writer is gone
                self._write_log(data)
            if not ended:
                try:
                    got, raw = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    got, raw, status = pid, 0, None
                    ended = True
                    continue
                if got == pid:
                    ended, status = True, raw
                    self._signal_group(signal.SIGKILL)  # background leftovers hold the pipe: end them
            elif not ready:
                break
        os.close(self.output_fd)
        return status if ended else self._wait(pid)

    def _write_log(self, data: bytes) -> None:
        if self.log_capped:
            return
        try:
            size = os.fstat(1).st_size
            room = self.log_cap - size
            if len(data) > room:
                self.log_capped = True
                data = data[:max(room, 0)] + (f"\n[gpupool: this log reached its limit of {self.log_cap} bytes; "
                                              "later output is discarded]\n").encode()
            while data:
                data = data[os.write(1, data):]
        except OSError:
            pass  # a full disk must not stop the replica

    @staticmethod
    def _wait(pid: int) -> int | None:
        while True:
            try:
                return os.waitpid(pid, 0)[1]  # EINTR is retried after the signal handlers ran (PEP 475)
            except ChildProcessError:
                return None

    def _record(self, exit_code: int, signum: int | None) -> None:
        write_json_atomic(self._path(EXIT_FILE), {
            "exit_code": exit_code,
            "signal": signal.Signals(signum).name if signum else None,
            "stop_requested": self.stop_requested,
            "killed": self.killed,
            "ended_at": time.time(),
        })


USAGE = ("usage: _supervisor.py STATE_DIR [--lock-fd N] [--run-as UID:GID:GROUPS] [--read-only PATH]... "
         "[--log-cap BYTES] -- ARGV...")


def main(args: list[str]) -> int:
    """Entry point: `STATE_DIR [OPTIONS] -- ARGV...` (see the module docstring)."""
    if "--" not in args[1:] or len(args) < 3:
        print(USAGE, file=sys.stderr)
        return 2
    split = args.index("--", 1)
    options, argv = args[1:split], args[split + 1:]
    run_as, read_only, lock_fd, log_cap = None, [], None, DEFAULT_LOG_CAP
    try:
        while options:
            name, value, options = options[0], options[1], options[2:]
            if name == "--run-as":
                run_as = RunAs.parse(value)
            elif name == "--read-only":
                read_only.append(value)
            elif name == "--lock-fd":
                lock_fd = int(value)
            elif name == "--log-cap":
                log_cap = int(value)
            else:
                raise ValueError(name)
    except (IndexError, ValueError):
        print(USAGE, file=sys.stderr)
        return 2
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    return Supervisor(args[0], argv, run_as, read_only, lock_fd, log_cap).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
