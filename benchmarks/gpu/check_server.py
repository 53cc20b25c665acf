"""The whole server on this machine's real GPUs: `gpupool up` with NVML, real replicas that use CUDA through a
CUDA build of torch, and what the sampler makes of them (a few minutes; run as the user who runs the server).

    python benchmarks/gpu/check_server.py [--mps] [--out check_server_report.json]

(`--fake DESCRIPTION.yaml` runs it against a scripted fake node instead: how the script itself is tested.)

What it does, in order, printing each result and writing them all as JSON to --out:
1. starts `gpupool up` on a free port with a temporary GPUPOOL_HOME; reads the node's cards (`nodes show`);
2. exclusive: one replica holds 4 GiB on card 0; `gpupool top` must attribute NVML's figure to it, and
   /metrics must export it per workload;
3. shared: card 0 becomes time-sliced; two replicas, each asking `{share: 0.25, memory: 8GiB}`, fill memory
   until PyTorch refuses (the injected cap); each must be attributed on its own, and the difference between
   NVML's figure and the cap (the CUDA context) must stay inside the over-use tolerance: an over-use event
   here is a false positive and is reported as such;
4. with --mps: card 0 in `mps` mode (the server starts its MPS daemon); one replica holds 2 GiB as an MPS
   client and must be attributed; the card goes back to exclusive (the daemon stops).
It never changes MIG mode, clocks or persistence and never resets a GPU; the compute mode is changed only with
--mps and only by the server's MPS manager (set back when the card leaves mps mode). Everything it started
(server, replicas, daemon) is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

GIB = 1024**3
WAIT_S = 90.0  # a replica's start, torch's CUDA initialisation (several seconds) and two sampler passes
FAST = {"GPUPOOL_SCHEDULE_INTERVAL_S": "0.2", "GPUPOOL_RECONCILE_INTERVAL_S": "0.2", "GPUPOOL_MIN_RUNTIME_S": "0",
        "GPUPOOL_STOP_GRACE_S": "5", "GPUPOOL_NODE_NAME": "node", "GPUPOOL_MULTI_USER": "false",
        "GPUPOOL_TRUST_USERS": "true", "GPUPOOL_SAMPLE_INTERVAL_S": "1"}
CHILD = r"""
import json, os, sys, time
target_mib, step = int(sys.argv[1]), 256
if os.environ.get("CHECK_SERVER_FAKE"):  # --fake: no CUDA; the fake NVML scripts this process's memory
    print(json.dumps({"fake": True}), flush=True); time.sleep(600); sys.exit(0)
import torch
blocks, refused_at = [], None
while len(blocks) * step < target_mib:
    try:
        blocks.append(torch.empty(step * 2**20, dtype=torch.uint8, device="cuda"))
    except RuntimeError:  # torch.OutOfMemoryError, raised by the injected cap on a shared card
        refused_at = len(blocks) * step
        break
