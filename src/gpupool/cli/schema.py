"""`gpupool schema`: print the JSON Schema of workload specs (for an editor's YAML support)."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    """Add the `schema` command to `app`."""

    @app.command()
    def schema() -> None:
        """Print the JSON Schema of workload specs: `gpupool schema > gpupool.schema.json`, then point your
        editor at it (VS Code's YAML extension: "yaml.schemas": {"./gpupool.schema.json": "*.gpupool.yaml"})."""
        from gpupool.domain.spec_schema import workload_schema  # noqa: PLC0415  (commands load what they use)

        typer.echo(json.dumps(workload_schema(), indent=2, sort_keys=False))
