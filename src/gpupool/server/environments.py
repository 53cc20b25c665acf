"""Python environments built by uv, cached by the hash of their spec, named for workloads (`environment: NAME`).

On disk, under `$GPUPOOL_HOME/environments/` (a shared filesystem in cluster mode, so every node finds the
same build):

- `cache/<hash>/`: a finished build (a virtual environment; `.gpupool-complete` written last). Only a directory
  with that marker is ever used.
- `cache/<hash>.log`: the build log (uv's output); `cache/<hash>.lock`: the build lock.
- `names/<name>.json`: a name -> hash, spec, owner, time (written atomically).

A build takes the hash's lock (`flock`, so concurrent requests for one spec, in threads or processes, build
once: the second waits and finds the finished build), builds into `cache/<hash>.partial-<random>`, and
renames it into place only when uv succeeded. A failed build leaves nothing but its log, and the request gets
an error carrying the log's tail. A server killed mid-build leaves a partial directory that is never used (it
is removed by the next build of that hash).
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpupool.domain.environments import EnvironmentSpec
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.domain.specs import validate_name

COMPLETE = ".gpupool-complete"
LOG_TAIL_CHARS = 4000  # the end of a failed build's log returned with the error: uv's resolution error fits
# uv resolves and installs from a local index in seconds; large ML stacks download gigabytes. An hour bounds a
# hung build without cutting a slow mirror short.
BUILD_TIMEOUT_S = 3600.0


@dataclass(frozen=True, slots=True)
class UvSettings:
    """How uv is run: its executable, and the package index (an offline site points at its mirror)."""

    uv: str = "uv"
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    find_links: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Environment:
    """A named environment: its spec, build hash, where it lives, who made it and when."""

    name: str
    spec: EnvironmentSpec
    path: Path
    owner: str
    created_at: float
    cached: bool = False  # this request found the build done (no uv run)


class EnvironmentStore:
    """Builds, names, lists and removes environments (see the module docstring). Thread-safe."""

    def __init__(self, root: Path, uv: UvSettings) -> None:
        self.root = root
        self.uv = uv
        self.cache = root / "cache"
        self.names = root / "names"

    def create(self, spec: EnvironmentSpec, owner: str, now: float) -> Environment:
        """Build (or find) the environment and give it its name. ConflictError when the name is taken by
        another spec; ValidationError (with the build log's tail) when the build fails. Blocks while building."""
        existing = self._read(spec.name)
        if existing is not None and existing.spec.hash != spec.hash:
            raise ConflictError(f"environment {spec.name!r} exists with another spec; remove it first "
                                f"(`gpupool envs rm {spec.name}`) or choose another name")
        cached = self.build(spec)
        if existing is not None:
            return Environment(existing.name, existing.spec, existing.path, existing.owner, existing.created_at, True)
        self.names.mkdir(parents=True, exist_ok=True)
        record = {"name": spec.name, "python": spec.python, "requirements": list(spec.requirements),
                  "hash": spec.hash, "owner": owner, "created_at": now}
        _write_atomic(self.names / f"{spec.name}.json", json.dumps(record, indent=2))
        return Environment(spec.name, spec, self.cache / spec.hash, owner, now, cached)

    def build(self, spec: EnvironmentSpec) -> bool:
        """Build `spec` into the cache unless it is there; True when it was (cached). See the module docstring."""
        self.cache.mkdir(parents=True, exist_ok=True)
        final = self.cache / spec.hash
        if (final / COMPLETE).exists():
            return True
        with _locked(self.cache / f"{spec.hash}.lock"):
            if (final / COMPLETE).exists():
                return True  # built by whoever held the lock before us
            for stale in self.cache.glob(f"{spec.hash}.partial-*"):
                shutil.rmtree(stale, ignore_errors=True)
            partial = self.cache / f"{spec.hash}.partial-{secrets.token_hex(4)}"
            log = self.cache / f"{spec.hash}.log"
            try:
                self._run_uv(spec, partial, log)
                (partial / COMPLETE).write_text(json.dumps(spec.canonical()))
                shutil.rmtree(final, ignore_errors=True)  # an incomplete leftover without the marker
                os.replace(partial, final)
            except BaseException:
                shutil.rmtree(partial, ignore_errors=True)
                raise
        return False

    def _run_uv(self, spec: EnvironmentSpec, target: Path, log: Path) -> None:
        index = [*(("--index-url", self.uv.index_url) if self.uv.index_url else ()),
                 *(a for url in self.uv.extra_index_urls for a in ("--extra-index-url", url)),
                 *(a for link in self.uv.find_links for a in ("--find-links", link))]
        commands = [[self.uv.uv, "venv", "--python", spec.python, "--seed", str(target)],
                    [self.uv.uv, "pip", "install", "--python", str(target / "bin" / "python"), *index,
                     *spec.requirements]]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "VIRTUAL_ENV"))}
        env["UV_NO_CONFIG"] = "1"  # the index comes from gpupool's settings, not from whoever runs the server
        with log.open("w") as out:
            out.write(f"# environment {spec.name}: python {spec.python}, {' '.join(spec.requirements)}\n")
            for command in commands:
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                try:
                    done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, check=False,
                                          timeout=BUILD_TIMEOUT_S)
                except (OSError, subprocess.TimeoutExpired) as exc:
                    out.write(f"\n{exc}\n")
                    done = None
                if done is None or done.returncode != 0:
                    out.flush()
                    tail = log.read_text(errors="replace")[-LOG_TAIL_CHARS:]
                    raise ValidationError(f"building environment {spec.name!r} failed; the end of its build log:\n"
                                          f"{tail}", "packages")

    def get(self, name: str) -> Environment:
        """The named environment; NotFoundError naming the ones there are."""
        found = self._read(validate_name(name, "environment"))
        if found is None:
            names = ", ".join(e.name for e in self.list()) or "none yet"
            raise NotFoundError(f"no environment {name!r}; environments: {names} (`gpupool envs create`)")
        return found

    def list(self) -> list[Environment]:
        """Every named environment, by name."""
        if not self.names.exists():
            return []
        found = (self._read(p.stem) for p in sorted(self.names.glob("*.json")))
        return [e for e in found if e is not None]

    def log(self, name: str) -> str:
        """The build log of the named environment ('' when none is kept)."""
        path = self.cache / f"{self.get(name).spec.hash}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self, name: str, user: str, is_admin: bool) -> Environment:
        """Remove the name (its owner or an administrator); the build goes too unless another name uses it."""
        found = self.get(name)
        if found.owner != user and not is_admin:
            raise PermissionDeniedError(f"environment {name!r} belongs to {found.owner}; only they or an "
                                        "administrator may remove it")
        (self.names / f"{name}.json").unlink(missing_ok=True)
        if not any(e.spec.hash == found.spec.hash for e in self.list()):
            with _locked(self.cache / f"{found.spec.hash}.lock"):
                (found.path / COMPLETE).unlink(missing_ok=True)  # unusable first, then gone
                shutil.rmtree(found.path, ignore_errors=True)
        return found

    def bin_dir(self, name: str) -> Path:
        """The `bin` directory of a built, named environment (NotFoundError / ValidationError otherwise)."""
        found = self.get(name)
        if not (found.path / COMPLETE).exists():
            raise ValidationError(f"environment {name!r} is not built (its build failed or was removed); create it "
                                  f"again with `gpupool envs create {name} ...`", "environment")
        return found.path / "bin"

    def _read(self, name: str) -> Environment | None:
        path = self.names / f"{name}.json"
        try:
            data: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        spec = EnvironmentSpec(data["name"], data["python"], tuple(data["requirements"]))
        return Environment(spec.name, spec, self.cache / spec.hash, str(data["owner"]), float(data["created_at"]))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    os.replace(tmp, path)


