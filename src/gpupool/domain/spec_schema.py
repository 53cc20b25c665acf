"""A JSON Schema of the workload spec, for editors: `gpupool schema > gpupool.schema.json`.

The schema is built from the parser's own lists of fields (`specs._JOB_KEYS`, `specs._ROLE_KEYS`,
`resources._REQUEST_KEYS`, `resources._GPU_KEYS`), so a field the parser accepts is never missing; the parser
stays the authority (its messages say what is wrong and how to write it) and the schema only helps while
typing: completion, hover text and early marks in the editor.
"""

from __future__ import annotations

from typing import Any

from gpupool.domain import resources, specs

_SIZE = {"type": "string", "pattern": r"^\s*[0-9]*\.?[0-9]+\s*[A-Za-z]+\s*$",
         "description": "A size with its unit: 16GiB, 512MiB, 1.5TB"}
_DURATION = {"anyOf": [{"type": "number", "exclusiveMinimum": 0},
                       {"type": "string", "description": "e.g. 90s, 30m, 6h, 1h30m, 2d"}]}
_ENV = {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
        "propertyNames": {"pattern": specs.ENV_KEY_RE.pattern}, "description": "Environment variables"}
_CPU = {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"type": "string", "pattern": r"^\s*[0-9.]+m?\s*$"}],
        "description": "CPU cores: 4, 0.5 or 500m"}

_GPU_FIELDS: dict[str, Any] = {
    "count": {"type": "integer", "minimum": 1, "description": "Whole GPUs on one node"},
    "share": {"type": "number", "exclusiveMinimum": 0, "maximum": 1, "description": "A share of one GPU"},
    "memory": {**_SIZE, "description": "GPU memory wanted, e.g. 10GiB"},
    "model": {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
              "description": "Acceptable GPU models, e.g. [A100, H100]"},
    "mig": {"type": "string", "pattern": r"^\d+g\.\d+gb$", "description": "A MIG profile, e.g. 1g.10gb"},
}
_GPU = {"anyOf": [{"type": "number", "exclusiveMinimum": 0, "description": "2: whole GPUs; 0.5: a share"},
                  {"type": "object", "properties": {k: _GPU_FIELDS[k] for k in resources._GPU_KEYS},
                   "additionalProperties": False}]}
_RESOURCE_FIELDS: dict[str, Any] = {"cpu": _CPU, "memory": _SIZE, "gpu": _GPU}
_RESOURCES = {"type": "object", "properties": {k: _RESOURCE_FIELDS[k] for k in resources._REQUEST_KEYS},
              "additionalProperties": False, "description": "What each replica needs"}
_ROLE_FIELDS: dict[str, Any] = {
    "replicas": {"type": "integer", "minimum": 1, "maximum": specs.MAX_REPLICAS},
    "resources": _RESOURCES, "command": {"type": "string"}, "env": _ENV}
_ROLE = {"type": "object", "properties": {k: _ROLE_FIELDS[k] for k in specs._ROLE_KEYS},
         "additionalProperties": False}

_JOB_FIELDS: dict[str, Any] = {
    "kind": {"enum": [k.value for k in specs._PARSERS], "default": "job"},
    "name": {"type": "string", "pattern": specs.NAME_RE.pattern},
    "project": {"type": "string", "pattern": specs.NAME_RE.pattern,
                "description": "Default: your default project"},
    "queue": {"type": "string", "pattern": specs.NAME_RE.pattern, "description": "Default: the project's queue"},
    "priority": {"anyOf": [{"enum": sorted(specs.PRIORITY_NAMES)},
                           {"type": "integer", "minimum": 0, "maximum": specs.MAX_PRIORITY}]},
    "replicas": {"type": "integer", "minimum": 1, "maximum": specs.MAX_REPLICAS,
                 "description": "Several replicas form one gang: all or nothing"},
    "roles": {"type": "object", "properties": dict.fromkeys(specs.ROLE_ORDER, _ROLE), "additionalProperties": False,
              "description": "Replicas by role (chief, worker, ps), instead of replicas:"},
    "resources": _RESOURCES,
    "command": {"type": "string", "description": "What each replica runs"},
    "env": _ENV,
    "max_runtime": _DURATION,
    "preemptible": {"type": "boolean"},
    "min_available": {"type": "integer", "minimum": 1, "description": "Gang size (default: every replica)"},
    "workdir": {"type": "string", "description": "Absolute directory the command starts in"},
    "ports": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 65535},
              "maxItems": specs.MAX_PORTS, "uniqueItems": True,
              "description": "Ports each replica listens on (GPUPOOL_PORT_<port> says where)"},
    "distributed": {"enum": [d.value for d in specs.Distributed]},
    "retries": {"type": "integer", "minimum": 0, "maximum": specs.MAX_RETRIES},
    "array": {"type": "string", "pattern": r"^[0-9,:%\s-]+$",
              "description": "A job array: one task per index, e.g. 0-999, 0-999:10, 1,5,9; %N caps tasks at "
                             "once; each task gets GPUPOOL_ARRAY_INDEX and {{array.index}} in its command"},
    "environment": {"type": "string", "pattern": specs.NAME_RE.pattern,
                    "description": "A Python environment (`gpupool envs ls`); its bin comes first on PATH"},
    "idle_timeout": {"anyOf": [_DURATION, {"const": "off"}],
                     "description": "kind: notebook only: stopped after this long idle (off: never)"},
}


def workload_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a workload spec file."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "gpupool workload spec",
        "type": "object",
        "properties": {key: _JOB_FIELDS[key] for key in (*specs._JOB_KEYS, "idle_timeout")},
        "additionalProperties": False,
        "anyOf": [{"required": ["command"]}, {"required": ["roles"]},
                  {"required": ["kind"], "properties": {"kind": {"const": "notebook"}}}],
    }
