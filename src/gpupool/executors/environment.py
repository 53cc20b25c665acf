"""The environment a replica sees: a minimal base, the user's variables, and what gpupool injects.

Everything here is a pure function of its arguments (no reading of `os.environ`): the server builds a
replica's `ReplicaLaunch.env` with

    merge_env(check_user_env(spec_env), identity_env(...), gpu_env(...), rendezvous, scopes.env())

and the executor adds the base environment (`default_base_env`) under it. Injected variables win over the
user's: a job cannot widen its own GPU allocation by setting CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu
from gpupool.domain.placement import GpuAssignment
from gpupool.domain.resources import MILLI_PER_GPU

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# A replica whose spec names a Python environment gets its directory in this variable (reserved: a user cannot
# set it), so that the node that starts it can check it sees that build; a finished build holds the marker.
ENVIRONMENT_DIR_VAR = "GPUPOOL_ENVIRONMENT_DIR"
ENVIRONMENT_COMPLETE = ".gpupool-complete"
BASE_ENV_NAMES = ("HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TZ", "TMPDIR")
DEFAULT_LANG = "C.UTF-8"
RESERVED_PREFIXES = ("GPUPOOL_", "CUDA_MPS_")
RESERVED_NAMES = frozenset({"CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"})
MAX_ENV_VARS = 256
MAX_ENV_VALUE_CHARS = 32 * 1024
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def default_base_env(environ: Mapping[str, str], interpreter_dir: str | None = None) -> dict[str, str]:
    """The base every replica starts from: PATH, HOME, USER, LOGNAME, LANG (C.UTF-8 when unset), LC_ALL,
    TZ and TMPDIR taken from `environ` (the server's environment) and nothing else. `interpreter_dir` (the
    directory of the server's Python) is put first on PATH when given, so `python` in a command means
    the interpreter gpupool runs on unless the job sets PATH itself."""
    env = {name: environ[name] for name in BASE_ENV_NAMES if environ.get(name)}
    env.setdefault("LANG", DEFAULT_LANG)
    path = environ.get("PATH") or DEFAULT_PATH
    if interpreter_dir and interpreter_dir not in path.split(":"):
        path = f"{interpreter_dir}:{path}"
    env["PATH"] = path
    return env


def is_reserved(name: str) -> bool:
    """True for variables only gpupool sets (GPUPOOL_*, CUDA_MPS_*, CUDA_VISIBLE_DEVICES, ...)."""
    return name in RESERVED_NAMES or name.startswith(RESERVED_PREFIXES)


def check_user_env(env: Mapping[str, object], field: str = "env") -> dict[str, str]:
    """Validate a spec's `env:` mapping and return it as str -> str. Names must be shell variable names,
    values strings or numbers without NUL bytes; names gpupool sets itself are refused."""
    if not isinstance(env, Mapping):
        raise ValidationError("must be a mapping of variable names to values, e.g. {NCCL_DEBUG: WARN}", field)
    if len(env) > MAX_ENV_VARS:
        raise ValidationError(f"at most {MAX_ENV_VARS} variables are allowed, got {len(env)}", field)
    checked: dict[str, str] = {}
    for name, value in env.items():
        where = f"{field}.{name}"
        if not isinstance(name, str) or not _ENV_NAME_RE.match(name):
            raise ValidationError("a variable name is letters, digits and '_', not starting with a digit", where)
        if is_reserved(name):
            raise ValidationError("gpupool sets this variable itself; choose another name", where)
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise ValidationError("the value must be a string or a number (quote it in YAML)", where)
        text = str(value)
        if "\0" in text or len(text) > MAX_ENV_VALUE_CHARS:
            raise ValidationError(f"the value must have no NUL byte and at most {MAX_ENV_VALUE_CHARS} characters",
                                  where)
        checked[name] = text
    return checked


def merge_env(user_env: Mapping[str, str], *injected: Mapping[str, str]) -> dict[str, str]:
    """The user's variables overlaid by each injected mapping in turn (later ones win)."""
    merged = dict(user_env)
    for part in injected:
        merged.update(part)
    return merged


def identity_env(workload_id: str, replica: int, role: str, attempt: int = 0, node: str = "local") -> dict[str, str]:
    """GPUPOOL_WORKLOAD_ID, GPUPOOL_REPLICA (the replica's number in the workload, from 0), GPUPOOL_ROLE,
    GPUPOOL_ATTEMPT (0 on the first run, +1 per retry or requeue) and GPUPOOL_NODE."""
    return {
        "GPUPOOL_WORKLOAD_ID": workload_id,
        "GPUPOOL_REPLICA": str(replica),
        "GPUPOOL_ROLE": role,
        "GPUPOOL_ATTEMPT": str(attempt),
        "GPUPOOL_NODE": node,
    }


def _device_id(card: Gpu, assignment: GpuAssignment) -> str:
    if assignment.mig_instance is not None:
        instances = card.mig_instances
        if not 0 <= assignment.mig_instance < len(instances) or not instances[assignment.mig_instance].uuid:
            raise ValidationError(f"GPU {card.index}: MIG instance {assignment.mig_instance} has no UUID")
        return instances[assignment.mig_instance].uuid
    return card.uuid or str(card.index)


def gpu_env(assignments: Sequence[GpuAssignment], cards: Sequence[Gpu]) -> dict[str, str]:
    """The GPU environment of one replica on one node.

    CUDA_VISIBLE_DEVICES lists the assigned cards by UUID (by index when a card has none; MIG instances by
    their UUID), in assignment order, and is empty when the replica has no GPU, so that a CPU-only replica
    sees none. A share of a card (less than 1000 milli) adds GPUPOOL_GPU_MILLI and, when the share was
    sized by memory, GPUPOOL_GPU_MEMORY_LIMIT_MIB. Simulated cards are not real devices: they are listed
    in GPUPOOL_GPU_INDICES only and CUDA_VISIBLE_DEVICES stays empty. MPS and MIG set-up beyond the device
    list belongs to the GPU layer (gpu/sharing.py), which may replace this function.
    """
    by_index = {card.index: card for card in cards}
    devices: list[str] = []
    env = {"GPUPOOL_GPU_INDICES": ",".join(str(a.index) for a in assignments)}
    for assignment in assignments:
        card = by_index.get(assignment.index)
        if card is None:
            raise ValidationError(f"GPU {assignment.index} is not a card of this node")
        if not card.simulated:
            devices.append(_device_id(card, assignment))
    env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    shares = [a for a in assignments if a.milli < MILLI_PER_GPU and a.mig_instance is None]
    if shares:
        env["GPUPOOL_GPU_MILLI"] = str(sum(a.milli for a in shares))
        memory = sum(a.memory_mib for a in shares)
        if memory > 0:
            env["GPUPOOL_GPU_MEMORY_LIMIT_MIB"] = str(memory)
    if any(by_index[a.index].simulated for a in assignments):
        env["GPUPOOL_GPU_SIMULATED"] = "1"
    return env
