"""The fencing watchdog of a Ray node: stops the node's replicas once the node is no longer in the cluster.

Ray does not kill a partitioned node's processes, and the replicas' supervisors run in sessions of their
own (so that a crash of the agent does not take them down), so neither the death of the raylet nor a cut
link stops them. The server, meanwhile, retries their workloads on other nodes. This watchdog, started by
the node agent as a process of its own (it outlives the agent, like the replicas), stops every replica of
the node (SIGKILL: the retry may already be writing next to them) when

- the node's raylet is gone (Ray declares the node dead at once; a restarted node is a new Ray node), or
- the Ray head (GCS) has been unreachable for `--after` seconds (a partition; the default bound is twice
  Ray's detection time, so a replica the server has replaced is stopped within that bound).

The server being down does not count: replicas run on across a server restart. One watchdog per agent
home (an flock on `fence.lock`); it exits after fencing. Stdlib only, plus the local executor.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from gpupool.executors.local import LocalExecutor
from gpupool.executors.ray_agent import reachable

CHECK_S = 0.5  # how often the watchdog looks: a tenth of the default fencing bound
LOCK_FILE = "fence.lock"


def running_handles(executor: LocalExecutor) -> list[dict[str, Any]]:
    """The handles of the replicas under `executor.root` that have not ended, from their state directories."""
    handles = []
    for path in sorted((executor.root / "replicas").glob("*/*/handle.json")):
        try:
            handle: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not executor.poll(handle).state.is_terminal:
            handles.append(handle)
    return handles


def fence(executor: LocalExecutor) -> int:
    """Stop every running replica of `executor` without a grace period; how many were asked to stop."""
    handles = running_handles(executor)
    for handle in handles:
        executor.stop(handle, 0)
    return len(handles)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def watch(home: Path, head: str, raylet_pid: int, after_s: float) -> str:
    """Loop until the node must be fenced, fence it and say why (see the module docstring)."""
    executor = LocalExecutor(home / "executor")
    last_contact = time.monotonic()
    while True:
        if not _alive(raylet_pid):
            reason = f"the raylet (pid {raylet_pid}) is gone"
            break
        now = time.monotonic()
        if reachable(head):
            last_contact = now
        elif now - last_contact >= after_s:
            reason = f"the Ray head {head} has been unreachable for {now - last_contact:.1f} s"
            break
        time.sleep(CHECK_S)
    return f"{reason}: stopped {fence(executor)} replica(s)"


def main(argv: list[str] | None = None) -> int:
    """Run the watchdog (exits at once when another one watches the same home)."""
    parser = argparse.ArgumentParser(description="Stop a Ray node's gpupool replicas when the node leaves.")
    parser.add_argument("--home", type=Path, required=True, help="the node agent's home")
    parser.add_argument("--head", required=True, help="host:port of the Ray head (GCS)")
    parser.add_argument("--raylet-pid", type=int, required=True, help="pid of this node's raylet")
    parser.add_argument("--after", type=float, required=True, help="seconds without the head before fencing")
    args = parser.parse_args(argv)
    lock = os.open(args.home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another watchdog watches this node
    print(f"gpupool fencing watchdog: {watch(args.home, args.head, args.raylet_pid, args.after)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
