"""Storage scopes: the directories a replica gets for its user, its project, and everyone.

Layout under `$GPUPOOL_HOME/storage`:

    users/<user>/          private to one user      -> GPUPOOL_USER_DIR
    projects/<project>/    shared by a project      -> GPUPOOL_PROJECT_DIR
    shared/                everyone's, read-only     -> GPUPOOL_SHARED_DIR
                           unless the user is an admin

A workload is given only its own user's and project's directories. Names become path components, so they
are validated strictly (`validate_scope_name`): letters, digits, '.', '_' and '-', starting with a letter
or digit, at most 64 characters, no '..' anywhere. Every directory is checked, after creation, to resolve
inside the storage root (a symlink planted in its place is refused).

Multi-user pools (the server runs as root, each replica as its user's OS identity, see os_accounts.py):
`prepare` is given the owners (`ScopeOwners`) and sets, every time, user dir 0700 owned by the user's
uid, project dir 2770 owned by root and the project's group (new files inherit the group), shared dir 2775
owned by root and the admins' group (read-only for everyone else), and the directories above them 0711
(traversable, not listable). The kernel then refuses another user's or project's files.

Single-user pools (every replica runs as the server's OS user): directories are created with mode 0700
(users), 0770 (projects), 0755 (shared), and the shared directory is read-only for non-admin replicas when
the executor declares the READ_ONLY_PATHS capability (a read-only bind mount, root only). A replica that
knows the path of another user's or project's directory can open it: the environment only leaves it out.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from gpupool.domain.errors import ValidationError

MAX_NAME_CHARS = 64
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
USER_DIR_MODE = 0o700
PROJECT_DIR_MODE = 0o770
SHARED_DIR_MODE = 0o755
MULTI_USER_PROJECT_MODE = 0o2770
MULTI_USER_SHARED_MODE = 0o2775
TRAVERSE_ONLY_MODE = 0o711


def validate_scope_name(name: object, what: str = "name") -> str:
    """Return `name` when it is safe as one path component, else raise ValidationError saying why.

    Accepted: 1 to 64 characters of letters, digits, '.', '_' and '-', starting with a letter or digit,
    without '..'. This refuses '', '.', '..', '../x', 'a/b', absolute paths, NUL bytes and whitespace.
    """
    if not isinstance(name, str) or not name:
        raise ValidationError(f"a {what} is required (letters, digits, '.', '_', '-')", what)
    if len(name) > MAX_NAME_CHARS:
        raise ValidationError(f"{name[:20]!r}... is longer than {MAX_NAME_CHARS} characters", what)
    if "/" in name or "\\" in name or ".." in name:
        raise ValidationError(f"{name!r} must not contain '/', '\\' or '..'", what)
    if not _NAME_RE.match(name):
        raise ValidationError(f"{name!r} may hold only letters, digits, '.', '_' and '-', and must start with "
                              "a letter or digit", what)
    return name


@dataclass(frozen=True, slots=True)
class ScopeOwners:
    """Who owns the scopes of one replica in a multi-user pool: the user's uid, the project's gid and the
    admins' gid (the group that may write the shared directory)."""

    user_uid: int
    project_gid: int
    admins_gid: int


@dataclass(frozen=True, slots=True)
class StorageScopes:
    """The three directories of one replica and whether it may write the shared one."""

    user_dir: Path
    project_dir: Path
    shared_dir: Path
    shared_writable: bool

    def env(self) -> dict[str, str]:
        """GPUPOOL_USER_DIR, GPUPOOL_PROJECT_DIR and GPUPOOL_SHARED_DIR."""
        return {
            "GPUPOOL_USER_DIR": str(self.user_dir),
            "GPUPOOL_PROJECT_DIR": str(self.project_dir),
            "GPUPOOL_SHARED_DIR": str(self.shared_dir),
        }

    def read_only_paths(self) -> tuple[Path, ...]:
        """Directories to pass as ReplicaLaunch.read_only_paths: the shared one unless writable."""
        return () if self.shared_writable else (self.shared_dir,)


class StorageLayout:
    """The storage tree under `home/storage`. Creates directories on demand; never deletes anything."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "storage"

    def user_dir(self, user: str) -> Path:
        """Path of `user`'s private directory (validated, not created)."""
        return self.root / "users" / validate_scope_name(user, "user")

    def project_dir(self, project: str) -> Path:
        """Path of `project`'s directory (validated, not created)."""
        return self.root / "projects" / validate_scope_name(project, "project")

    @property
    def shared_dir(self) -> Path:
        """Path of the directory shared by everyone."""
        return self.root / "shared"

    def _ensure(self, path: Path, mode: int, root: str) -> Path:
        """`path` created if missing (with exactly `mode`), resolved; refused unless it lies in `root` (resolved).
        On strings (os.path): every launch runs this three times, and pathlib's objects cost more than the checks."""
        try:
            _make_dir(path, mode)
        except FileNotFoundError:  # its parent is missing: the first directory of its kind
            path.parent.mkdir(parents=True, exist_ok=True)
            _make_dir(path, mode)
        resolved = os.path.realpath(path)
        if not resolved.startswith(root + os.sep) or not os.path.isdir(resolved):
            raise ValidationError(f"storage directory {path} resolves outside {self.root}; remove the link")
        return Path(resolved)

    def prepare(self, user: str, project: str, *, admin: bool = False,
                owners: ScopeOwners | None = None) -> StorageScopes:
        """Create (if needed) and return the scopes of a replica run by `user` in `project`. The shared
        directory is writable only for an admin. With `owners` (a multi-user pool) the ownership and modes
        of the module docstring are applied, to new and existing directories alike."""
        user_path = self.user_dir(user)
        project_path = self.project_dir(project)
        root = os.path.realpath(self.root)  # created with the first directory below it
        scopes = StorageScopes(
            user_dir=self._ensure(user_path, USER_DIR_MODE, root),
            project_dir=self._ensure(project_path, PROJECT_DIR_MODE, root),
            shared_dir=self._ensure(self.shared_dir, SHARED_DIR_MODE, root),
            shared_writable=admin,
        )
        if owners is not None:
            for directory in (self.root, self.root / "users", self.root / "projects"):
                _own(directory, 0, 0, TRAVERSE_ONLY_MODE)
            _own(scopes.user_dir, owners.user_uid, 0, USER_DIR_MODE)
            _own(scopes.project_dir, 0, owners.project_gid, MULTI_USER_PROJECT_MODE)
            _own(scopes.shared_dir, 0, owners.admins_gid, MULTI_USER_SHARED_MODE)
        return scopes


def _make_dir(path: Path, mode: int) -> None:
    """Create the directory `path` with exactly `mode` (whatever the umask); an existing one keeps its own."""
    try:
        path.mkdir()
        path.chmod(mode)
    except FileExistsError:
        pass


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid, follow_symlinks=False)
    path.chmod(mode)
