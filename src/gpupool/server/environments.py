"""Python environments built by uv, cached by the hash of their spec, named for workloads (`environment: NAME`).

On disk, under `$GPUPOOL_HOME/environments/` (a shared filesystem in cluster mode, so every node finds the
same build):

- `cache/<hash>/`: a finished build (a virtual environment; `.gpupool-complete` written last). Only a directory
  with that marker is ever used.
- `cache/<hash>.log`: the build log (uv's output); `cache/<hash>.lock`: the build lock.
- `names/<name>.json`: a name -> hash, spec, owner, whether it is shared, its size, time (created once: a
  name is never overwritten by a concurrent create).

**Visibility**: an environment an administrator creates is shared, seen and used by everyone; one a member
creates is theirs, seen and used by them and administrators only (to other members it does not exist, and its
name is taken). **Quota**: a member's own environments may hold `user_quota_bytes` in all (the apparent size
of each distinct build, measured when it is built); a create that would go over it is refused naming the
usage and the quota, and a build made for it that no other name uses is removed. Administrators have none.

A build takes the hash's lock (`flock`, so concurrent requests for one spec, in threads or processes, build
once: the second waits and finds the finished build), builds into `cache/<hash>.partial-<random>`, and
renames it into place only when uv succeeded. A failed build leaves nothing but its log, and the request gets
an error carrying the log's tail. A server killed mid-build leaves a partial directory that is never used (it
is removed by the next build of that hash).
"""

from __future__ import annotations

import contextlib
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
from gpupool.executors.environment import ENVIRONMENT_COMPLETE, ENVIRONMENT_DIR_VAR

COMPLETE = ENVIRONMENT_COMPLETE
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
class Viewer:
    """Who asks: a user's name and whether they are an administrator (they see every environment)."""

    name: str
    is_admin: bool


@dataclass(frozen=True, slots=True)
class Environment:
    """A named environment: its spec, build hash, where it lives, who made it and when, whether everyone sees
    it (made by an administrator), and its build's size in bytes."""

    name: str
    spec: EnvironmentSpec
    path: Path
    owner: str
    created_at: float
    shared: bool = True
    size_bytes: int = 0
    cached: bool = False  # this request found the build done (no uv run)

    def visible_to(self, viewer: Viewer | None) -> bool:
        """Shared ones to everyone, a member's own to them and administrators; None stands for the server."""
        return viewer is None or self.shared or viewer.is_admin or viewer.name == self.owner