def environment_problem(store: EnvironmentStore, name: str | None) -> None:
    """Refuse a spec naming environment `name` unless it exists and is built: ValidationError (field
    `environment`) naming the environments there are and how to make one. Nothing when `name` is None."""
    if name is None:
        return
    try:
        store.bin_dir(name)
    except NotFoundError as missing:
        raise ValidationError(str(missing), "environment") from None
    except ValidationError as unbuilt:
        raise ValidationError(unbuilt.detail, "environment") from None


def environment_env(store: EnvironmentStore | None, name: str | None, default_path: str) -> dict[str, str]:
    """PATH (the environment's bin first) and VIRTUAL_ENV for a replica whose spec names `name`; {} for none.
    ValidationError when the server has no environments or the environment is missing or not built."""
    if name is None:
        return {}
    if store is None:
        raise ValidationError("this server has no environments", "environment")
    bin_dir = store.bin_dir(name)
    return {"PATH": f"{bin_dir}:{default_path}", "VIRTUAL_ENV": str(bin_dir.parent)}


def split_urls(text: str | None) -> tuple[str, ...]:
    """Space-separated URLs or paths as a tuple ('' or None: none)."""
    return tuple((text or "").split())


def uv_settings(settings: Any) -> UvSettings:
    """UvSettings from the server's settings (uv_path, environments_*): uv beside the server's Python when
    there is one, else `uv` on PATH."""
    beside = Path(sys.executable).parent / "uv"
    uv = settings.uv_path or (str(beside) if beside.exists() else shutil.which("uv") or "uv")
    return UvSettings(uv, settings.environments_index_url, split_urls(settings.environments_extra_index_urls),
                      split_urls(settings.environments_find_links))
