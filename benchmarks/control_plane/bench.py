"""Control-plane benchmarks: submit-to-running latency, `ls` over 10,000 workloads, 50 concurrent submitters.

Each benchmark starts a real `gpupool up` (local executor, real processes) on a fresh home directory and a
fresh database (SQLite by default, or PostgreSQL with --postgres-url), and prints a JSON summary.

    python benchmarks/control_plane/bench.py latency    [--jobs 100]
    python benchmarks/control_plane/bench.py ls         [--workloads 10000] [--postgres-url URL]
    python benchmarks/control_plane/bench.py concurrent [--clients 50 --jobs 1000] [--postgres-url URL] [--profile DIR]
    python benchmarks/control_plane/bench.py throughput [--clients 1,8 --jobs 1000] [--batch K] [--profile DIR]
                                                        (see throughput.py)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
from gpupool.domain.status import WorkloadStatus, transition
from gpupool.executors.local import LocalExecutor
from gpupool.store.db import Database
from gpupool.store.orm import WorkloadRow
from gpupool.store.repos import accounts
from gpupool.store.scratch import scratch_postgres_database

REPO = Path(__file__).resolve().parents[2]
PROFILE_RATE = 100  # py-spy samples per second per thread: py-spy's default
FAST = {"GPUPOOL_SCHEDULE_INTERVAL_S": "1", "GPUPOOL_RECONCILE_INTERVAL_S": "1", "GPUPOOL_LOG_LEVEL": "warning",
        "GPUPOOL_MULTI_USER": "false"}  # a control-plane benchmark: one OS identity, also when run as root


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    low, high = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (k - low)


def summary_ms(values: list[float]) -> dict[str, float]:
    """p50, p95, max and mean of durations given in seconds, in milliseconds."""
    return {"p50_ms": round(percentile(values, 50) * 1000, 1), "p95_ms": round(percentile(values, 95) * 1000, 1),
            "max_ms": round(max(values) * 1000, 1), "mean_ms": round(statistics.fmean(values) * 1000, 1),
            "n": len(values)}


@contextmanager
def fresh_database(postgres_url: str | None, home: Path) -> Iterator[str]:
    """A SQLite file in `home`, or a new PostgreSQL database dropped afterwards."""
    if not postgres_url:
        yield f"sqlite:///{home / 'gpupool.db'}"
        return
    with scratch_postgres_database(postgres_url, "gpupool_bench") as url:
        yield url


@contextmanager
def server(database_url: str, home: Path, *args: str, env_extra: dict[str, str] | None = None) -> Iterator[Client]:
    """A `gpupool up` process on a free port; stops it and every replica it started afterwards. The client
    has the server's process id as `server_pid` (for a profiler)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
    env.update(FAST, GPUPOOL_HOME=str(home), GPUPOOL_DATABASE_URL=database_url, HOME=str(home), **(env_extra or {}))
    log = (home / "server.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--port", str(port), "--node-name", "bench",
                                *args], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start; see {home / 'server.log'}")
            time.sleep(0.1)
        with Client(url, (home / "token").read_text().strip(), timeout_s=60) as client:
            client.server_pid = process.pid  # type: ignore[attr-defined]
            yield client
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        stop_replicas(home / "executor")


def process_cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) the process `pid` has used so far, all its threads (/proc/PID/stat); with
    `children`, those of its children that ended and were waited for instead (a replica's supervisor and
    its command, once the executor reaped it)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11  # cutime, cstime (fields 16, 17) or utime, stime (fields 14, 15)
    return (int(fields[first]) + int(fields[first + 1])) / os.sysconf("SC_CLK_TCK")


def server_cpu_s(pid: int, children: bool = False) -> float:
    """`process_cpu_s` of the server `pid` plus that of its worker processes, when it runs them (its children
    whose command lines name gpupool.server.workers.scheduler_process or .reconciler_process; with a
    reconciler process, the replicas' supervisors are its children, so `children` counts them there)."""
    total = process_cpu_s(pid, children)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            command = (stat.parent / "cmdline").read_bytes()
            if parent == pid and (b"scheduler_process" in command or b"reconciler_process" in command):
                total += process_cpu_s(int(stat.parent.name), children)
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    return total


