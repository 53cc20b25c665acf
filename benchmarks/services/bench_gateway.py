"""The service gateway's cost: added latency per request and per streamed token against the replica reached
directly, requests/s through the gateway, and the first token of a request that wakes a service from zero.

Starts a real `gpupool up` (local executor) on a fresh home, builds the tiny GPT-2 of
examples/tiny_llm_server, and runs it as two services: `warm` (one replica, always up) and `cold` (scaled to
zero after 1 s idle). Prints one JSON object of figures (milliseconds unless said).

    .venv/bin/python benchmarks/services/bench_gateway.py --requests 200 --tokens 64 --clients 8 --seconds 10 --cold 3
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from gpupool.client.http import Client
from gpupool.client.services import list_services

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "tiny_llm_server"
FAST = {"GPUPOOL_SCHEDULE_INTERVAL_S": "0.1", "GPUPOOL_RECONCILE_INTERVAL_S": "0.1", "GPUPOOL_LOG_LEVEL": "warning",
        "GPUPOOL_MULTI_USER": "false", "GPUPOOL_MIN_RUNTIME_S": "0"}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def ms(values: list[float]) -> dict[str, float]:
    """p50 and p99 of durations in seconds, as milliseconds."""
    return {"p50": round(percentile(values, 50) * 1000, 2), "p99": round(percentile(values, 99) * 1000, 2)}


def cpu_milli() -> str:
    """Half the CPUs of this machine for each replica (two replicas run at once)."""
    return f"{max(100, (os.cpu_count() or 2) * 1000 // 2 - 100)}m"


@contextmanager
def gpupool_server(home: Path) -> Iterator[Client]:
    """`gpupool up` on a free port; stopped (and its replicas with it) afterwards."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update(FAST, GPUPOOL_HOME=str(home), HOME=str(home))
    log = (home / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--port", str(port), "--node-name", "bench"],
                               env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait(lambda: _healthy(url), 60, "the server to start")
        with Client(url, (home / "token").read_text().strip(), timeout_s=60) as client:
            yield client
            for w in client.list_workloads(limit=1000).items:
                if w.status in ("pending", "scheduled", "starting", "running"):
                    client.cancel(w.id)
            wait(lambda: not any(w.status in ("scheduled", "starting", "running")
                                 for w in client.list_workloads(limit=1000).items), 60, "replicas to stop")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def wait(check: Callable[[], object], timeout_s: float, what: str) -> None:
    """Poll `check` until it is truthy; RuntimeError after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def service(name: str, model_dir: Path, **fields: Any) -> dict[str, Any]:
    """A service spec serving the tiny model as `name`."""
    return {"kind": "service", "name": name, "models": [name], "resources": {"cpu": cpu_milli(), "memory": "1GiB"},
            "command": f"{sys.executable} {EXAMPLE / 'server.py'} {model_dir} --model-name {name} --port $PORT",
            "scaling": {"cold_start_timeout": 300}} | fields


def timed_requests(url: str, headers: dict[str, str], body: dict[str, Any], count: int) -> list[float]:
    """Durations of `count` sequential POSTs to `url`/v1/completions (the body read to its end)."""
    out = []
    with httpx.Client(timeout=120) as http:
        for _ in range(count):
            started = time.perf_counter()
            response = http.post(url + "/v1/completions", json=body, headers=headers)
            response.read()
            out.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text
    return out


def throughput(url: str, headers: dict[str, str], body: dict[str, Any], clients: int, seconds: float) -> float:
    """Requests/s of `clients` concurrent clients sending back to back for `seconds`."""
    done = [0] * clients
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        with httpx.Client(timeout=120) as http:
            while time.perf_counter() < deadline:
                if http.post(url + "/v1/completions", json=body, headers=headers).status_code == 200:
                    done[i] += 1

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return round(sum(done) / seconds, 1)


def first_token(url: str, headers: dict[str, str], model: str) -> float:
    """Seconds from sending a streamed completion to its first token."""
    started = time.perf_counter()
    with httpx.stream("POST", url + "/v1/completions", headers=headers, timeout=300,
                      json={"model": model, "prompt": "x", "max_tokens": 4, "stream": True}) as response:
        lines = []
        for line in response.iter_lines():
            if line.startswith("data: {"):
                return time.perf_counter() - started
            lines.append(line)
        raise RuntimeError(f"no token streamed: {response.status_code} {lines[:5]}")


def main() -> None:
    """Run the benchmarks and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200, help="sequential requests per latency figure")
    parser.add_argument("--tokens", type=int, default=64, help="tokens per streamed request")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients for requests/s")
    parser.add_argument("--seconds", type=float, default=10, help="duration of the requests/s run")
    parser.add_argument("--cold", type=int, default=3, help="scale-from-zero starts to time")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, gpupool_server(Path(tmp)) as client:
        model_dir = Path(tmp) / "model"
        subprocess.run([sys.executable, str(EXAMPLE / "build_model.py"), str(model_dir)], check=True,
                       capture_output=True)
        client.submit(service("warm", model_dir, replicas={"min": 1, "max": 1}))
        client.submit(service("cold", model_dir, replicas={"min": 0, "max": 1},
                              scaling={"cold_start_timeout": 300, "scale_down_delay": 1}))
        gateway, headers = client.url, {"Authorization": f"Bearer {client.token}"}
        wait(lambda: any(s.name == "warm" and s.ready for s in list_services(client)), 300, "the warm replica")
        child = next(w for w in client.list_workloads().items if w.name == "warm-r1")
        endpoint = client.get_workload(child.id).replica_list[0].endpoints[0]
        direct = f"http://{endpoint.host}:{endpoint.node_port}"
        one = {"model": "warm", "prompt": "x", "max_tokens": 1}
        stream = {"model": "warm", "prompt": "x", "max_tokens": args.tokens, "stream": True}
        timed_requests(gateway, headers, one, 20)  # warm-up of both paths
        timed_requests(direct, {}, one, 20)
        d1, g1 = timed_requests(direct, {}, one, args.requests), timed_requests(gateway, headers, one, args.requests)
        n = max(20, args.requests // 4)
        ds, gs = timed_requests(direct, {}, stream, n), timed_requests(gateway, headers, stream, n)
        figures: dict[str, Any] = {
            "request_direct_ms": ms(d1), "request_gateway_ms": ms(g1),
            "added_per_request_ms": {q: round(ms(g1)[q] - ms(d1)[q], 2) for q in ("p50", "p99")},
            "added_per_streamed_token_ms": round((statistics.median(gs) - statistics.median(ds)) / args.tokens
                                                 * 1000, 3),
            "requests_per_s_direct": throughput(direct, {}, one, args.clients, args.seconds),
            "requests_per_s_gateway": throughput(gateway, headers, one, args.clients, args.seconds)}
        print(json.dumps(figures), flush=True)
        cold = []
        for _ in range(args.cold):
            wait(lambda: not any(s.name == "cold" and s.replicas for s in list_services(client)), 120, "zero")
            cold.append(first_token(gateway, headers, "cold"))
        figures["scale_from_zero_first_token_s"] = {"p50": round(statistics.median(cold), 2),
                                                    "all": [round(c, 2) for c in cold]}
        print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
