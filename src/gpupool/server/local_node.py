"""The machine the server runs on, as nodes of the pool: real CPU and memory, and GPUs from a GPU backend —
NVML on real hardware, or the scripted fake (`gpu/fake.py`) for declared simulated GPUs such as
`--gpus 4xA100-80GB` and for `--gpu-description FILE` demos — so GPU scheduling can be tried anywhere."""

from __future__ import annotations

import functools
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import ValidationError
from gpupool.domain.gpu_specs import memory_in_name, parse_gpu_count
from gpupool.domain.nodes import Gpu, Node
from gpupool.domain.resources import SharingMode, parse_cpu, parse_memory
from gpupool.gpu.fake import FakeBackend, read_description
from gpupool.gpu.inventory import to_domain_gpus
from gpupool.gpu.mig import MigNvml
from gpupool.gpu.nvml import NvmlBackend
from gpupool.gpu.nvml_mig import PynvmlMig
from gpupool.gpu.types import GpuBackend, GpuInventory
from gpupool.plan.catalog import Catalog, load_catalog
from gpupool.plan.errors import PlanInputError
from gpupool.server.settings import Settings

BackendFactory = Callable[[], GpuBackend]
MigAccess = Callable[[], AbstractContextManager[MigNvml]]
SIMULATED_LABEL = "gpupool.io/simulated-gpus"
MAX_DECLARED_GPUS = 64
CLUSTER_NODE_REFUSAL = "sharing-mode changes that need a daemon or MIG on a cluster node are not supported yet"


@dataclass
class LocalGpus:
    """The GPUs of one local node: the backend that discovers and samples them, what it found, which kind
    of backend it is ("nvml" or "fake"), whether its cards are simulated (no real device behind them), the
    sharing mode of cards the admin has not set, how to reach the NVML calls that apply MIG layouts, and
    whether the cards are on another machine (a cluster node: sampled and resolved there, by its agent)."""

    backend: GpuBackend
    inventory: GpuInventory
    kind: str
    simulated: bool
    default_mode: SharingMode
    mig: MigAccess
    remote: bool = False

    def domain_gpus(self) -> tuple[Gpu, ...]:
        """The cards in their default mode (before the admin's settings are applied)."""
        modes = dict.fromkeys((g.index for g in self.inventory.gpus), self.default_mode)
        return to_domain_gpus(self.inventory, modes, simulated=self.simulated)


@dataclass
class LocalNode:
    """One node a node provider offers: capacity and labels (`node.gpus` in their default modes), its GPUs,
    and the network address other nodes and the server reach it at."""

    node: Node
    gpus: LocalGpus
    address: str = "127.0.0.1"


def parse_declared_gpus(text: str, mode: str = "shared") -> tuple[Gpu, ...]:
    """Parse declared GPUs: "4xA100-80GB", "2xH100", "2xA100-80GB,1xT4-16GB" (the grammar of
    `gpupool.domain.gpu_specs`, count required; a model without its memory takes the catalog's).

    The cards are marked simulated; `mode` is their sharing mode (exclusive, shared or mps).
    """
    gpus: list[Gpu] = []
    sharing = SharingMode(mode)
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        spec = parse_gpu_count(part, "gpus", count_required=True)
        name, memory_gb = _model_and_memory(part, spec.name)
        for _ in range(min(spec.count, MAX_DECLARED_GPUS + 1)):
            gpus.append(Gpu(index=len(gpus), model=name, memory_mib=round(memory_gb * 1024), mode=sharing,
                            uuid=f"SIM-{len(gpus)}", simulated=True))
    if len(gpus) > MAX_DECLARED_GPUS:
        raise ValidationError(f"{len(gpus)} GPUs on one node; at most {MAX_DECLARED_GPUS}", "gpus")
    return tuple(gpus)


@functools.cache
def _catalog() -> Catalog:
    return load_catalog()


def _model_and_memory(part: str, name: str) -> tuple[str, float]:
    """The model name to record and its memory in GiB: from the name (`A100-80GB`), else the planner's GPU
    catalog (`H100` -> 80); ValidationError for a model the catalog does not know, saying how to write it."""
    sized = memory_in_name(name)
    if sized is not None:
        return f"{sized[0].upper()}-{sized[1]:g}GB", sized[1]
    try:
        return name.upper(), _catalog().gpu(name).memory_gib
    except PlanInputError:
        raise ValidationError(f"cannot read {part!r}: unknown GPU model {name!r}; give its memory, e.g. "
                              f"{part}-24GB, or use a known model (gpupool plan gpus)", "gpus") from None


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