torch.cuda.synchronize()
print(json.dumps({"allocated_mib": len(blocks) * step, "refused_at_mib": refused_at,
                  "reserved_mib": torch.cuda.memory_reserved() // 2**20,
                  "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "cap_mib": os.environ.get("GPUPOOL_GPU_MEMORY_LIMIT_MIB")}), flush=True)
time.sleep(600)
"""


def say(title: str, value: Any) -> Any:
    print(f"== {title}\n{json.dumps(value, indent=2, default=str)}", flush=True)
    return value


class Server:
    """One `gpupool up` process on a free port and a temporary home, and the CLI pointed at it."""

    def __init__(self, home: Path, args: list[str]) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.home = home
        (home / "user").mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
        self.env |= {"GPUPOOL_HOME": str(home), "GPUPOOL_URL": f"http://127.0.0.1:{self.port}",
                     "HOME": str(home / "user"), **FAST}
        self.submitted: list[int] = []
        self.log = home / "server.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--port", str(self.port), *args],
                                            env=self.env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(self.answers, "the server to answer")
        except Exception as error:
            self.stop()
            raise RuntimeError(f"{error}; its log ends:\n{self.log_tail()}") from None

    def answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server exited with status {self.process.returncode}")
        return self.cli("nodes", check=False).returncode == 0

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "gpupool", *args], env=self.env, capture_output=True,
                                text=True, timeout=120, check=False)
        if check and result.returncode != 0:
            raise RuntimeError(f"gpupool {' '.join(args)}: {result.stdout}{result.stderr}")
        return result

    def json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--json").stdout)

    def stop(self) -> None:
        """Cancel what was submitted (replicas outlive a stopped server by design), then stop the server."""
        for wid in self.submitted:
            self.cli("cancel", str(wid), check=False)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_for(check: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"gave up waiting for {what} after {timeout_s:.0f} s")


def submit(server: Server, name: str, gpu: str, target_mib: int, fake: bool) -> int:
    program = server.home / "child.py"
    program.write_text(CHILD)
    env = "{CHECK_SERVER_FAKE: '1', CHECK_SERVER_USE: '1'}" if fake else "{CHECK_SERVER_USE: '1'}"
    spec = server.home / f"{name}.yaml"
    spec.write_text(f"name: {name}\ncommand: {sys.executable} {program} {target_mib}\nenv: {env}\n"
                    f"resources: {{cpu: 1, memory: 4GiB, gpu: {gpu}}}\n")
    wid = int(server.json("submit", str(spec))["workload"]["id"])
    server.submitted.append(wid)
    return wid


def replica_line(server: Server, wid: int) -> dict[str, Any]:
    """The replica's first output line (what torch allocated), once it has printed it."""
    def output() -> str:
        return server.cli("logs", str(wid), check=False).stdout.strip()
    text = wait_for(output, f"workload {wid}'s output")
    return dict(json.loads(text.splitlines()[0]))


def attributed(server: Server, replicas: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """`gpupool top`'s rows of these workloads on card 0, once each shows at least what its replica said it
    allocated (a sample taken before the allocation shows only the CUDA context; then the last rows seen)."""
    seen: dict[int, dict[str, Any]] = {}

    def rows() -> bool:
        card = next(g for g in server.json("top") if g["index"] == 0)
        seen.update({u["workload_id"]: u for u in card["users"] if u["workload_id"] in replicas})
        return all((seen.get(w, {}).get("memory_used_bytes") or 0) >= line.get("allocated_mib", 1) * 2**20
                   for w, line in replicas.items())
    try:
        wait_for(rows, f"the sampler to attribute workloads {sorted(replicas)}")
    except TimeoutError as error:
        if not seen:
            raise
        print(f"note: {error}; reporting the last rows seen", flush=True)
    return seen


def metrics(server: Server, wids: list[int]) -> dict[str, Any]:
    """The per-workload GPU lines of /metrics for these workloads."""
    token = (server.home / "token").read_text().strip()
    request = urllib.request.Request(f"http://127.0.0.1:{server.port}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        text = answer.read().decode()
    return {"lines": [line for line in text.splitlines() if line.startswith("gpupool_")
                      and any(f'workload="{w}"' in line for w in wids)]}


def finish(server: Server, wids: list[int]) -> dict[int, bool]:
    """Cancel these workloads; whether an over-use event was recorded for each (its `show` text)."""
    overuse = {w: "over-use" in server.cli("show", str(w)).stdout for w in wids}
    for wid in wids:
        server.cli("cancel", str(wid), check=False)
    wait_for(lambda: all(server.json("show", str(w))["status"] in ("cancelled", "succeeded", "failed")
                         for w in wids), "the replicas to stop")
    return overuse


def exclusive_step(server: Server, fake: bool) -> dict[str, Any]:
    wid = submit(server, "exclusive", "1", 4096, fake)
    line = replica_line(server, wid)
    result: dict[str, Any] = {"replica": line, "top": attributed(server, {wid: line})[wid]}
    result["metrics"] = metrics(server, [wid])
    result["overuse_event"] = finish(server, [wid])[wid]
    return result


def shared_step(server: Server, fake: bool) -> dict[str, Any]:
    server.cli("nodes", "set-sharing", "node", "0", "shared")
    wids = [submit(server, f"shared-{k}", "{share: 0.25, memory: 8GiB}", 2 * 8192, fake) for k in range(2)]
    result: dict[str, Any] = {"replicas": {w: replica_line(server, w) for w in wids}}
    time.sleep(3)  # the over-use grace of the monitor starts at the first sample over the line
    result["top"] = attributed(server, result["replicas"])
    for row in result["top"].values():
        row["nvml_minus_cap_mib"] = row["memory_used_bytes"] // 2**20 - int(row["memory_mib"] or 0)
    result["metrics"] = metrics(server, wids)
    result["overuse_events_false_positive"] = finish(server, wids)
    server.cli("nodes", "set-sharing", "node", "0", "exclusive")
    return result


def mps_step(server: Server, fake: bool) -> dict[str, Any]:
    changed = server.cli("nodes", "set-sharing", "node", "0", "mps", check=False)
    result: dict[str, Any] = {"set_sharing": (changed.stdout + changed.stderr).strip()}
    try:
        card = next(g for g in server.json("nodes", "show", "node")["gpus"] if g["index"] == 0)
        result["daemon"] = card.get("mps")
        if changed.returncode == 0 and (card.get("mps") or {}).get("state") == "running":
            wid = submit(server, "mps", "{share: 0.25, memory: 8GiB}", 2048, fake)
            result["replica"] = replica_line(server, wid)
            result["top"] = attributed(server, {wid: result["replica"]})[wid]
            result["overuse_event"] = finish(server, [wid])[wid]
    finally:
        back = server.cli("nodes", "set-sharing", "node", "0", "exclusive", check=False)
        result["back_to_exclusive"] = (back.stdout + back.stderr).strip()
    return result


def run_steps(server: Server, args: argparse.Namespace, report: dict[str, Any]) -> None:
    node = server.json("nodes", "show", "node")
    report["cards"] = say("cards", node["gpus"])
    steps: list[tuple[str, Callable[[Server, bool], dict[str, Any]]]] = [
        ("exclusive", exclusive_step), ("shared", shared_step)]
    if args.mps:
        steps.append(("mps", mps_step))
    for name, step in steps:
        try:
            report[name] = say(name, step(server, args.fake is not None))
        except Exception as error:  # a failed step is a finding: record it and go on with the next
            report[name] = say(name, {"error": f"{type(error).__name__}: {error}"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mps", action="store_true", help="also put card 0 in mps mode and run one MPS client")
    parser.add_argument("--out", type=Path, default=Path("check_server_report.json"))
    parser.add_argument("--fake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    report: dict[str, Any] = {"python": sys.version.split()[0]}
    with tempfile.TemporaryDirectory(prefix="gps-") as home:  # short: MPS sockets live under it
        try:
            server = Server(Path(home), ["--gpu-description", str(args.fake)] if args.fake else [])
        except RuntimeError as error:
            report["start"] = say("server start", {"error": str(error)})
            args.out.write_text(json.dumps(report, indent=2, default=str))
            return 1
        try:
            run_steps(server, args, report)
        finally:
            server.stop()
            report["server_log_tail"] = server.log_tail().splitlines()
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"written: {args.out}")
    failed = [name for name in ("exclusive", "shared", "mps") if "error" in report.get(name, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
