"""Submission throughput: 64 simulated nodes x 8 GPUs, 5,000 workloads already stored, 1..N SDK clients.

    python benchmarks/control_plane/bench.py throughput [--clients 1,8] [--jobs 1000] [--batch 0]
                                                        [--postgres-url URL] [--profile DIR]
                                                        [--scheduler-process on|off]
                                                        [--reconciler-process on|off]

The server runs the fake executor (nothing is started: a replica runs for one reconcile poll, then
succeeds), so what is measured is the control plane alone: the API, the store and the workers. For each
client count, that many threads share `--jobs` one-replica jobs (`gpu: 0.1`), each submitted with an
idempotency key (or `--batch K` jobs per request through the batch endpoint). Reported: submissions per
second, submit latency p50/p99 (per request), bind latency p95 (the `scheduled` event's time minus the
submit time; every job fits, so all are bound, and any that is not is counted), and the check that nothing
was lost or doubled (every returned id is stored once, and 100 resubmissions with known keys create
nothing). The server's CPU per submission is split between its background workers (their
`gpupool_worker_cpu_seconds_total` on /metrics, read before and after the phase) and the rest: the requests
(request threads and the event loop) and what no worker counts; beside it, the submitters' own CPU per
submission (this process), how busy the whole machine was during the phase, and how many single submits
shared a write transaction on average (`gpupool_submit_transactions_total`; SQLite groups the submits that
wait for its write lock together, store/group_commit.py). `--profile DIR` records every server
thread with py-spy during each phase and writes the collapsed stacks there (see profile_top.py), and the
server's log at the end. `--scheduler-process on` runs the server's scheduling loop in a process of its own,
`off` in a thread of the server (`GPUPOOL_SCHEDULER_PROCESS`; by default, the server's own choice: a process
when the machine has more than one CPU); `--reconciler-process` likewise for the reconciler
(`GPUPOOL_RECONCILER_PROCESS`); the server's CPU includes those processes'.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench import (
    fresh_database,
    list_all_ids,
    percentile,
    process_cpu_s,
    process_env,
    seed,
    server,
    server_cpu_s,
    start_profile,
)
from prometheus_client.parser import text_string_to_metric_families

from gpupool.client.http import Client

NODES, GPUS = 64, "8xA100-80GB"  # the setup of the throughput issue: 512 simulated cards
SEEDED = 5_000  # workloads (ended) in the store before the first submit
SPEC = "name: t{key}\ncommand: 'true'\nresources: {{gpu: 0.1}}\n"
CPU_SAMPLE, PASSES_SAMPLE = "gpupool_worker_cpu_seconds_total", "gpupool_worker_passes_total"
PASSES_SHOWN = ("scheduler", "reconciler")  # the workers whose passes a submission causes


def _submitter(url: str, token: str, keys: list[str], batch: int,
               out: dict[str, Any]) -> None:
    """Submit `keys` (one job each) one request at a time, or `batch` per request; records latencies."""
    with Client(url, token, timeout_s=120) as client:
        for start in range(0, len(keys), max(batch, 1)):
            chunk = keys[start:start + max(batch, 1)]
            specs = [SPEC.format(key=key) for key in chunk]
            began = time.perf_counter()
            try:
                if batch:
                    answers = client.submit_batch(specs, idempotency_keys=chunk).items
                else:
                    answers = [client.submit(specs[0], idempotency_key=chunk[0])]
            except Exception as exc:  # a benchmark counts every failure rather than stopping
                with out["lock"]:
                    out["errors"].append(f"{type(exc).__name__}: {exc}")
                continue
            elapsed = time.perf_counter() - began
            with out["lock"]:
                out["latencies"].append(elapsed)
                for key, answer in zip(chunk, answers, strict=True):
                    out["ids"][key] = answer.workload.id


def machine_cpu_s() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine so far, every CPU together (/proc/stat; idle and iowait are
    not busy)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = fields[3] + fields[4]
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), sum(fields) / os.sysconf("SC_CLK_TCK")


def _bind_latencies(client: Client, ids: list[int]) -> tuple[list[float], int]:
    """Per workload, seconds from submit to its `scheduled` event; those never scheduled are counted."""
    def one(wid: int) -> float | None:
        w = client.get_workload(wid)
        return next((e.at - w.submitted_at for e in w.events if e.to_status == "scheduled"), None)

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(one, ids))
    return [f for f in found if f is not None], sum(1 for f in found if f is None)


def _worker_counts(admin: Client, sample_name: str) -> dict[str, float]:
    """Each background worker's counter `sample_name` so far (its CPU seconds, its passes), from /metrics."""
    return {sample.labels["worker"]: sample.value
            for family in text_string_to_metric_families(admin.prometheus_metrics())
            for sample in family.samples if sample.name == sample_name}


def _submit_transactions(admin: Client) -> tuple[float, float]:
    """The single submits' write transactions so far and the submits they ran (/metrics; 0 on a server that
    does not count them)."""
    samples = {sample.name: sample.value for family in text_string_to_metric_families(admin.prometheus_metrics())
               for sample in family.samples}
    return (samples.get("gpupool_submit_transactions_total", 0.0),
            samples.get("gpupool_submits_in_transactions_total", 0.0))


