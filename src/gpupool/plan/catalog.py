"""The GPU and model catalog: typed entries built from the packaged YAML files and a user's file.

Everything here is pure except :func:`load_catalog`, the one function that reads files (the packaged
data through ``importlib.resources``, and an optional user YAML file).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from gpupool.domain.errors import ValidationError
from gpupool.domain.gpu_specs import parse_gpu_count
from gpupool.plan.errors import PlanInputError
from gpupool.plan.models import ModelShape, validate_shape
from gpupool.plan.precision import PEAK_FIELDS, Precision
from gpupool.plan.units import GIB, parse_count

PEAK_KEYS = ("bf16_tflops", "fp16_tflops", "fp8_tflops", "int8_tops", "tf32_tflops", "fp32_tflops")
_PROFILE_NAME = re.compile(r"(?P<slices>\d+)g\.(?P<gb>\d+)gb")
_T = TypeVar("_T")


def normalize(name: str) -> str:
    """The lookup key of a name: lower case without spaces, dashes, underscores or dots."""
    return re.sub(r"[\s_\-.]", "", name.lower())


@dataclass(frozen=True)
class MigProfile:
    """A MIG GPU-instance profile such as ``2g.10gb``: compute and memory slices, instances per GPU."""

    name: str
    compute_slices: int
    memory_slices: int
    instances: int

    @property
    def nominal_memory_gib(self) -> int:
        """The memory in the profile's name (``2g.10gb`` -> 10), in GiB as NVIDIA names profiles."""
        return int(_profile_match(self.name)["gb"])


@dataclass(frozen=True)
class MigGeometry:
    """How a MIG-capable GPU divides: compute and memory slices, SMs per compute slice, profiles."""

    compute_slices: int
    memory_slices: int
    sms_per_slice: int | None
    profiles: tuple[MigProfile, ...]
    source: str