def declared_description(text: str, seed: str) -> dict[str, Any]:
    """A fake-GPU description of declared GPUs ("4xA100-80GB,1xT4"); `seed` makes their UUIDs stable."""
    cards = [{"model": g.model, "memory": f"{g.memory_mib}MiB"} for g in parse_declared_gpus(text)]
    return {"node": seed, "simulated": True, "gpus": cards}


def fake_mig(backend: FakeBackend) -> MigAccess:
    """MIG access of a fake backend (its own simulated NVML)."""
    return lambda: nullcontext(backend.mig())


@contextmanager
def _pynvml_mig() -> Iterator[MigNvml]:
    """The NVML calls that apply MIG layouts on real hardware (NVML initialised for the duration)."""
    applier = PynvmlMig()
    try:
        yield applier
    finally:
        applier.close()


def local_gpus(settings: Settings, node_name: str, nvml_backend: BackendFactory = NvmlBackend) -> LocalGpus:
    """The GPUs of one local node: declared simulated ones (`settings.gpus`), a scripted description
    (`settings.gpu_description`), else whatever NVML finds (none, with one log line, without NVML)."""
    if settings.gpus.strip():
        fake = FakeBackend(declared_description(settings.gpus, node_name))
        mode = SharingMode(settings.gpu_mode or SharingMode.SHARED.value)
        return LocalGpus(fake, fake.discover(), "fake", True, mode, fake_mig(fake))
    if settings.gpu_description is not None:
        data = read_description(settings.gpu_description)
        if settings.nodes > 1:  # distinct UUIDs on every node
            data = {**data, "node": f"{data.get('node', 'fake')}/{node_name}"}
        fake = FakeBackend(data)
        mode = SharingMode(settings.gpu_mode or SharingMode.EXCLUSIVE.value)
        return LocalGpus(fake, fake.discover(), "fake", fake.simulated, mode, fake_mig(fake))
    backend = nvml_backend()
    mode = SharingMode(settings.gpu_mode or SharingMode.EXCLUSIVE.value)
    return LocalGpus(backend, backend.discover(), backend.name, False, mode, _pynvml_mig)


def local_nodes(settings: Settings, nvml_backend: BackendFactory = NvmlBackend) -> list[LocalNode]:
    """The nodes this server declares for its host: `settings.nodes` of them, each with the machine's CPU and
    memory (or the configured amounts) and its GPUs (see local_gpus; one backend per node). Several nodes
    on one host are for demos and tests: ValidationError unless each node's CPU and memory are given and its
    GPUs are simulated or absent (real cards declared N times would be handed out N times)."""
    if settings.nodes > 1 and not (settings.node_cpus and settings.node_memory):
        raise ValidationError(f"{settings.nodes} nodes on one host would each declare all of its CPUs and memory; "
                              "give each node's size (--cpus and --memory, GPUPOOL_NODE_CPUS/_MEMORY)", "nodes")
    cpu = parse_cpu(settings.node_cpus, "node_cpus") if settings.node_cpus else machine_cpu_milli()
    memory = parse_memory(settings.node_memory, "node_memory") if settings.node_memory else machine_memory_mib()
    base = settings.node_name or host_node_name()
    names = [base] if settings.nodes == 1 else [f"{base}-{k}" for k in range(settings.nodes)]
    labels = {SIMULATED_LABEL: "true"} if settings.gpus.strip() else {}
    found = []
    for name in names:
        gpus = local_gpus(settings, name, nvml_backend)
        if settings.nodes > 1 and not gpus.simulated and gpus.domain_gpus():
            gpus.backend.close()
            raise ValidationError(f"this host has real GPUs: declaring it as {settings.nodes} nodes would hand out "
                                  "each card several times; use one node, or simulated GPUs (--gpus)", "nodes")
        node = Node(name=name, cpu_milli=cpu, memory_mib=memory, gpus=gpus.domain_gpus(), labels=labels)
        found.append(LocalNode(node, gpus))
    return found
