"""The replica supervisor: a tiny process that runs one replica's command and records how it ended.

The local executor starts one supervisor per replica, in a session of its own, as
`python -I -S _supervisor.py STATE_DIR -- ARGV...`. It uses the standard library only (it runs with `-S`,
without site-packages) and outlives the server that started it, so a replica keeps running, and its exit
code is still recorded, when the server crashes or restarts.

What it does:
1. starts ARGV in a new session (so the command and everything it spawns form one process group whose id
   is the command's pid) and writes `command.json` ({pid, start_time}) into STATE_DIR;
2. on SIGTERM, SIGINT or SIGHUP (a stop request): sends SIGTERM to the command's process group, and SIGKILL
   to the group when the grace period (read from `stop.json`, written by the executor before it signals)
   has passed and the command still runs;
3. when the command ends: sends SIGKILL to whatever is left in its process group, writes `exit.json`
   ({exit_code, signal, stop_requested, killed, ended_at}) atomically, and exits.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

COMMAND_FILE = "command.json"
EXIT_FILE = "exit.json"
STOP_FILE = "stop.json"
DEFAULT_GRACE_S = 10.0
MAX_GRACE_S = 7 * 24 * 3600.0
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
SPAWN_FAILED_EXIT_CODE = 127


def write_json_atomic(path: str, data: dict[str, object]) -> None:
    """Write `data` as JSON to `path` so that readers see either nothing or the whole file."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(data, out)
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

    def __init__(self, state_dir: str, argv: list[str]) -> None:
        self.state_dir = state_dir
        self.argv = argv
        self.child_pid: int | None = None
        self.stop_requested = False
        self.term_sent = False
        self.killed = False
        self.deadline: float | None = None

    def _path(self, name: str) -> str:
        return os.path.join(self.state_dir, name)

    def _grace_s(self) -> float:
        try:
            with open(self._path(STOP_FILE), encoding="utf-8") as stop:
                grace = float(json.load(stop).get("grace_s", DEFAULT_GRACE_S))
        except (OSError, ValueError, AttributeError, TypeError):
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

    def _spawn(self) -> int:
        reset = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGALRM, *STOP_SIGNALS)
        return os.posix_spawn(self.argv[0], self.argv, dict(os.environ), setsid=True, setsigmask=(),
                              setsigdef=reset)

    def run(self) -> int:
        """Start the command, wait for it, record the exit; returns the supervisor's own exit status."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self.on_stop_signal)
        signal.signal(signal.SIGALRM, self.on_deadline)
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
        status = self._wait(pid)
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._signal_group(signal.SIGKILL)  # leftovers of the group (background children) end with it
        code = os.waitstatus_to_exitcode(status) if status is not None else SPAWN_FAILED_EXIT_CODE
        self._record(128 - code if code < 0 else code, -code if code < 0 else None)
        return 0

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


def main(args: list[str]) -> int:
    """Entry point: `STATE_DIR -- ARGV...`."""
    if len(args) < 3 or args[1] != "--":
        print("usage: _supervisor.py STATE_DIR -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    return Supervisor(args[0], args[2:]).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
