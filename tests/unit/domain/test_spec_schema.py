"""The JSON Schema of specs: every field the parser accepts is in it, and the examples validate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gpupool.cli.main import app
from gpupool.domain import notebooks, resources, specs
from gpupool.domain.spec_schema import workload_schema

jsonschema_rs = pytest.importorskip("jsonschema_rs")
EXAMPLES = Path(__file__).resolve().parents[3] / "examples"
JOB_SPECS = [p for p in sorted(EXAMPLES.rglob("*.yaml")) if (yaml.safe_load(p.read_text()) or {}).get("kind", "job")
             == "job" and "command" in (yaml.safe_load(p.read_text()) or {})]


def test_the_schema_names_every_field_the_parser_accepts() -> None:
    schema = workload_schema()
    assert list(schema["properties"]) == [*specs._JOB_KEYS, "idle_timeout"]  # idle_timeout: notebooks'
    assert set(notebooks.NOTEBOOK_KEYS) <= set(schema["properties"])
    assert list(schema["properties"]["resources"]["properties"]) == list(resources._REQUEST_KEYS)
    gpu_object = schema["properties"]["resources"]["properties"]["gpu"]["anyOf"][1]
    assert list(gpu_object["properties"]) == list(resources._GPU_KEYS)


@pytest.mark.parametrize("path", JOB_SPECS, ids=lambda p: p.name)
def test_the_examples_validate(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    specs.parse_spec(data)  # the parser accepts it ...
    assert jsonschema_rs.validator_for(workload_schema()).is_valid(data)  # ... and so does the schema


@pytest.mark.parametrize("data", [{"command": "x", "replica": 2}, {"command": "x", "resources": {"gpu": {"cnt": 1}}},
                                  {"command": "x", "ports": [0]}, {"command": "x", "priority": "urgent"}])
def test_mistakes_are_marked(data: dict[str, object]) -> None:
    assert not jsonschema_rs.validator_for(workload_schema()).is_valid(data)


def test_the_command_prints_it() -> None:
    result = CliRunner().invoke(app, ["schema"])
    assert result.exit_code == 0
    assert json.loads(result.output) == workload_schema()