@dataclass(frozen=True)
class GpuSpec:
    """One GPU model of the catalog; peaks are dense (no sparsity), ``None`` where not supported."""

    name: str
    aliases: tuple[str, ...]
    architecture: str
    memory_gib: float
    memory_bandwidth_gbps: float
    peaks: Mapping[str, float | None]
    nvlink_gbps: float | None
    sm_count: int | None
    mig: MigGeometry | None
    source: str

    @property
    def memory_bytes(self) -> float:
        """Memory in bytes (the datasheet figure read as GiB)."""
        return self.memory_gib * GIB

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Memory bandwidth in bytes per second."""
        return self.memory_bandwidth_gbps * 1e9

    def peak_flops(self, precision: Precision) -> tuple[float, str]:
        """Dense peak FLOP/s for ``precision`` and the catalog field it came from.

        Falls back along :data:`PEAK_FIELDS` (e.g. fp8 on an A100 runs at the bf16 peak); raises
        PlanInputError when the GPU has no peak for the format or any fallback.
        """
        for key in PEAK_FIELDS[precision]:
            value = self.peaks.get(key)
            if value:
                return value * 1e12, key
        raise PlanInputError(f"{self.name} has no tensor-core peak for {precision} in the catalog")


@dataclass(frozen=True)
class Catalog:
    """GPUs and models by name; lookups ignore case, dashes, spaces and dots."""

    gpus: tuple[GpuSpec, ...]
    models: tuple[ModelShape, ...]
    model_aliases: Mapping[str, str]

    def gpu(self, name: str) -> GpuSpec:
        """The GPU named ``name`` or one of its aliases; raises PlanInputError listing the known names."""
        key = normalize(name)
        for gpu in reversed(self.gpus):  # entries added last (a user's file) win
            if key in {normalize(n) for n in (gpu.name, *gpu.aliases)}:
                return gpu
        known = ", ".join(g.name for g in self.gpus)
        raise PlanInputError(f"unknown GPU {name!r}; known: {known} (add others with --catalog FILE)")

    def model(self, name: str) -> ModelShape:
        """The model named ``name`` or one of its aliases; raises PlanInputError listing the known names."""
        key = self.model_aliases.get(normalize(name), normalize(name))
        for model in self.models:
            if normalize(model.name) == key:
                return model
        known = ", ".join(m.name for m in self.models)
        raise PlanInputError(f"unknown model {name!r}; known: {known} (or give --params / the shape)")


@dataclass(frozen=True)
class GpuCount:
    """A GPU spec as written on the command line: ``8xA100-80GB`` is 8 of the A100-80GB."""

    count: int
    gpu: GpuSpec
    count_given: bool

    @property
    def label(self) -> str:
        """``8 x A100-80GB``."""
        return f"{self.count} x {self.gpu.name}"


def parse_gpu_spec(text: str, catalog: Catalog, what: str = "--gpus") -> GpuCount:
    """Read ``8xA100-80GB``, ``8 x H100`` or ``H100`` (one GPU; the grammar of `gpupool.domain.gpu_specs`);
    raises PlanInputError naming ``what``."""
    try:
        spec = parse_gpu_count(text, what)
    except ValidationError as exc:
        raise PlanInputError(str(exc)) from None
    try:
        gpu = catalog.gpu(spec.name)
    except PlanInputError as exc:
        raise PlanInputError(f"{what}: {exc}") from None
    return GpuCount(count=spec.count, gpu=gpu, count_given=spec.count_given)


def _profile_match(name: str) -> re.Match[str]:
    match = _PROFILE_NAME.fullmatch(name)
    if match is None:
        raise PlanInputError(f"MIG profile {name!r}: expected a name like 2g.10gb")
    return match


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PlanInputError(f"{where}: expected a mapping of fields, got {value!r}")
    return value


def _field(entry: Mapping[str, Any], key: str, where: str, kind: tuple[type, ...]) -> Any:
    """A required field of ``kind`` (booleans never count as numbers)."""
    if entry.get(key) is None:
        raise PlanInputError(f"{where}: missing field {key!r}")
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in kind)
        raise PlanInputError(f"{where}.{key}: expected {expected}, got {value!r}")
    return value


def _optional_number(entry: Mapping[str, Any], key: str, where: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < float("inf"):
        raise PlanInputError(f"{where}.{key}: expected a positive number or null, got {value!r}")
    return float(value)


def _optional_count(entry: Mapping[str, Any], key: str, where: str) -> int | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlanInputError(f"{where}.{key}: expected a positive whole number or null, got {value!r}")
    return value


def _count(entry: Mapping[str, Any], key: str, where: str) -> int:
    value = _optional_count(entry, key, where)
    if value is None:
        raise PlanInputError(f"{where}: missing field {key!r}")
    return value


def _names(entry: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = entry.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str | int) for v in value):
        raise PlanInputError(f"{where}.{key}: expected a list of names, got {value!r}")
    return tuple(str(v) for v in value)


def _mig_from_data(data: Any, where: str) -> MigGeometry:
    data = _mapping(data, where)
    profiles = []
    for i, item in enumerate(_field(data, "profiles", where, (list,))):
        at = f"{where}.profiles[{i}]"
        raw = _mapping(item, at)
        name = str(_field(raw, "name", at, (str,)))
        profiles.append(MigProfile(
            name=name, compute_slices=int(_profile_match(name)["slices"]),
            memory_slices=_count(raw, "memory_slices", at), instances=_count(raw, "instances", at),
        ))
    return MigGeometry(
        compute_slices=_count(data, "compute_slices", where),
        memory_slices=_count(data, "memory_slices", where),
        sms_per_slice=_optional_count(data, "sms_per_slice", where),
        profiles=tuple(profiles), source=str(data.get("source", "")),
    )


def gpu_from_data(entry: Any, where: str, default_source: str) -> GpuSpec:
    """Build one GPU from its catalog mapping; raises PlanInputError naming the entry and field."""
    entry = _mapping(entry, where)
    name = str(_field(entry, "name", where, (str, int)))
    where = f"{where} ({name})"
    memory = _optional_number(entry, "memory_gib", where)
    bandwidth = _optional_number(entry, "memory_bandwidth_gbps", where)
    if memory is None or bandwidth is None:
        raise PlanInputError(f"{where}: memory_gib and memory_bandwidth_gbps are required")
    mig = entry.get("mig")
    return GpuSpec(
        name=name, aliases=_names(entry, "aliases", where),
        architecture=str(entry.get("architecture", "")), memory_gib=memory, memory_bandwidth_gbps=bandwidth,
        peaks={key: _optional_number(entry, key, where) for key in PEAK_KEYS},
        nvlink_gbps=_optional_number(entry, "nvlink_gbps", where),
        sm_count=_optional_count(entry, "sm_count", where),
        mig=_mig_from_data(mig, f"{where}.mig") if mig is not None else None,
        source=str(entry.get("source") or default_source),
    )


def model_from_data(entry: Any, where: str, default_source: str) -> ModelShape:
    """Build one model from its catalog mapping; raises PlanInputError naming the entry and field."""
    entry = _mapping(entry, where)
    name = str(_field(entry, "name", where, (str,)))
    where = f"{where} ({name})"
    _names(entry, "aliases", where)
    active = entry.get("active_params")
    params = _field(entry, "params", where, (str, int, float))
    model = ModelShape(
        name=name, params=parse_count(params, f"{where}.params"),
        active_params=parse_count(active, f"{where}.active_params") if active is not None else None,
        source=str(entry.get("source") or default_source),
        layers=_optional_count(entry, "layers", where), hidden=_optional_count(entry, "hidden", where),
        heads=_optional_count(entry, "heads", where), kv_heads=_optional_count(entry, "kv_heads", where),
        head_dim=_optional_count(entry, "head_dim", where), vocab=_optional_count(entry, "vocab", where),
        kv_cache_dim=_optional_count(entry, "kv_cache_dim", where),
    )
    return validate_shape(model)


def _merge(base: tuple[_T, ...], extra: list[_T], key: Callable[[_T], str]) -> tuple[_T, ...]:
    replaced = {normalize(key(e)) for e in extra}
    return tuple(b for b in base if normalize(key(b)) not in replaced) + tuple(extra)


def _entries(data: Mapping[str, Any], key: str, label: str) -> list[tuple[int, Any]]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise PlanInputError(f"{label}: '{key}:' must be a list of entries, got {value!r}")
    return list(enumerate(value))


def catalog_from_data(documents: Iterable[tuple[Mapping[str, Any], str]]) -> Catalog:
    """Build a catalog from parsed YAML documents, each with a label for messages (e.g. its file name).

    Each document may hold ``gpus:`` and ``models:`` lists; a later entry replaces an earlier one of
    the same name. Raises PlanInputError naming the document, entry and field of any bad value.
    """
    documents = list(documents)
    gpus: tuple[GpuSpec, ...] = ()
    models: tuple[ModelShape, ...] = ()
    for data, label in documents:
        if not isinstance(data, Mapping) or not set(data) <= {"gpus", "models"}:
            raise PlanInputError(f"{label}: expected a mapping with 'gpus:' and/or 'models:' lists")
        new_gpus = [gpu_from_data(e, f"{label}: gpus[{i}]", label) for i, e in _entries(data, "gpus", label)]
        new_models = [
            model_from_data(e, f"{label}: models[{i}]", label) for i, e in _entries(data, "models", label)
        ]
        gpus = _merge(gpus, new_gpus, lambda g: g.name)
        models = _merge(models, new_models, lambda m: m.name)
    aliases = {}
    for data, _ in documents:
        for entry in data.get("models") or ():
            for alias in entry.get("aliases") or ():
                aliases[normalize(str(alias))] = normalize(str(entry["name"]))
    return Catalog(gpus=gpus, models=models, model_aliases=aliases)


def load_catalog(user_file: str | Path | None = None) -> Catalog:
    """Read the packaged GPU and model catalogs, then ``user_file`` (YAML) if given, into a Catalog.

    The only function of the planner that reads files. Raises PlanInputError when the user file is
    missing, is not YAML, or holds a bad entry.
    """
    package = resources.files("gpupool.plan")
    documents = [
        (yaml.safe_load(package.joinpath(name).read_text(encoding="utf-8")), name)
        for name in ("gpu_catalog.yaml", "model_catalog.yaml")
    ]
    if user_file is not None:
        path = Path(user_file)
        try:
            documents.append((yaml.safe_load(path.read_text(encoding="utf-8")) or {}, str(path)))
        except OSError as exc:
            raise PlanInputError(f"--catalog: cannot read {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise PlanInputError(f"--catalog: {path} is not valid YAML: {exc}") from None
    return catalog_from_data(documents)
