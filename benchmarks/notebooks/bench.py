"""Notebook benchmarks: create -> ready (first 200 through the proxy) cold and with the warm pool, proxy overhead
per request, kernel WebSocket round trip. Starts a real `gpupool up` (local executor) on a fresh home and prints
a JSON summary.

    python benchmarks/notebooks/bench.py [--notebooks 5] [--requests 200] [--round-trips 50] [--warm 5]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

from gpupool.client.http import Client
from gpupool.server.notebook_keys import NotebookKeys

# a benchmark of the notebook path: one OS identity also when run as root; fast loops so polling adds little
SERVER_ENV = {"GPUPOOL_SCHEDULE_INTERVAL_S": "0.05", "GPUPOOL_RECONCILE_INTERVAL_S": "0.05",
              "GPUPOOL_LOG_LEVEL": "warning", "GPUPOOL_MULTI_USER": "false", "GPUPOOL_NODE_CPUS": "16",
              "GPUPOOL_NODE_MEMORY": "64GiB",
              "GPUPOOL_NOTEBOOK_WARM_POOL": "0"}


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50, p95 and mean of durations in seconds, as milliseconds."""
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1), "p95_ms": round(p95 * 1000, 1),
            "mean_ms": round(statistics.fmean(ordered) * 1000, 1), "n": len(ordered)}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, headers: dict[str, str], deadline_s: float = 180) -> float:
    """Seconds until GET url answers 200."""
    start = time.monotonic()
    while time.monotonic() - start < deadline_s:
        try:
            if httpx.get(url, headers=headers, timeout=5).status_code == 200:
                return time.monotonic() - start
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    raise TimeoutError(f"{url} not ready within {deadline_s} s")


def round_trips(ws_url: str, headers: dict[str, str], count: int) -> list[float]:
    """Durations of `count` kernel executions of 1+1 on one WebSocket (request sent -> execute_result)."""
    out = []
    with connect(ws_url, additional_headers=headers, max_size=None) as ws:
        for _ in range(count):
            msg_id = uuid.uuid4().hex
            message = {"header": {"msg_id": msg_id, "username": "b", "session": "s", "msg_type": "execute_request",
                                  "version": "5.3"}, "parent_header": {}, "metadata": {}, "channel": "shell",
                       "content": {"code": "1+1", "silent": False, "store_history": False, "user_expressions": {},
                                   "allow_stdin": False}}
            start = time.monotonic()
            ws.send(json.dumps(message))
            while True:
                reply = json.loads(ws.recv(timeout=60))
                if reply["parent_header"].get("msg_id") == msg_id and reply["header"]["msg_type"] == "execute_result":
                    break
            out.append(time.monotonic() - start)
    return out


def parked_slots(home: Path) -> int:
    """How many warm slots are parked and ready (their ready tokens) under `home`'s executor."""
    return len(list((home / "executor" / "warm" / "ready").glob("*/*")))


def measure_warm(count: int) -> list[float]:
    """create -> ready of `count` notebooks, one after the other, on a server with a warm pool of 1 whose slot
    is parked before each create (the steady state of a pool that keeps up with its notebooks)."""
    with tempfile.TemporaryDirectory() as tmp:
        home, port = Path(tmp) / "home", free_port()
        env = {**os.environ, **SERVER_ENV, "GPUPOOL_HOME": str(home), "GPUPOOL_PORT": str(port),
               "GPUPOOL_NOTEBOOK_WARM_POOL": "1"}
        server = subprocess.Popen([sys.executable, "-m", "gpupool", "up"], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        ready = []
        try:
            wait_ready(base + "/healthz", {})
            token = (home / "token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            with Client(base, token) as client:
                for i in range(count):
                    deadline = time.monotonic() + 180
                    while parked_slots(home) < 1 and time.monotonic() < deadline:
                        time.sleep(0.1)
                    start = time.monotonic()
                    nid = client.submit({"kind": "notebook", "name": f"w{i}", "idle_timeout": "off",
                                         "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
                    wait_ready(f"{base}/notebooks/{nid}/api/status", auth)
                    ready.append(time.monotonic() - start)
                    client.cancel(nid)
        finally:
            server.terminate()
            server.wait(60)
            stop_parked(home)
    return ready


def stop_parked(home: Path) -> None:
    """Stop the parked slots a benchmark server left (they outlive a server by design)."""
    from gpupool.executors.local import LocalExecutor  # noqa: PLC0415

    LocalExecutor(home / "executor").warm.stop_unclaimed()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start a server, measure, stop it."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, **SERVER_ENV, "GPUPOOL_HOME": str(Path(tmp) / "home"), "GPUPOOL_PORT": str(port)}
        server = subprocess.Popen([sys.executable, "-m", "gpupool", "up"], env=env, stdout=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/healthz", {})
            token = (Path(tmp) / "home" / "token").read_text().strip()
            auth = {"Authorization": f"Bearer {token}"}
            with Client(base, token) as client:
                ready = []
                for i in range(args.notebooks):
                    start = time.monotonic()
                    nid = client.submit({"kind": "notebook", "name": f"b{i}", "idle_timeout": "off",
                                         "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
                    wait_ready(f"{base}/notebooks/{nid}/api/status", auth)
                    ready.append(time.monotonic() - start)
                    if i < args.notebooks - 1:
                        client.cancel(nid)
                endpoint = client.get_workload(nid).replica_list[0].endpoints[0]
                keys = NotebookKeys.from_file(Path(tmp) / "home" / "notebook.key")
                direct = {"Authorization": f"token {keys.jupyter_token(nid, client.get_workload(nid).attempt)}"}
                timings: dict[str, list[float]] = {"proxy": [], "direct": []}
                with httpx.Client(timeout=30) as http:
                    for _ in range(args.requests):
                        for name, url, headers in (
                                ("proxy", f"{base}/notebooks/{nid}/api/status", auth),
                                ("direct", f"http://{endpoint.host}:{endpoint.node_port}/notebooks/{nid}/api/status",
                                 direct)):
                            start = time.monotonic()
                            assert http.get(url, headers=headers).status_code == 200
                            timings[name].append(time.monotonic() - start)
                kernel = httpx.post(f"{base}/notebooks/{nid}/api/kernels", json={"name": "python3"}, headers=auth,
                                    timeout=60).json()["id"]
                ws = f"ws://127.0.0.1:{port}/notebooks/{nid}/api/kernels/{kernel}/channels"
                trips = round_trips(ws, auth, args.round_trips)
                client.cancel(nid)
        finally:
            server.terminate()
            server.wait(60)
    overhead = statistics.median(timings["proxy"]) - statistics.median(timings["direct"])
    warm = {"create_to_ready_warm": summary_ms(measure_warm(args.warm))} if args.warm else {}
    return {"create_to_ready_cold": summary_ms(ready), **warm, "request_via_proxy": summary_ms(timings["proxy"]),
            "request_direct": summary_ms(timings["direct"]), "proxy_overhead_p50_ms": round(overhead * 1000, 2),
            "kernel_ws_round_trip": summary_ms(trips)}


def main() -> None:
    """Parse the arguments, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=int, default=5, help="notebooks created one after the other")
    parser.add_argument("--requests", type=int, default=200, help="GET /api/status via the proxy and directly")
    parser.add_argument("--round-trips", type=int, default=50, help="kernel executions of 1+1 over the WebSocket")
    parser.add_argument("--warm", type=int, default=5, help="notebooks created with a warm pool (0: skip)")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
