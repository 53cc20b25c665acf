"""Read-only checks of the GPU layer on a machine with an NVIDIA GPU (a few minutes; no root needed).

    .venv/bin/python benchmarks/gpu/check_gpu.py [--gpu 0] [--cap-mib 2048] [--mps] [--out report.json]

(`--fake DESCRIPTION.yaml` runs it against the fake NVML instead: how the script itself is tested here.)

What it does, in order, printing each result and writing them all as JSON to --out:
1. discovery: `NvmlBackend.discover()` (model, UUID, memory, SM count, MIG mode and devices, driver, CUDA);
2. NVML as the driver answers: nvmlDeviceGetAttributes on the whole card, memory info v1 and v2 (used,
   reserved), both process lists (compute and MPS) through the unversioned and the _v2 calls;
3. the shared-mode cap, with a CUDA build of torch: a child Python process started the way a replica on a
   time-sliced GPU is (the injected sitecustomize first on PYTHONPATH, GPUPOOL_GPU_MEMORY_LIMIT_MIB) fills
   the card in 256 MiB blocks; reported: where PyTorch refused (the cap), torch's reserved memory, and what
   NVML shows for the process: the difference is the CUDA context, the over-use tolerance this model needs;
4. attribution: the child runs in its own session, as the local executor starts replicas; `GpuMonitor`
   must attribute its NVML memory to it by session id (and says whether NVML's pids are of our namespace);
5. with --mps: a private MPS control daemon (its own pipe and log directories in a temporary directory, the
   compute mode left as it is) and one client started with the environment `gpu_environment` gives an MPS
   replica; reported: which NVML list shows the client and the server, and the attribution. Then it quits.

It never changes MIG mode, compute mode, clocks or persistence, never resets a GPU, and removes what it
created (child processes, the temporary directory, the MPS daemon it started).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpupool.domain.nodes import Gpu
from gpupool.domain.resources import SharingMode
from gpupool.gpu.attribution import ProcView, pids_untranslated
from gpupool.gpu.fake import load_description, read_description
from gpupool.gpu.fake_nvml import FakeNvml, FakeProcess, constant
from gpupool.gpu.monitor import GpuAllocation, GpuMonitor, ReplicaKey
from gpupool.gpu.mps import MpsManager, MpsState
from gpupool.gpu.nvml import NvmlBackend, load_pynvml
from gpupool.gpu.sharing import SharingConfig, gpu_environment, install_sitecustomize
from gpupool.scheduler.types import GpuAssignment

MIB = 1024 * 1024
BLOCK_MIB = 256  # allocation step of the cap check: fine enough to locate the cap, few enough steps to be quick
CHILD = r"""
import json, os, sys
out = {}
if os.environ.get("GPUPOOL_CHECK_FAKE"):  # --fake: no CUDA; the fake NVML scripts this process's memory
    print(json.dumps({"fake": True, "reserved": 0}), flush=True); sys.stdin.readline(); sys.exit(0)
try:
    import torch
except ImportError as error:
    print(json.dumps({"error": f"no torch: {error}"}), flush=True); sys.exit(0)
out.update(torch=torch.__version__, cuda=torch.version.cuda, available=torch.cuda.is_available())
if not out["available"]:
    print(json.dumps({**out, "error": "torch sees no CUDA device"}), flush=True); sys.exit(0)