def _by_part(cpu_s: float, workers: dict[str, float], submitted: int) -> dict[str, float]:
    """Milliseconds of server CPU per submission: each worker that used any, and the rest (the requests)."""
    per = {name: round(spent * 1000 / max(submitted, 1), 2) for name, spent in workers.items() if spent > 0}
    return {"requests and the rest": round((cpu_s - sum(workers.values())) * 1000 / max(submitted, 1), 2),
            **dict(sorted(per.items(), key=lambda item: -item[1]))}


def _phase(admin: Client, clients: int, args: argparse.Namespace) -> dict[str, Any]:
    """One measured phase with `clients` submitters; returns its figures."""
    phase = f"p{clients}"
    keys = [f"{phase}-{t}-{k}" for t in range(clients) for k in range(args.jobs // clients)]
    out: dict[str, Any] = {"lock": threading.Lock(), "errors": [], "latencies": [], "ids": {}}
    pid = admin.server_pid  # type: ignore[attr-defined]
    spy = start_profile(pid, Path(args.profile) / f"{phase}.txt", args.profile_gil,
                        args.profile_waits) if args.profile else None
    time.sleep(1 if spy else 0)  # py-spy attaches
    cpu_before = server_cpu_s(admin.server_pid)  # type: ignore[attr-defined]
    clients_before, machine_before = process_cpu_s(os.getpid()), machine_cpu_s()
    workers_before = _worker_counts(admin, CPU_SAMPLE)
    passes_before = _worker_counts(admin, PASSES_SAMPLE)
    transactions_before = _submit_transactions(admin)
    started = time.perf_counter()
    threads = [threading.Thread(target=_submitter, args=(admin.url, admin.token, keys[t::clients], args.batch, out))
               for t in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    cpu = server_cpu_s(admin.server_pid) - cpu_before  # type: ignore[attr-defined]
    clients_cpu = process_cpu_s(os.getpid()) - clients_before
    busy, total = (after - before for after, before in zip(machine_cpu_s(), machine_before, strict=True))
    workers = {name: spent - workers_before.get(name, 0.0)
               for name, spent in _worker_counts(admin, CPU_SAMPLE).items()}
    passes = {name: int(count - passes_before.get(name, 0.0))
              for name, count in _worker_counts(admin, PASSES_SAMPLE).items() if name in PASSES_SHOWN}
    transactions, grouped = (after - before for after, before in
                             zip(_submit_transactions(admin), transactions_before, strict=True))
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
    time.sleep(3)  # the last submissions get scheduled
    ids = out["ids"]
    replays = sorted(ids)[:100]
    doubled = sum(1 for key in replays if (r := admin.submit(
        SPEC.format(key=key), idempotency_key=key)).created
        or r.workload.id != ids[key])
    binds, unbound = _bind_latencies(admin, list(ids.values()))
    lat = out["latencies"]
    return {"clients": clients, "batch": args.batch, "submitted": len(ids), "errors": len(out["errors"]),
            "error_samples": out["errors"][:3], "seconds": round(elapsed, 2),
            "submits_per_second": round(len(ids) / elapsed, 1),
            "server_cpu_ms_per_submit": round(cpu * 1000 / max(len(ids), 1), 1),
            "server_cpu_ms_per_submit_by_part": _by_part(cpu, workers, len(ids)),
            "clients_cpu_ms_per_submit": round(clients_cpu * 1000 / max(len(ids), 1), 1),
            "machine_cpu_busy": f"{busy / max(total, 1e-9):.0%} of {os.cpu_count()} CPUs",
            "worker_passes": passes,
            "submits_per_write_transaction": round(grouped / transactions, 2) if transactions else None,
            "request_latency_ms": {"p50": round(percentile(lat, 50) * 1000, 1),
                                   "p99": round(percentile(lat, 99) * 1000, 1)} if lat else {},
            "bind_latency_ms": {"p50": round(percentile(binds, 50) * 1000, 1),
                                "p95": round(percentile(binds, 95) * 1000, 1),
                                "p99": round(percentile(binds, 99) * 1000, 1),
                                "max": round(max(binds) * 1000, 1)} if binds else {},
            "never_scheduled": unbound, "doubled_on_retry": doubled, "ids": ids}


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Seed 5,000 workloads, then one phase per client count on the same server; checks lost/doubled."""
    counts = [int(c) for c in str(args.clients).split(",")]
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    up = ("--gpus", GPUS, "--nodes", str(NODES), "--cpus", "64", "--memory", "512GiB")
    with tempfile.TemporaryDirectory() as tmp, fresh_database(args.postgres_url, Path(tmp)) as url:
        home = Path(tmp)
        env = {"GPUPOOL_EXECUTOR": "fake", **process_env(args)}
        with server(url, home, *up, env_extra=env):
            pass  # first start: schema and administrator
        seed(url, args.workloads, pending=0)
        phases = []
        with server(url, home, *up, env_extra=env) as admin:
            for clients in counts:
                phases.append(_phase(admin, clients, args))
            stored = list_all_ids(admin)
        if args.profile:  # the server's log goes with the temporary home otherwise
            shutil.copy(home / "server.log", Path(args.profile) / "server.log")
    returned = [wid for p in phases for wid in p.pop("ids").values()]
    return {"benchmark": "throughput", "database": "postgresql" if args.postgres_url else "sqlite",
            "nodes": NODES, "gpus_per_node": GPUS, "seeded": args.workloads, "phases": phases,
            "stored": len(stored), "lost": len(set(returned) - set(stored)),
            "stored_twice_or_extra": len(stored) - len(set(stored)) + (len(stored) - args.workloads - len(returned))}
