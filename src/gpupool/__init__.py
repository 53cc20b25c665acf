"""gpupool: one shared, self-service, fairly scheduled pool of GPU servers.

`from gpupool import Client` gives the typed SDK (loaded on first use, so importing the pure core stays light);
inside a sweep trial, `gpupool.report(step, val_loss=...)` and `gpupool.should_prune()` talk to its sweep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Client", "__version__", "outputs", "report", "should_prune"]

if TYPE_CHECKING:
    from gpupool.client.http import Client


def __getattr__(name: str) -> Any:
    if name == "Client":
        from gpupool.client.http import Client  # noqa: PLC0415  (lazy on purpose)

        return Client
    if name in ("report", "should_prune"):
        from gpupool.client import trial  # noqa: PLC0415  (lazy on purpose)

        return getattr(trial, name)
    if name == "outputs":  # a pipeline step's outputs (gpupool/step_outputs.py)
        from gpupool.step_outputs import outputs  # noqa: PLC0415

        return outputs
    raise AttributeError(f"module 'gpupool' has no attribute {name!r}")
