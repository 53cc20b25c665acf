"""The 1,000-job burst in cluster mode: one-CPU jobs over a three-node Ray cluster, jobs per second end to end.

A 3-node Ray 2.60 cluster in network namespaces (the test support's `start_cluster`; needs root), two CPUs a
node (`ray start --num-cpus=2`), so six one-CPU jobs run at once. Inside the head's namespace a server runs
in cluster mode (`gpupool up --ray`, default intervals, single-user), and the benchmark submits N jobs
(`command: 'true'`, `cpu: 1`) through the batch endpoint, then counts ended jobs until all have ended.
Reported: the submission time, the time to the last end, jobs per second end to end (N divided by the time
from the first submission to the last end), the time at which each tenth of the jobs had ended, and how
many did not succeed.

    sudo .venv/bin/python benchmarks/cluster/bench_burst.py [--jobs 1000]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the tests' cluster support

import httpx
from tests.support.ray_cluster import start_cluster

from gpupool.api.schemas import MAX_BATCH
from gpupool.client.http import Client

NODES = [("node-1", ""), ("node-2", ""), ("node-3", "")]
SPEC = {"kind": "job", "command": "true", "resources": {"cpu": 1, "memory": "64MiB"}}
SERVER_START_S = 300.0  # a Ray driver and three agents on a loaded 2-core machine: minutes at worst
BURST_LIMIT_S = 3600.0  # gives up after an hour: ~0.3 jobs/s, far below anything usable
POLL_S = 0.5  # how often ended jobs are counted: a small share of a burst that takes minutes
ENDED = ["succeeded", "failed", "cancelled"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait(check: object, limit_s: float, what: str) -> None:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(POLL_S)
    raise SystemExit(f"gave up waiting for {what} after {limit_s:.0f} s")


def burst(address: str, root: Path, jobs: int) -> None:
    """Start the server in cluster mode, submit the burst, and print the figures (in the head's namespace)."""
    home, port = root / "server", _free_port()
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GPUPOOL_HOME": str(home), "GPUPOOL_MULTI_USER": "false", "GPUPOOL_TRUST_USERS": "true"}
    with (home / "server.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "gpupool", "up", "--ray", address, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, SERVER_START_S, "the server")
        with Client(url, (home / "token").read_text().strip(), timeout_s=300) as client:
            _wait(lambda: len(client.nodes()) == len(NODES), SERVER_START_S, "three nodes")
            _run(client, jobs)
    finally:
        server.terminate()
        server.wait(60)


def _run(client: Client, jobs: int) -> None:
    specs = [{**SPEC, "name": f"burst-{i}"} for i in range(jobs)]
    began = time.monotonic()
    for start in range(0, jobs, MAX_BATCH):
        client.submit_batch(specs[start : start + MAX_BATCH])
    submitted = time.monotonic() - began
    print(f"{jobs} jobs submitted in {submitted:.1f} s", flush=True)
    marks, ended = {}, 0
    deadline = began + BURST_LIMIT_S
    while ended < jobs and time.monotonic() < deadline:
        ended = client.list_workloads(status=ENDED, limit=1).total
        elapsed = time.monotonic() - began
        for tenth in range(1, 11):
            if ended >= jobs * tenth // 10 and tenth not in marks:
                marks[tenth] = elapsed
        time.sleep(POLL_S)
    total = time.monotonic() - began
    failed = jobs - client.list_workloads(status=["succeeded"], limit=1).total
    print(f"ended: {ended}/{jobs} in {total:.1f} s; not succeeded: {failed}")
    print(f"end to end: {jobs / total:.2f} jobs/s")
    print("ended by: " + ", ".join(f"{t * 10}% {s:.0f} s" for t, s in sorted(marks.items())), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--inner", default="", help=argparse.SUPPRESS)  # address:root, in the head's namespace
    args = parser.parse_args()
    if args.inner:
        address, root_text = args.inner.split("|", 1)
        burst(address, Path(root_text), args.jobs)
        return
    root = Path(tempfile.mkdtemp(prefix="gpupool-bench-burst-"))
    began = time.monotonic()
    cluster = start_cluster(root, NODES)
    print(f"3-node cluster started in {time.monotonic() - began:.1f} s", flush=True)
    try:
        argv = [sys.executable, __file__, "--jobs", str(args.jobs), "--inner", f"{cluster.address}|{root}"]
        subprocess.run(cluster.exec_argv(cluster.head, argv), check=False)
    finally:
        cluster.teardown()


if __name__ == "__main__":
    main()
