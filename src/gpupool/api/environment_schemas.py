"""API types of Python environments (/api/v1/environments): pydantic only, shared by server, client and CLI."""

from __future__ import annotations

from pydantic import Field

from gpupool.api.schemas import NAME_PATTERN, Model

MAX_REQUIREMENTS_CHARS = 65_536  # a requirements file of a few hundred pinned lines is ~20 KB


class EnvironmentCreate(Model):
    """POST /environments: a name, a Python version, and packages (space-separated) and/or requirements text."""

    name: str = Field(pattern=NAME_PATTERN)
    python: str = "3.11"
    packages: str = Field("", max_length=MAX_REQUIREMENTS_CHARS)
    requirements: str = Field("", max_length=MAX_REQUIREMENTS_CHARS)


class EnvironmentInfo(Model):
    """A named environment; `shared`: made by an administrator, seen by everyone (else only its owner and
    administrators see it); `size_bytes`: its build's apparent size; `cached`: this request found its build
    done."""

    name: str
    python: str
    requirements: list[str]
    hash: str
    owner: str
    created_at: float
    path: str
    shared: bool = True
    size_bytes: int = 0
    cached: bool = False


class EnvironmentDetail(EnvironmentInfo):
    """GET /environments/<name>: with its build log."""

    log: str = ""