torch.zeros(1, device="cuda"); torch.cuda.synchronize()
out["context_only_reserved"] = torch.cuda.memory_reserved()
limit, step, blocks, refused_at = int(sys.argv[1]), int(sys.argv[2]), [], None
for k in range(2 * limit // step + 4):
    try:
        blocks.append(torch.empty(step * 2**20, dtype=torch.uint8, device="cuda"))
    except RuntimeError:  # torch.OutOfMemoryError is a RuntimeError
        refused_at = k * step
        break
torch.cuda.synchronize()
out.update(refused_at_mib=refused_at, allocated_mib=len(blocks) * step, reserved=torch.cuda.memory_reserved())
try:
    import sitecustomize
    out["hook"] = {k: v for k, v in sitecustomize.gpupool_state().items() if k != "chained"}
except Exception as error:
    out["hook"] = repr(error)
print(json.dumps(out), flush=True)
sys.stdin.readline()  # hold the memory until the parent has sampled NVML
"""


def say(title: str, value: Any) -> Any:
    print(f"== {title}\n{json.dumps(value, indent=2, default=str)}", flush=True)
    return value


def raw_nvml(nvml: Any, index: int) -> dict[str, Any]:
    """Step 2: what the driver answers, call by call (errors recorded, not raised)."""
    nvml.nvmlInit()
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        found: dict[str, Any] = {}

        def attempt(name: str, call: Any) -> None:
            try:
                value = call()
                processes = isinstance(value, list) and all(hasattr(p, "pid") for p in value)
                found[name] = ([{"pid": p.pid, "used_mib": (p.usedGpuMemory or 0) // MIB} for p in value]
                               if processes else value)
            except Exception as error:  # NVMLError, NVMLLibraryMismatchError: what we want to see
                found[name] = f"{type(error).__name__}: {error}"

        attempt("attributes_whole_card", lambda: str(nvml.nvmlDeviceGetAttributes(handle)))
        attempt("memory_v1", lambda: _memory(nvml.nvmlDeviceGetMemoryInfo(handle)))
        attempt("memory_v2", lambda: _memory(nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)))
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2",
                     "nvmlDeviceGetMPSComputeRunningProcesses", "nvmlDeviceGetMPSComputeRunningProcesses_v2"):
            attempt(name, lambda name=name: getattr(nvml, name)(handle))
        attempt("mig_mode", lambda: nvml.nvmlDeviceGetMigMode(handle))
        if hasattr(nvml, "nvmlDeviceGetComputeMode"):
            attempt("compute_mode", lambda: nvml.nvmlDeviceGetComputeMode(handle))
        return found
    finally:
        nvml.nvmlShutdown()


def _memory(info: Any) -> dict[str, int]:
    return {f: int(getattr(info, f)) // MIB for f in ("total", "reserved", "used", "free") if hasattr(info, f)}


def run_child(env: dict[str, str], cap_mib: int) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start the torch child in its own session (as the local executor starts a replica); its first line."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(cap_mib), str(BLOCK_MIB)], env=env, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)
    assert child.stdout is not None
    line = child.stdout.readline()
    return child, json.loads(line) if line.strip() else {"error": "the child printed nothing"}


def attribute(backend: NvmlBackend, child: subprocess.Popen[str], card: Gpu, cap_mib: int) -> dict[str, Any]:
    """Steps 3-4: NVML's view of the child, and the monitor's attribution of it by session id."""
    sample = backend.sample(time.time())
    mine = [p for p in sample.processes if p.pid == child.pid]
    key = ReplicaKey("check", 0, "check")
    view = ProcView()
    monitor = GpuMonitor("check", view=view)
    report = monitor.observe(sample, [GpuAllocation(key, card.index, 1000, cap_mib, card.model)],
                             {os.getsid(child.pid): key})
    return {"nvml_rows_of_child": [(p.pid, (p.memory_bytes or 0) // MIB, p.kind, p.mig_uuid) for p in mine],
            "pids_untranslated": pids_untranslated(sample.processes, view), "nested_pid_namespace": view.nested(),
            "attributed_mib": {f"{u.replica.workload_id}/gpu{u.gpu_index}": u.memory_bytes // MIB
                               for u in report.usage},
            "unowned": [(p.pid, (p.memory_bytes or 0) // MIB, p.kind) for p in report.unowned],
            "mps_servers": [(p.pid, (p.memory_bytes or 0) // MIB) for p in report.mps_servers],
            "attribution": report.attribution, "note": report.attribution_note}


def stop(child: subprocess.Popen[str]) -> None:
    if child.poll() is None and child.stdin is not None:
        child.stdin.write("\n")
        child.stdin.flush()
    try:
        child.wait(timeout=30)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def cap_check(backend: NvmlBackend, card: Gpu, cap_mib: int, home: Path, fake: FakeNvml | None) -> dict[str, Any]:
    """Steps 3-4 on a time-sliced card (with `fake`, the child's GPU memory is scripted: 1 GiB)."""
    config = SharingConfig(home)
    install_sitecustomize(config)
    gpu_env = gpu_environment([GpuAssignment(card.index, 500, cap_mib)], [card], config)
    env = gpu_env.merged_into(dict(os.environ)) | ({"GPUPOOL_CHECK_FAKE": "1"} if fake else {})
    child, first = run_child(env, cap_mib)
    if fake is not None:
        fake.state.processes.append(FakeProcess(child.pid, card.index, constant(float(1024 * MIB))))
    try:
        result: dict[str, Any] = {"child": first}
        if "error" not in first:
            seen = attribute(backend, child, card, cap_mib)
            nvml_mib = sum(row[1] for row in seen["nvml_rows_of_child"])
            result |= seen
            result["context_mib"] = nvml_mib - first["reserved"] // MIB  # NVML total minus torch's reserve
        return result
    finally:
        stop(child)


def mps_check(backend: NvmlBackend, card: Gpu, cap_mib: int, home: Path) -> dict[str, Any]:
    """Step 5: a private MPS daemon and one client."""
    manager = MpsManager(home, set_compute_mode=False)  # never touches the compute mode
    started = manager.start(card.index, card.uuid, time.time())
    result: dict[str, Any] = {"daemon": {"state": started.state.value, "message": started.message}}
    if started.state != MpsState.RUNNING:
        return result
    try:
        mps_card = Gpu(card.index, card.model, card.memory_mib, SharingMode.MPS, uuid=card.uuid)
        gpu_env = gpu_environment([GpuAssignment(card.index, 500, cap_mib)], [mps_card], SharingConfig(home))
        env = {k: v for k, v in gpu_env.merged_into(dict(os.environ)).items() if k != "PYTHONPATH"}
        child, first = run_child(env, cap_mib)
        try:
            result["client"] = first
            if "error" not in first:
                result |= attribute(backend, child, mps_card, cap_mib)
        finally:
            stop(child)
    finally:
        result["stop"] = manager.stop(card.index, card.uuid, time.time()).state.value
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu", type=int, default=0, help="node-local index of the GPU to test (default 0)")
    parser.add_argument("--cap-mib", type=int, default=2048, help="memory cap of the shared-mode check (MiB)")
    parser.add_argument("--mps", action="store_true", help="also run a private MPS daemon with one client")
    parser.add_argument("--out", type=Path, default=Path("check_gpu_report.json"))
    parser.add_argument("--fake", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    report: dict[str, Any] = {"python": sys.version.split()[0]}
    try:
        nvml = FakeNvml(load_description(read_description(args.fake))) if args.fake else load_pynvml()
    except ImportError as error:
        print(f"nvidia-ml-py is not installed ({error}): pip install nvidia-ml-py")
        return 1
    backend = NvmlBackend(lambda: nvml)
    inventory = backend.discover()
    report["discovery"] = say("discovery", inventory.to_dict())
    if not inventory.gpus:
        print("no GPU found: nothing more to check")
        args.out.write_text(json.dumps(report, indent=2, default=str))
        return 1
    info = next((g for g in inventory.gpus if g.index == args.gpu), inventory.gpus[0])
    report["nvml_raw"] = say(f"NVML calls on GPU {info.index}", raw_nvml(nvml, info.index))
    card = Gpu(info.index, info.name, info.memory_mib, SharingMode.SHARED, uuid=info.uuid)
    with tempfile.TemporaryDirectory(prefix="gpc-") as home:  # short: MPS sockets live under it
        if info.mig_enabled:
            report["cap"] = say("shared-mode cap", "skipped: the card is in MIG mode (no time-slicing there)")
        else:
            fake = nvml if isinstance(nvml, FakeNvml) else None
            report["cap"] = say("shared-mode cap and attribution",
                                cap_check(backend, card, args.cap_mib, Path(home), fake))
        if args.mps and not info.mig_enabled:
            report["mps"] = say("private MPS daemon", mps_check(backend, card, args.cap_mib, Path(home) / "m"))
    backend.close()
    args.out.write_text(json.dumps(report, indent=2, default=str))
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