def start_profile(pid: int, out: Path, gil: bool = False, waits: bool = False) -> subprocess.Popen[bytes] | None:
    """py-spy recording every thread of `pid` into `out` (collapsed stacks), or None without py-spy; with `gil`,
    only the samples of the thread that holds the GIL (what one core of Python spends its time on); with
    `waits`, the samples of waiting threads too (where a request spends its time when no CPU does)."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    return subprocess.Popen([spy, "record", "--threads", "--nonblocking", "--format", "raw", "--rate",
                             str(PROFILE_RATE), "--pid", str(pid), "-o", str(out),
                             *(["--gil"] if gil else []), *(["--idle"] if waits else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def machine_busy_s() -> float:
    """CPU seconds all cores of this machine have spent busy since boot (/proc/stat: all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


def stop_replicas(root: Path) -> None:
    """SIGKILL whatever replicas are left (they outlive the server on purpose)."""
    if root.is_dir():
        executor = LocalExecutor(root)
        for handle in root.glob("replicas/*/*/handle.json"):
            executor.stop(json.loads(handle.read_text()), grace_s=0)
        executor.close()


# ----------------------------------------------------------------------------------------------- latency
def bench_latency(args: argparse.Namespace) -> dict[str, Any]:
    """Submit one-replica jobs one after another on an idle pool; time submit -> running."""
    spec = "name: lat\ncommand: sleep 60\nresources: {cpu: 100m, memory: 64MiB}\n"
    client_side, server_side = [], []
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres_url, Path(tmp)) as url, \
            server(url, Path(tmp)) as client:
        client.submit(spec)  # warm-up (first imports, first process)
        for _ in range(args.jobs):
            started = time.perf_counter()
            wid = client.submit(spec).workload.id
            while (workload := client.get_workload(wid)).status != "running":
                time.sleep(0.005)
            client_side.append(time.perf_counter() - started)
            running_at = next(e.at for e in workload.events if e.to_status == "running")
            server_side.append(running_at - workload.submitted_at)
            client.cancel(wid)
    return {"benchmark": "submit-to-running", "database": "postgresql" if args.postgres_url else "sqlite",
            "client_observed": summary_ms(client_side), "server_events": summary_ms(server_side)}


# ---------------------------------------------------------------------------------------------------- ls
def seed(database_url: str, count: int, pending: int) -> None:
    """Insert `count` workloads of the admin in project default: all but `pending` of them ended."""
    db = Database(database_url)
    now = time.time()
    ended = [WorkloadStatus.SUCCEEDED, WorkloadStatus.FAILED, WorkloadStatus.CANCELLED]
    spec = {"kind": "job", "name": "seed", "project": "default", "queue": "default", "priority": 500,
            "replicas": 1, "resources": {"cpu": 1, "memory": "1GiB"}, "command": "sleep 600", "preemptible": True,
            "retries": 0}
    with db.session() as session:
        admin = accounts.user_by_name(session, "admin")
        project = accounts.project_by_name(session, "default")
        assert admin is not None and project is not None
        for k in range(count):
            row = WorkloadRow(name=f"seed-{k}", kind="job", project_id=project.id, queue="default", user_id=admin.id,
                              spec=spec, priority=500, replica_count=1, submitted_at=now - count + k,
                              updated_at=now, message="submitted", attempt=0, retries_used=0, preemptions=0)
            session.add(row)
            session.flush()
            if k >= pending:
                target = ended[k % 3]
                if target != WorkloadStatus.CANCELLED:
                    transition(row, WorkloadStatus.SCHEDULED, "seeded", now)
                    transition(row, WorkloadStatus.STARTING, "seeded", now)
                transition(row, target, "seeded", now)
    db.dispose()


