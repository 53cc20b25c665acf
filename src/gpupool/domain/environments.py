"""Python environments: what `gpupool envs create` asks for, checked, in a canonical form and its hash. Pure.

An environment is a Python version and a list of requirements (`--packages "torch==2.13.0 numpy"` or the lines
of a requirements file). The hash of the canonical form (sorted, de-duplicated requirements) keys the build
cache: two names with the same spec share one build, and building a spec twice finds the first build.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gpupool.domain.errors import ValidationError
from gpupool.domain.specs import validate_name

PYTHON_RE = re.compile(r"^3\.\d{1,2}(\.\d{1,3})?$")
# A requirement as pip writes it (name, extras, version specifiers, markers without spaces). No URLs, paths,
# options or shell characters: an environment is built from the pool's index, never from arbitrary sources.
REQUIREMENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?([<>=!~]=?[A-Za-z0-9.*+!-]+"
                            r"(,[<>=!~]=?[A-Za-z0-9.*+!-]+)*)?$")
MAX_REQUIREMENTS = 500  # a large ML project pins a few hundred packages; more is a mistake


@dataclass(frozen=True, slots=True)
class EnvironmentSpec:
    """A checked environment request: a name, a Python version, its requirements (sorted, unique)."""

    name: str
    python: str
    requirements: tuple[str, ...]

    def canonical(self) -> dict[str, Any]:
        """What the build depends on (the name is not part of it)."""
        return {"python": self.python, "requirements": list(self.requirements)}

    @property
    def hash(self) -> str:
        """The build's cache key: SHA-256 of the canonical form, 24 hex characters."""
        return hashlib.sha256(json.dumps(self.canonical(), sort_keys=True).encode()).hexdigest()[:24]


def parse_requirements(text: str, field: str = "requirements") -> list[str]:
    """Requirements from a requirements file or a space-separated list: comments and blank lines skipped;
    ValidationError naming the first line that is not a plain requirement."""
    out = []
    for number, raw in enumerate(text.replace("\r", "").split("\n"), start=1):
        for item in raw.split("#", 1)[0].split():
            if not REQUIREMENT_RE.match(item):
                raise ValidationError(f"line {number}: {item!r} is not a requirement such as numpy or torch==2.13.0 "
                                      "(URLs, paths and pip options are not accepted)", field)
            out.append(item)
    return out


def parse_environment(name: Any, python: Any, packages: Sequence[str]) -> EnvironmentSpec:
    """A checked EnvironmentSpec; ValidationError naming the field."""
    if not isinstance(python, str) or not PYTHON_RE.match(python):
        raise ValidationError(f"{python!r} is not a Python version such as 3.11", "python")
    unique = sorted({p.strip() for p in packages}, key=str.lower)
    if not unique:
        raise ValidationError("name at least one package, e.g. --packages \"numpy ipykernel\"", "packages")
    if len(unique) > MAX_REQUIREMENTS:
        raise ValidationError(f"{len(unique)} requirements; at most {MAX_REQUIREMENTS}", "packages")
    return EnvironmentSpec(validate_name(name, "name"), python, tuple(unique))
