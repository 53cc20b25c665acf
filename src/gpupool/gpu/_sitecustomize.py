"""Soft GPU memory cap for PyTorch, injected into replicas on time-sliced (`shared`) GPUs.

gpupool copies this file as `sitecustomize.py` into a directory it puts first on the replica's PYTHONPATH,
so every Python process of the replica imports it at start-up (see the `site` module). It must therefore
work with the standard library alone, never raise, and cost nothing when PyTorch is not used:

1. It installs a one-shot import hook for `torch`. Nothing else happens at start-up.
2. When the program imports torch, the hook queues the cap with `torch.cuda._lazy_call`, so it runs only
   when PyTorch initialises CUDA (never on a machine without CUDA, and without initialising CUDA early,
   which would break forked workers).
3. At CUDA initialisation it calls `torch.cuda.set_per_process_memory_fraction(limit / total, device)` for
   every visible device, with the limit from GPUPOOL_GPU_MEMORY_LIMIT_MIB ("N" for every device or
   "N0,N1,..." per device ordinal).
4. It then runs the sitecustomize that this one shadows, if any, further along sys.path.

`gpupool_state()` reports what happened (tests and debugging). GPUPOOL_SITECUSTOMIZE_DEBUG=1 prints
failures to stderr; otherwise they are silent (the cap is best effort; the monitor still sees over-use).

Start-up cost matters (every Python process of the replica pays it): at import time this module uses only
`os` and `sys`, which the interpreter has loaded already; importlib.util is imported when torch is.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

LIMIT_VARIABLE = "GPUPOOL_GPU_MEMORY_LIMIT_MIB"
_STATE: dict[str, Any] = {"installed": False, "torch_imported": False, "queued": False, "applied": [],
                          "error": None, "chained": None}


def gpupool_state() -> dict[str, Any]:
    """A copy of what the hook did: installed, torch_imported, queued, applied [(device, fraction)], error."""
    return {**_STATE, "applied": list(_STATE["applied"])}


def _debug(message: str) -> None:
    if os.environ.get("GPUPOOL_SITECUSTOMIZE_DEBUG"):
        print(f"gpupool sitecustomize: {message}", file=sys.stderr)


def parse_limits(text: str) -> list[int]:
    """'10240' -> [10240]; '10240,20480' -> [10240, 20480]; malformed -> []."""
    try:
        limits = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        return []
    return limits if all(v > 0 for v in limits) else []


def apply_memory_cap(torch: Any, limits: list[int]) -> list[tuple[int, float]]:
    """Cap PyTorch's caching allocator on every visible device; returns [(device, fraction)] applied.
    With one limit it applies to every device; with several, limit k to device k."""
    applied = []
    for device in range(torch.cuda.device_count()):
        limit = limits[0] if len(limits) == 1 else (limits[device] if device < len(limits) else None)
        if limit is None:
            continue
        total_mib = torch.cuda.get_device_properties(device).total_memory / (1024 * 1024)
        fraction = max(0.0, min(1.0, limit / total_mib))
        torch.cuda.set_per_process_memory_fraction(fraction, device)
        applied.append((device, fraction))
    return applied


def _on_cuda_init(torch: Any, limits: list[int]) -> None:
    try:
        _STATE["applied"] = apply_memory_cap(torch, limits)
    except Exception as error:  # never break the program: the cap is best effort
        _STATE["error"] = repr(error)
        _debug(f"could not cap GPU memory: {error!r}")


def _after_torch_import(torch: ModuleType) -> None:
    _STATE["torch_imported"] = True
    limits = parse_limits(os.environ.get(LIMIT_VARIABLE, ""))
    if not limits:
        return
    try:
        torch.cuda._lazy_call(lambda: _on_cuda_init(torch, limits))
        _STATE["queued"] = True
    except Exception as error:
        _STATE["error"] = repr(error)
        _debug(f"could not hook CUDA initialisation: {error!r}")


class _TorchImportHook:
    """A meta path finder that finds nothing itself: when `torch` is imported it asks the other finders for
    the spec and wraps the loader's exec_module so that _after_torch_import runs once torch is imported."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "torch":
            return None
        if self in sys.meta_path:
            sys.meta_path.remove(self)  # one shot, and no recursion into ourselves
        import importlib.util  # noqa: PLC0415  (only now: keeps interpreter start-up cheap)

        spec = importlib.util.find_spec(fullname)
        loader = getattr(spec, "loader", None)
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        original = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            original(module)
            try:
                _after_torch_import(module)
            except Exception as error:
                _STATE["error"] = repr(error)

        loader.exec_module = exec_module
        return spec


def _chain_shadowed_sitecustomize() -> None:
    """Run the sitecustomize.py that ours hides (the first one on sys.path after this file's directory)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for entry in sys.path:
        folder = os.path.abspath(entry or os.getcwd())
        candidate = os.path.join(folder, "sitecustomize.py")
        if folder == here or not os.path.isfile(candidate):
            continue
        import importlib.util  # noqa: PLC0415  (only when there is another sitecustomize to run)

        spec = importlib.util.spec_from_file_location("_gpupool_shadowed_sitecustomize", candidate)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
            _STATE["chained"] = candidate
        except Exception as error:
            _debug(f"the shadowed {candidate} failed: {error!r}")
        return


def _install() -> None:
    if "torch" in sys.modules:
        _after_torch_import(sys.modules["torch"])
    else:
        sys.meta_path.insert(0, _TorchImportHook())
    _STATE["installed"] = True
    _chain_shadowed_sitecustomize()


if __name__ in ("sitecustomize", "_gpupool_sitecustomize_under_test"):
    _install()