def timed(call: Callable[[], object], repeat: int) -> list[float]:
    durations = []
    for _ in range(repeat):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def bench_ls(args: argparse.Namespace) -> dict[str, Any]:
    """`ls` with 10,000 workloads in the store: the API call and the whole CLI command."""
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres_url, Path(tmp)) as url:
        home = Path(tmp)
        with server(url, home):
            pass  # first start: schema and administrator
        seed(url, args.workloads, pending=100)
        with server(url, home) as client:
            time.sleep(3)  # let the scheduler place what fits and give the rest their reasons
            total = client.list_workloads(status=[]).total
            active = ["pending", "scheduled", "starting", "running", "preempted"]
            api_default = timed(lambda: client.list_workloads(status=active), 50)
            api_all = timed(lambda: client.list_workloads(status=[]), 50)
            api_1000 = timed(lambda: client.list_workloads(status=[], limit=1000), 20)
            env = {**os.environ, "GPUPOOL_URL": client.url, "GPUPOOL_TOKEN": client.token or ""}
            cli = timed(lambda: subprocess.run([sys.executable, "-m", "gpupool", "ls", "--all"], env=env,
                                               capture_output=True, check=True), 10)
    return {"benchmark": "ls", "database": "postgresql" if args.postgres_url else "sqlite", "workloads": total,
            "api_ls_active_50": summary_ms(api_default), "api_ls_all_50": summary_ms(api_all),
            "api_ls_all_1000": summary_ms(api_1000), "cli_ls_all_process": summary_ms(cli)}


