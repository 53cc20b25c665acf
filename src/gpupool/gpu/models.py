"""Facts about GPU models that NVML does not always report, taken from the planner's GPU catalog
(`plan/gpu_catalog.yaml`, each entry with its source).

`nvmlDeviceGetAttributes` answers only for MIG device handles (NVML API reference, "Multi Instance GPU
Management"), so the SM count of a whole card comes from here.
"""

from __future__ import annotations

from functools import lru_cache

from gpupool.domain.resources import normalise_model
from gpupool.plan.catalog import Catalog, load_catalog, normalize


@lru_cache(maxsize=1)
def _catalog() -> Catalog:
    return load_catalog()


def sm_count_for(model: str, catalog: Catalog | None = None) -> int | None:
    """The SM count of a card model as NVML names it ("NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-40GB"),
    or None when the catalog does not know the model (or its SM count).

    Lookup: the full name, then the single catalog name or alias that starts with it ("H100-PCIE" ->
    "H100-PCIe-80GB"), then the name with its last dash-separated words dropped one by one
    ("H100-80GB-HBM3" -> "H100-80GB")."""
    entries = (catalog or _catalog()).gpus
    names = [(normalize(n), g.sm_count) for g in entries for n in (g.name, *g.aliases)]
    words = normalise_model(model).split("-")
    for cut in range(len(words), 0, -1):
        key = normalize("-".join(words[:cut]))
        exact = {sm for name, sm in names if name == key}
        if exact:
            return exact.pop() if len(exact) == 1 else None
        if cut == len(words):
            longer = {sm for name, sm in names if name.startswith(key)}
            if len(longer) == 1:
                return longer.pop()
    return None
