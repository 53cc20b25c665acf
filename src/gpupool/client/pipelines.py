"""The pipeline part of the typed client: `PipelineClient(client)` for /api/v1/pipelines and /pipeline-runs (the
SDK's; `gpupool pipeline ...` uses the light client's, client/light_pipelines.py). Client is imported for type
hints only, so importing this module does not import httpx."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpupool.api import pipeline_schemas as ps

if TYPE_CHECKING:
    from gpupool.client.http import Client

API = "/api/v1"  # as client/http.py's


class PipelineClient:
    """Pipelines through one Client's connection. Errors are the Client's (ValidationError with the field,
    NotFoundError, PermissionDeniedError, ConflictError...)."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(self, spec: Mapping[str, Any] | str | Path, *, run: bool = False,
               idempotency_key: str | None = None) -> ps.PipelineSubmitted:
        """Store a pipeline definition (a mapping, YAML text, or a Path to a YAML file); `run` starts a run."""
        if isinstance(spec, Path):
            body = ps.PipelineSubmit(spec_yaml=spec.read_text(), run=run, idempotency_key=idempotency_key)
        elif isinstance(spec, str):
            body = ps.PipelineSubmit(spec_yaml=spec, run=run, idempotency_key=idempotency_key)
        else:
            body = ps.PipelineSubmit(spec=dict(spec), run=run, idempotency_key=idempotency_key)
        return self.client._send("POST", f"{API}/pipelines", ps.PipelineSubmitted, body)

    def get(self, name: str, *, project: str | None = None) -> ps.PipelineInfo:
        """A definition with its schedule state and latest fires."""
        return self.client._get(f"{API}/pipelines/{name}", ps.PipelineInfo, project=project)

    def run(self, name: str, params: Mapping[str, Any] | None = None, *, project: str | None = None,
            idempotency_key: str | None = None) -> ps.RunInfo:
        """Start a run of pipeline `name`, with params overriding its defaults."""
        body = ps.RunRequest(params=dict(params or {}), project=project, idempotency_key=idempotency_key)
        return self.client._send("POST", f"{API}/pipelines/{name}/runs", ps.RunInfo, body)

    def runs(self, name: str, *, project: str | None = None, limit: int = 20) -> ps.RunPage:
        """The newest runs of pipeline `name` first."""
        return self.client._get(f"{API}/pipelines/{name}/runs", ps.RunPage, project=project,
                                limit=limit)

    def show(self, run_id: int) -> ps.RunInfo:
        """One run with its steps."""
        return self.client._get(f"{API}/pipeline-runs/{int(run_id)}", ps.RunInfo)

    def retry(self, run_id: int) -> ps.RunInfo:
        """Retry a failed or cancelled run from its failed steps (a new run; the same one when asked twice)."""
        return self.client._send("POST", f"{API}/pipeline-runs/{int(run_id)}/retry", ps.RunInfo, None)

    def cancel(self, run_id: int) -> ps.RunInfo:
        """Cancel a run and all its steps."""
        return self.client._send("POST", f"{API}/pipeline-runs/{int(run_id)}/cancel", ps.RunInfo, None)

    def pause(self, name: str, *, project: str | None = None) -> ps.PipelineInfo:
        """Pause the pipeline's schedule."""
        return self._action(name, "pause", project)

    def resume(self, name: str, *, project: str | None = None) -> ps.PipelineInfo:
        """Resume the pipeline's schedule (counting from now)."""
        return self._action(name, "resume", project)

    def _action(self, name: str, action: str, project: str | None) -> ps.PipelineInfo:
        path = f"{API}/pipelines/{name}/{action}" + (f"?project={project}" if project else "")
        return self.client._send("POST", path, ps.PipelineInfo, None)
