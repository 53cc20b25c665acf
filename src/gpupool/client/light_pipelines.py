"""Pipeline calls of the light client (`gpupool pipeline ...`): the same requests as client/pipelines.py (the
typed PipelineClient the SDK uses), answering with the server's JSON as plain dicts. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from gpupool.client.light import query_string

if TYPE_CHECKING:
    from gpupool.client.light import JsonObject, LightClient

API = "/api/v1"  # as client/http.py's


class LightPipelines:
    """Pipelines and their runs through one LightClient; errors are its errors (ValidationError with the field,
    NotFoundError, PermissionDeniedError, ConflictError...)."""

    def __init__(self, client: LightClient) -> None:
        self.client = client

    @staticmethod
    def _pipeline(name: str) -> str:
        return f"{API}/pipelines/{quote(name, safe='')}"

    def submit(self, spec_yaml: str, *, run: bool = False) -> JsonObject:
        """Store a pipeline (YAML text), replacing the one of its name; `run` also starts a run
        (pipeline_schemas.PipelineSubmitted as JSON)."""
        return self.client.send("POST", f"{API}/pipelines",  # type: ignore[no-any-return]
                                {"spec_yaml": spec_yaml, "run": run})

    def get(self, name: str, *, project: str | None = None) -> JsonObject:
        """A definition with its schedule state and latest fires (pipeline_schemas.PipelineInfo as JSON)."""
        return self.client.get(self._pipeline(name), project=project)  # type: ignore[no-any-return]

    def run(self, name: str, params: Mapping[str, Any] | None = None, *, project: str | None = None) -> JsonObject:
        """Start a run of pipeline `name`, with params overriding its defaults (pipeline_schemas.RunInfo)."""
        body = {"params": dict(params or {}), "project": project}
        return self.client.send("POST", f"{self._pipeline(name)}/runs", body)  # type: ignore[no-any-return]

    def runs(self, name: str, *, project: str | None = None, limit: int = 20) -> JsonObject:
        """The newest runs of pipeline `name` first (pipeline_schemas.RunPage as JSON)."""
        return self.client.get(f"{self._pipeline(name)}/runs",  # type: ignore[no-any-return]
                               project=project, limit=limit)

    def show(self, run_id: int) -> JsonObject:
        """One run with its steps (pipeline_schemas.RunInfo as JSON)."""
        return self.client.get(f"{API}/pipeline-runs/{int(run_id)}")  # type: ignore[no-any-return]

    def retry(self, run_id: int) -> JsonObject:
        """Retry a failed or cancelled run from its failed steps (a new run; the same one when asked twice)."""
        return self.client.send("POST", f"{API}/pipeline-runs/{int(run_id)}/retry")  # type: ignore[no-any-return]

    def cancel(self, run_id: int) -> JsonObject:
        """Cancel a run and all its steps."""
        return self.client.send("POST", f"{API}/pipeline-runs/{int(run_id)}/cancel")  # type: ignore[no-any-return]

    def pause(self, name: str, *, project: str | None = None) -> JsonObject:
        """Pause the pipeline's schedule (pipeline_schemas.PipelineInfo as JSON)."""
        return self._action(name, "pause", project)

    def resume(self, name: str, *, project: str | None = None) -> JsonObject:
        """Resume the pipeline's schedule, counting from now (pipeline_schemas.PipelineInfo as JSON)."""
        return self._action(name, "resume", project)

    def _action(self, name: str, action: str, project: str | None) -> JsonObject:
        path = f"{self._pipeline(name)}/{action}" + query_string({"project": project})
        return self.client.send("POST", path)  # type: ignore[no-any-return]