# -------------------------------------------------------------------------------------------- concurrent
def bench_concurrent(args: argparse.Namespace) -> dict[str, Any]:
    """`clients` threads submit `jobs` jobs in all (idempotency keys), then some are retried with the same
    keys; checks no error, no lost and no duplicated workload, and times how long the pool takes to run all."""
    per_client = args.jobs // args.clients
    results: dict[str, int] = {}
    errors: list[str] = []
    latencies: list[float] = []
    first: list[float] = []  # each client's first submit: the server's start-up wave (50 connections at once)
    later: list[float] = []
    lock = threading.Lock()
    spec = "name: c{t}-{k}\ncommand: 'true'\nresources: {{cpu: 50m, memory: 32MiB}}\n"
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres_url, Path(tmp)) as url, \
            server(url, Path(tmp), env_extra=process_env(args)) as admin:

        def submitter(t: int) -> None:
            with Client(admin.url, admin.token, timeout_s=120) as client:
                for k in range(per_client):
                    try:
                        began = time.perf_counter()
                        wid = client.submit(spec.format(t=t, k=k), idempotency_key=f"c{t}-{k}").workload.id
                        with lock:
                            results[f"c{t}-{k}"] = wid
                            latencies.append(time.perf_counter() - began)
                            (first if k == 0 else later).append(latencies[-1])
                    except Exception as exc:  # a benchmark counts every failure rather than stopping
                        with lock:
                            errors.append(f"{type(exc).__name__}: {exc}")

        pid = admin.server_pid  # type: ignore[attr-defined]
        spy = start_profile(pid, Path(args.profile) / "concurrent.txt", args.profile_gil,
                            args.profile_waits) if args.profile else None
        time.sleep(1 if spy else 0)  # py-spy attaches
        cpu_before, own_before, busy_before = server_cpu_s(pid), time.process_time(), machine_busy_s()
        children_before = server_cpu_s(pid, children=True)
        started = time.perf_counter()
        threads = [threading.Thread(target=submitter, args=(t,)) for t in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        submit_s = time.perf_counter() - started
        cpu_submit = server_cpu_s(pid) - cpu_before
        own_submit, busy_submit = time.process_time() - own_before, machine_busy_s() - busy_before
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(60)
        replayed = {key: admin.submit(spec.format(t=key[1:].split("-")[0], k=key.split("-")[1]),
                                      idempotency_key=key) for key in sorted(results)[:100]}
        duplicates = sum(1 for key, r in replayed.items() if r.created or r.workload.id != results[key])
        stored = list_all_ids(admin)
        deadline = time.monotonic() + args.drain_timeout
        while (left := admin.list_workloads(status=["pending", "scheduled", "starting", "running"]).total) and \
                time.monotonic() < deadline:
            time.sleep(1)
        drain_s = time.perf_counter() - started
        cpu_all = server_cpu_s(pid) - cpu_before
        replicas_cpu = server_cpu_s(pid, children=True) - children_before
        succeeded = admin.list_workloads(status=["succeeded"]).total
    return {"benchmark": "concurrent submit", "database": "postgresql" if args.postgres_url else "sqlite",
            "clients": args.clients, "submitted": len(results), "errors": len(errors), "error_samples": errors[:3],
            "stored": len(stored), "unique_ids": len(set(results.values())),
            "lost": len(set(results.values()) - set(stored)), "duplicated_on_retry": duplicates,
            "submit_seconds": round(submit_s, 2), "submits_per_second": round(len(results) / submit_s, 1),
            "submit_latency": {**summary_ms(latencies), "p99_ms": round(percentile(latencies, 99) * 1000, 1)},
            "first_submit_of_each_client": summary_ms(first) if first else {},
            "later_submits": {**summary_ms(later), "p99_ms": round(percentile(later, 99) * 1000, 1)} if later else {},
            "all_ran_seconds": round(drain_s, 1), "succeeded": succeeded, "not_finished": left,
            "server_cpu_ms_per_submit": {"while_submitting": round(cpu_submit * 1000 / max(len(results), 1), 1),
                                         "until_all_ran": round(cpu_all * 1000 / max(len(results), 1), 1),
                                         "replicas_reaped_until_all_ran": round(
                                             replicas_cpu * 1000 / max(len(results), 1), 1)},
            "while_submitting_cpu_s": {"server": round(cpu_submit, 2), "clients": round(own_submit, 2),
                                       "machine": round(busy_submit, 2), "cores": os.cpu_count()},
            "load_average": os.getloadavg()}


def list_all_ids(client: Client) -> list[int]:
    """Every workload id, following the pages."""
    ids: list[int] = []
    before: int | None = None
    while True:
        page = client.list_workloads(status=[], limit=1000, before_id=before)
        ids += [w.id for w in page.items]
        if page.next_before_id is None:
            return ids
        before = page.next_before_id


def process_env(args: argparse.Namespace) -> dict[str, str]:
    """The server's environment for `--scheduler-process` and `--reconciler-process` (nothing for "default")."""
    env = {}
    for name in ("scheduler_process", "reconciler_process"):
        chosen = getattr(args, name, "default")
        if chosen != "default":
            env[f"GPUPOOL_{name.upper()}"] = "true" if chosen == "on" else "false"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=["latency", "ls", "concurrent", "throughput"])
    parser.add_argument("--postgres-url", help="run on a new database of this PostgreSQL server")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--workloads", type=int, default=None, help="stored before the run (ls, throughput)")
    parser.add_argument("--clients", default=None, help="concurrent: a number; throughput: a list, e.g. 1,8")
    parser.add_argument("--drain-timeout", type=float, default=900)
    parser.add_argument("--batch", type=int, default=0, help="throughput: jobs per batch request (0: one by one)")
    parser.add_argument("--scheduler-process", choices=["on", "off", "default"], default="default",
                        help="throughput, concurrent: the scheduling loop in a process of its own, or in a thread")
    parser.add_argument("--reconciler-process", choices=["on", "off", "default"], default="default",
                        help="throughput, concurrent: the server's reconciler in a process of its own, or in a thread")
    parser.add_argument("--profile", help="throughput, concurrent: record the server with py-spy into this directory")
    parser.add_argument("--profile-gil", action="store_true",
                        help="concurrent, throughput: record only the GIL's holder")
    parser.add_argument("--profile-waits", action="store_true",
                        help="concurrent, throughput: record waiting threads too (py-spy --idle)")
    args = parser.parse_args()
    from throughput import SEEDED, bench_throughput  # noqa: PLC0415  (it imports this module as `bench`)

    if args.jobs is None:
        args.jobs = 100 if args.benchmark == "latency" else 1000
    if args.workloads is None:
        args.workloads = SEEDED if args.benchmark == "throughput" else 10_000
    if args.clients is None:
        args.clients = "1,8" if args.benchmark == "throughput" else "50"
    if args.benchmark == "concurrent":
        args.clients = int(args.clients)
        if args.profile:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
    run = {"latency": bench_latency, "ls": bench_ls, "concurrent": bench_concurrent,
           "throughput": bench_throughput}[args.benchmark]
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
