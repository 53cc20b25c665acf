"""The machine the server runs on, as nodes of the pool: real CPU and memory, GPUs from NVML when present,
and declared (simulated) GPUs such as `--gpus 4xA100-80GB` so GPU scheduling can be tried anywhere."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable, Sequence

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.resources import SharingMode, parse_cpu, parse_memory
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.nvml import NvmlBackend
from gpupool.server.settings import Settings

GpuDiscovery = Callable[[], Sequence[Gpu]]
SIMULATED_LABEL = "gpupool.io/simulated-gpus"
_DECLARED_RE = re.compile(r"^(\d+)\s*[xX*]\s*([A-Za-z][A-Za-z0-9]*)(?:-(\d+(?:\.\d+)?)\s*(GB|G|GIB))?$",
                          re.IGNORECASE)
_DEFAULT_MEMORY_GB = {"A100": 40, "H100": 80, "H200": 141, "V100": 16, "T4": 16, "L4": 24, "A10": 24,
                      "L40S": 48, "A40": 48, "B200": 180}
MAX_DECLARED_GPUS = 64


def no_gpus() -> Sequence[Gpu]:
    """GPU discovery that finds none (tests, CPU-only demos)."""
    return ()


def nvml_gpus() -> Sequence[Gpu]:
    """This machine's GPUs through NVML (whole cards in exclusive mode, MIG instances where MIG is on);
    none, and one log line saying why, when NVML, its driver or the GPUs are missing."""
    backend = NvmlBackend()
    try:
        return to_domain_gpus(backend.discover())
    finally:
        backend.close()


def parse_declared_gpus(text: str, mode: str = "shared") -> tuple[Gpu, ...]:
    """Parse declared GPUs: "4xA100-80GB", "2xH100", "2xA100-80GB,1xT4-16GB" (count required; memory
    defaults by model).

    The cards are marked simulated; `mode` is their sharing mode (exclusive, shared or mps).
    """
    gpus: list[Gpu] = []
    sharing = SharingMode(mode)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        match = _DECLARED_RE.match(part)
        if not match:
            raise ValidationError(f"cannot read {part!r}; write COUNTxMODEL[-MEMORYGB], e.g. 4xA100-80GB", "gpus")
        count = int(match.group(1))
        model = match.group(2).upper()
        memory_gb = float(match.group(3)) if match.group(3) else _DEFAULT_MEMORY_GB.get(model, 16)
        name = f"{model}-{match.group(3)}GB" if match.group(3) else model
        for _ in range(count):
            gpus.append(Gpu(index=len(gpus), model=name, memory_mib=round(memory_gb * 1024), mode=sharing,
                            uuid=f"SIM-{len(gpus)}", simulated=True))
    if len(gpus) > MAX_DECLARED_GPUS:
        raise ValidationError(f"{len(gpus)} GPUs on one node; at most {MAX_DECLARED_GPUS}", "gpus")
    return tuple(gpus)


def machine_cpu_milli() -> int:
    """CPU cores this process may use, in milli-cores."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return cores * 1000


def machine_memory_mib() -> int:
    """Physical memory of this machine in MiB."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20)
    except (ValueError, OSError, AttributeError):
        return 1024


def host_node_name() -> str:
    """A node name derived from the host name (lower case, '-' for anything else)."""
    name = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().lower()).strip("-")[:50]
    return name or "local"


def local_nodes(settings: Settings, discover_gpus: GpuDiscovery = no_gpus) -> list[Node]:
    """The nodes this server declares for its host: `settings.nodes` of them, each with the machine's CPU and
    memory (or the configured amounts), the declared simulated GPUs if any, else the discovered ones."""
    cpu = parse_cpu(settings.node_cpus, "node_cpus") if settings.node_cpus else machine_cpu_milli()
    memory = parse_memory(settings.node_memory, "node_memory") if settings.node_memory else machine_memory_mib()
    declared = parse_declared_gpus(settings.gpus, settings.gpu_mode) if settings.gpus.strip() else ()
    gpus = declared or tuple(discover_gpus())
    base = settings.node_name or host_node_name()
    names = [base] if settings.nodes == 1 else [f"{base}-{k}" for k in range(settings.nodes)]
    labels = {SIMULATED_LABEL: "true"} if declared else {}
    return [Node(name=name, cpu_milli=cpu, memory_mib=memory, gpus=gpus, labels=labels) for name in names]
