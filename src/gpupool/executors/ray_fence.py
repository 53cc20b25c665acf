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

Stop orders: the server treats a node whose agent has not answered for its silence limit as lost, while Ray
still reports the node alive (so neither rule above fires), and a stop it sends then cannot reach the agent.
It leaves a stop order instead, one file per replica under `<orders>/<node name>/` on the shared storage
(`write_order`); the watchdog, which does not depend on the agent, carries out the orders of its node on
every check (`carry_out_orders`). An order names a replica only (workload, replica number, attempt): the
watchdog stops it through its own state directory, never through a path from the order, and takes orders
only from files owned by its own user (the server's, in a directory only it can write).
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

from gpupool.executors.base import ExecutorError
from gpupool.executors.local import HANDLE_FILE, LocalExecutor
from gpupool.executors.ray_agent import reachable

CHECK_S = 0.5  # how often the watchdog looks: a tenth of the default fencing bound
LOCK_FILE = "fence.lock"
ORDER_SUFFIX = ".stop.json"
PRIVATE_DIR_MODE = 0o700  # the orders directory: only the server's user writes (and reads) orders


def write_order(orders: Path, node: str, replica: dict[str, Any], grace_s: float) -> Path:
    """Leave an order for the watchdog of `node` to stop `replica` (its local handle: workload_id, replica,
    attempt) with `grace_s` seconds of grace; idempotent (one file per replica attempt, replaced atomically).
    ValueError for a node name that is not a plain file name."""
    if not node or node.startswith(".") or "/" in node:
        raise ValueError(f"node name {node!r} cannot name an orders directory")
    order = {
        "workload_id": str(replica["workload_id"]),
        "replica": int(replica["replica"]),
        "attempt": int(replica["attempt"]),
        "grace_s": float(grace_s),
    }
    folder = orders / node
    orders.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    folder.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
    path = folder / f"{order['workload_id']}-{order['replica']}-{order['attempt']}{ORDER_SUFFIX}"
    partial = path.with_name("." + path.name + ".partial")
    partial.write_text(json.dumps(order), encoding="utf-8")
    os.replace(partial, path)
    return path


def _ordered_handle(executor: LocalExecutor, path: Path) -> tuple[dict[str, Any], float] | None:
    """(the local handle, grace) of the replica an order file names, or None for an order that is not the
    server's (another owner), cannot be read, or names no replica of this node."""
    try:
        if path.stat().st_uid != os.geteuid():
            return None
        order = json.loads(path.read_text(encoding="utf-8"))
        state_dir = executor.state_dir(str(order["workload_id"]), int(order["replica"]), int(order["attempt"]))
        handle: dict[str, Any] = json.loads((state_dir / HANDLE_FILE).read_text())
        return handle, float(order.get("grace_s", 0.0))
    except (OSError, ValueError, KeyError, TypeError, ExecutorError):
        return None


def carry_out_orders(executor: LocalExecutor, orders: Path) -> list[str]:
    """Stop the replicas that the order files in `orders` (this node's folder) name, and remove those files
    (after the stop: a watchdog killed in between carries the order out again, harmlessly). What was done,
    one line per order."""
    done = []
    for path in sorted(orders.glob("*" + ORDER_SUFFIX)):
        found = _ordered_handle(executor, path)
        if found is not None:
            handle, grace_s = found
            executor.stop(handle, grace_s)
            done.append(
                f"stop order {path.name}: replica {handle.get('replica')} of {handle.get('workload_id')} asked to stop"
            )
        else:
            done.append(f"stop order {path.name}: ignored (not the server's, unreadable or no such replica)")
        path.unlink(missing_ok=True)
    return done


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


def watch(home: Path, head: str, raylet_pid: int, after_s: float, orders: Path | None = None) -> str:
    """Loop until the node must be fenced, fence it and say why (see the module docstring); meanwhile carry
    out the stop orders left in `orders` (this node's folder), if given."""
    executor = LocalExecutor(home / "executor")
    last_contact = time.monotonic()
    while True:
        for line in carry_out_orders(executor, orders) if orders is not None else []:
            print(f"gpupool fencing watchdog: {line}", flush=True)
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
    parser.add_argument("--orders", type=Path, default=None, help="this node's folder of stop orders")
    args = parser.parse_args(argv)
    lock = os.open(args.home / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return 0  # another watchdog watches this node
    reason = watch(args.home, args.head, args.raylet_pid, args.after, args.orders)
    print(f"gpupool fencing watchdog: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
