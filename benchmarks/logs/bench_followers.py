"""1,000 concurrent `logs -f` followers against a real server on SQLite, while another client times the API.

Starts `gpupool up` (local executor: the replica is a real supervised process) on a fresh home and SQLite
database, submits one job that prints a numbered line every `--interval` seconds for `--seconds`, and then:

1. times `--requests` authenticated `GET /api/v1/workloads` (what `gpupool ls` asks) and `--cli` whole
   `gpupool ls` commands with no follower (the baseline);
2. opens `--followers` connections `GET .../logs?follow=true` from a second process (plain asyncio sockets,
   so the client's own cost stays small), and once every one has its answer's headers, times the same
   requests again while they stream; samples the server's RSS, threads and open files meanwhile;
3. waits for the job to end and for every follower's stream to end, and counts the lines each received
   (each must have every line the job printed).

    python benchmarks/logs/bench_followers.py [--followers 1000] [--seconds 60] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "control_plane"))
from bench import percentile, server  # the control-plane benchmark's server helper

from gpupool.client.http import Client

MARK = b"tick "  # every line the job prints starts with it; counted in the raw streams
CONNECT_TIMEOUT_S = 300.0  # opening 1,000 connections on a loaded 2-CPU machine: generous


def latency_summary(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of durations in seconds, in milliseconds."""
    return {"p50_ms": round(percentile(values, 50) * 1000, 1), "p99_ms": round(percentile(values, 99) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "n": len(values)}


def server_usage(pid: int) -> dict[str, int]:
    """The server process's resident memory (MiB), threads and open file descriptors, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss_mib": int(fields["VmRSS"].split()[0]) // 1024, "threads": int(fields["Threads"]),
            "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def time_api(client: Client, requests: int, cli: int) -> dict[str, Any]:
    """Authenticated `GET /api/v1/workloads` one after another, then whole `gpupool ls` commands."""
    api = []
    for _ in range(requests):
        began = time.perf_counter()
        client.list_workloads(status=["pending", "scheduled", "starting", "running"])
        api.append(time.perf_counter() - began)
    env = {**os.environ, "GPUPOOL_URL": client.url, "GPUPOOL_TOKEN": client.token or ""}
    commands = []
    for _ in range(cli):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpupool", "ls"], env=env, capture_output=True, check=True)
        commands.append(time.perf_counter() - began)
    return {"api_get_workloads": latency_summary(api), "cli_gpupool_ls": latency_summary(commands) if cli else None}


# --------------------------------------------------------------------------------- the followers' process
async def follow(host: str, port: int, path: str, token: str, connected: list[int]) -> int:
    """One follower: send the request, wait for the headers, then count the job's lines until the end."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
                 "Connection: close\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace").splitlines()[0])
    connected.append(1)
    lines, carry = 0, b""
    while chunk := await reader.read(65536):
        data = carry + chunk
        lines += data.count(MARK)
        carry = data[-(len(MARK) - 1):]  # a mark split between two reads is counted once, in the next
        lines -= carry.count(MARK)
    lines += carry.count(MARK)
    writer.close()
    return lines


async def followers_main(url: str, token: str, workload_id: int, count: int) -> None:
    """Open `count` followers; print "connected" once all have their headers, then the lines of each."""
    parsed = httpx.URL(url)
    path = f"/api/v1/workloads/{workload_id}/logs?follow=true"
    connected: list[int] = []
    tasks = [asyncio.create_task(follow(parsed.host, parsed.port or 80, path, token, connected))
             for _ in range(count)]
    began = time.monotonic()
    while len(connected) < count and time.monotonic() - began < CONNECT_TIMEOUT_S:
        if any(task.done() and task.exception() for task in tasks):
            break
        await asyncio.sleep(0.05)
    print(json.dumps({"connected": len(connected), "seconds": round(time.monotonic() - began, 2)}), flush=True)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"lines": [r for r in results if isinstance(r, int)],
                      "errors": [f"{type(r).__name__}: {r}" for r in results if isinstance(r, BaseException)][:5],
                      "error_count": sum(1 for r in results if isinstance(r, BaseException))}), flush=True)


# ------------------------------------------------------------------------------------------- the benchmark
def run(args: argparse.Namespace) -> dict[str, Any]:
    lines = int(args.seconds / args.interval)
    command = f"for i in $(seq 1 {lines}); do echo tick $i; sleep {args.interval}; done"
    with tempfile.TemporaryDirectory() as tmp, server(f"sqlite:///{Path(tmp) / 'gpupool.db'}", Path(tmp)) as client:
        pid = client.server_pid  # type: ignore[attr-defined]
        wid = client.submit({"command": command, "resources": {"cpu": "100m", "memory": "64MiB"}}).workload.id
        client.wait(wid, ["running"], timeout_s=120)
        idle_usage = server_usage(pid)
        without = time_api(client, args.requests, args.cli)
        child = subprocess.Popen([sys.executable, __file__, "--child", client.url, client.token or "", str(wid),
                                  str(args.followers)], stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None
        opened = json.loads(child.stdout.readline())
        samples: list[dict[str, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(server_usage(pid))
                stop.wait(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with_followers = time_api(client, args.requests, args.cli)
        still_running = client.get_workload(wid).status == "running"
        ended = json.loads(child.stdout.readline())
        child.wait(60)
        stop.set()
        sampler.join()
        status = client.wait(wid, ["succeeded", "failed"], timeout_s=120).status
    received = ended["lines"]
    return {"benchmark": "log followers", "database": "sqlite", "followers": args.followers,
            "connected": opened["connected"], "seconds_to_connect_all": opened["seconds"],
            "job_lines": lines, "job_status": status, "timed_while_job_ran": still_running,
            "without_followers": without, "with_followers": with_followers,
            "server_idle": idle_usage,
            "server_with_followers_max": {key: max(s[key] for s in samples) for key in samples[0]} if samples else {},
            "lines_per_follower": {"min": min(received, default=0), "median": statistics.median(received or [0]),
                                   "max": max(received, default=0), "complete": sum(n == lines for n in received)},
            "follower_errors": ended["error_count"], "error_samples": ended["errors"]}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        url, token, wid, count = sys.argv[2:6]
        asyncio.run(followers_main(url, token, int(wid), int(count)))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the job prints")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two lines of the job")
    parser.add_argument("--requests", type=int, default=100, help="API requests timed per phase")
    parser.add_argument("--cli", type=int, default=5, help="whole `gpupool ls` commands timed per phase")
    print(json.dumps(run(parser.parse_args()), indent=2))


if __name__ == "__main__":
    main()