class EnvironmentStore:
    """Builds, names, lists and removes environments (see the module docstring). Thread-safe.
    `user_quota_bytes`: what a member's own environments may hold in all (None: no limit)."""

    def __init__(self, root: Path, uv: UvSettings, user_quota_bytes: int | None = None) -> None:
        self.root = root
        self.uv = uv
        self.user_quota_bytes = user_quota_bytes
        self.cache = root / "cache"
        self.names = root / "names"

    def create(self, spec: EnvironmentSpec, owner: Viewer, now: float) -> Environment:
        """Build (or find) the environment and give it its name, shared when an administrator asks. ConflictError
        when the name is taken (by another spec, or by someone else's environment); ValidationError with the
        build log's tail when the build fails, or naming usage and quota when it would exceed the owner's quota
        (a build made for it is then removed). Blocks while building."""
        existing = self._read(spec.name)
        if existing is not None:
            return self._again(existing, spec, owner)
        quota = None if owner.is_admin else self.user_quota_bytes
        if quota is not None:
            self._check_quota(owner.name, spec.hash, None, quota)  # already full: refuse before building
        cached = self.build(spec)
        self.names.mkdir(parents=True, exist_ok=True)
        with _locked(self.names / f".owner-{owner.name}.lock"):  # one owner's quota checks one at a time
            size = self.build_size(spec.hash)
            if quota is not None:
                try:
                    self._check_quota(owner.name, spec.hash, size, quota)
                except ValidationError:
                    self._drop_build_unless_named(spec.hash)
                    raise
            record = {"name": spec.name, "python": spec.python, "requirements": list(spec.requirements),
                      "hash": spec.hash, "owner": owner.name, "shared": owner.is_admin, "size_bytes": size,
                      "created_at": now}
            if not _create_once(self.names / f"{spec.name}.json", json.dumps(record, indent=2)):
                raced = self._read(spec.name)  # created by a concurrent request meanwhile
                if raced is None:
                    raise ConflictError(f"environment {spec.name!r} was being removed; try again")
                return self._again(raced, spec, owner)
        self.build(spec)  # its build was removed by a concurrent refusal in between: built again (rare)
        return Environment(spec.name, spec, self.cache / spec.hash, owner.name, now, owner.is_admin, size, cached)

    def _again(self, existing: Environment, spec: EnvironmentSpec, owner: Viewer) -> Environment:
        """A create of a name that exists: the same environment when the caller sees it and the spec is the
        same (built again if its build went), else ConflictError."""
        if not existing.visible_to(owner):
            raise ConflictError(f"the name {spec.name!r} is taken by another user's environment; choose another")
        if existing.spec.hash != spec.hash:
            raise ConflictError(f"environment {spec.name!r} exists with another spec; remove it first "
                                f"(`gpupool envs rm {spec.name}`) or choose another name")
        self.build(spec)
        return Environment(existing.name, existing.spec, existing.path, existing.owner, existing.created_at,
                           existing.shared, existing.size_bytes, True)

    def usage(self, owner: str) -> int:
        """Bytes the owner's own (not shared) environments hold: each distinct build once."""
        sizes = {e.spec.hash: e.size_bytes for e in self.list() if e.owner == owner and not e.shared}
        return sum(sizes.values())

    def _check_quota(self, owner: str, build_hash: str, size: int | None, quota: int) -> None:
        """ValidationError naming usage and quota when adding a build of `size` bytes (None: not built yet,
        refused only when the quota is already used up) takes the owner past `quota`."""
        if any(e.spec.hash == build_hash for e in self.list() if e.owner == owner and not e.shared):
            return  # counted already: another name of theirs uses this build
        used = self.usage(owner)
        if (used + size > quota) if size is not None else (used >= quota):
            needs = f"; this one needs {_amount(size)}" if size is not None else ""
            raise ValidationError(f"your environments use {_amount(used)} of your {_amount(quota)} quota{needs}; "
                                  "remove one (`gpupool envs rm NAME`) or ask an administrator for a shared "
                                  "environment", "quota")

    def build_size(self, build_hash: str) -> int:
        """The apparent size in bytes of a finished build (recorded in its marker when it was built)."""
        final = self.cache / build_hash
        marker = _read_json(final / COMPLETE)
        if marker is not None and isinstance(marker.get("size_bytes"), int):
            return int(marker["size_bytes"])
        return tree_size(final)

    def _drop_build_unless_named(self, build_hash: str) -> None:
        """Remove a build no name uses (unusable first, then gone), under its lock."""
        if any(e.spec.hash == build_hash for e in self.list()):
            return
        with _locked(self.cache / f"{build_hash}.lock"):
            (self.cache / build_hash / COMPLETE).unlink(missing_ok=True)
            shutil.rmtree(self.cache / build_hash, ignore_errors=True)

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
                marker = {**spec.canonical(), "size_bytes": tree_size(partial)}
                (partial / COMPLETE).write_text(json.dumps(marker))
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
        commands = [[self.uv.uv, "venv", "--python", spec.python, "--seed", *index, str(target)],  # seeds: same index
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

    def get(self, name: str, viewer: Viewer | None = None) -> Environment:
        """The named environment as `viewer` sees it (None: the server, which sees all); NotFoundError naming
        the ones they see (another member's own environment is not found)."""
        found = self._read(validate_name(name, "environment"))
        if found is None or not found.visible_to(viewer):
            names = ", ".join(e.name for e in self.list(viewer)) or "none yet"
            raise NotFoundError(f"no environment {name!r}; environments: {names} (`gpupool envs create`)")
        return found

    def list(self, viewer: Viewer | None = None) -> list[Environment]:
        """Every named environment `viewer` sees (None: all), by name."""
        if not self.names.exists():
            return []
        found = (self._read(p.stem) for p in sorted(self.names.glob("*.json")))
        return [e for e in found if e is not None and e.visible_to(viewer)]

    def log(self, name: str, viewer: Viewer | None = None) -> str:
        """The build log of the named environment ('' when none is kept)."""
        path = self.cache / f"{self.get(name, viewer).spec.hash}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def remove(self, name: str, viewer: Viewer) -> Environment:
        """Remove the name (its owner or an administrator); the build goes too unless another name uses it."""
        found = self.get(name, viewer)
        if found.owner != viewer.name and not viewer.is_admin:
            raise PermissionDeniedError(f"environment {name!r} belongs to {found.owner}; only they or an "
                                        "administrator may remove it")
        (self.names / f"{name}.json").unlink(missing_ok=True)
        self._drop_build_unless_named(found.spec.hash)
        return found

    def bin_dir(self, name: str, viewer: Viewer | None = None) -> Path:
        """The `bin` directory of a built, named environment `viewer` sees (NotFoundError / ValidationError
        otherwise)."""
        found = self.get(name, viewer)
        if not (found.path / COMPLETE).exists():
            raise ValidationError(f"environment {name!r} is not built (its build failed or was removed); create it "
                                  f"again with `gpupool envs create {name} ...`", "environment")
        return found.path / "bin"

    def _read(self, name: str) -> Environment | None:
        data = _read_json(self.names / f"{name}.json")
        if data is None:
            return None
        spec = EnvironmentSpec(data["name"], data["python"], tuple(data["requirements"]))
        path = self.cache / spec.hash
        size = data.get("size_bytes")
        return Environment(spec.name, spec, path, str(data["owner"]), float(data["created_at"]),
                           bool(data.get("shared", True)),  # made before owners were told apart: shared
                           int(size) if isinstance(size, int) else self.build_size(spec.hash))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _create_once(path: Path, text: str) -> bool:
    """Write `path` whole unless it exists (link of a complete temporary file); False when it existed."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    tmp.write_text(text)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def tree_size(path: Path) -> int:
    """The apparent size in bytes of the files under `path` (links not followed; 0 when it is missing)."""
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


def _amount(size: int) -> str:
    """Bytes as MiB below a GiB, else GiB."""
    return f"{size / 2**20:.1f} MiB" if size < 2**30 else f"{size / 2**30:.2f} GiB"


def environment_problem(store: EnvironmentStore, name: str | None, viewer: Viewer | None) -> None:
    """Refuse a spec naming environment `name` unless it exists, `viewer` sees it and it is built:
    ValidationError (field `environment`) naming the environments they see and how to make one. Nothing when
    `name` is None."""
    if name is None:
        return
    try:
        store.bin_dir(name, viewer)
    except NotFoundError as missing:
        raise ValidationError(str(missing), "environment") from None
    except ValidationError as unbuilt:
        raise ValidationError(unbuilt.detail, "environment") from None


def environment_env(store: EnvironmentStore | None, name: str | None, default_path: str,
                    viewer: Viewer | None) -> dict[str, str]:
    """PATH (the environment's bin first), VIRTUAL_ENV and GPUPOOL_ENVIRONMENT_DIR (the node checks it sees the
    build) for a replica whose spec names `name` and whose user is `viewer`; {} for none. ValidationError when
    the server has no environments or the environment is missing, not theirs to use or not built."""
    if name is None:
        return {}
    if store is None:
        raise ValidationError("this server has no environments", "environment")
    bin_dir = store.bin_dir(name, viewer)
    return {"PATH": f"{bin_dir}:{default_path}", "VIRTUAL_ENV": str(bin_dir.parent),
            ENVIRONMENT_DIR_VAR: str(bin_dir.parent)}


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
