"""API types of notebooks (/api/v1/notebooks): pydantic only, shared by the server, the client and the CLI."""

from __future__ import annotations

from gpupool.api.schemas import Model


class CullWarning(Model):
    """The culler's warning to a running notebook about to be culled: `text` as its event says it (`gpupool
    show`), `at` when it was given, `summary` the short form with the culler's latest figure ("culls in 4m10s
    unless used")."""

    at: float
    text: str
    summary: str


class NotebookInfo(Model):
    """One notebook as `gpupool notebook ls` shows it. `path` is where the server proxies it; `idle_for_s` and
    `culls_in_s` come from the culler's last look (None before one, while a kernel is busy, or never culled);
    `idle_timeout_s` 0 means never culled. `cull_warning` is set while the notebook is about to be culled: the
    culler warned it in its current run and has not seen it used since."""

    id: int
    name: str
    project: str
    user: str
    status: str
    gpu_milli: int
    path: str
    idle_timeout_s: int
    idle_for_s: float | None = None
    culls_in_s: float | None = None
    message: str = ""
    cull_warning: CullWarning | None = None


class NotebookOpen(Model):
    """A link that opens the notebook in a browser: `path` carries a one-time `ptoken` valid until
    `expires_at`; the server swaps it for a cookie that opens this notebook only."""

    id: int
    path: str
    expires_at: float
    ready: bool
