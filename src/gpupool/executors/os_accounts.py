"""OS identities of a multi-user pool: each gpupool user runs as an OS user, each project is an OS group.

When the server runs as root, a replica of user U in project P runs as:
- uid: the OS account `user_map[U]` when the mapping names one; else the existing account named U when it
  is an ordinary login account (uid >= MIN_LOGIN_UID, not `nobody`), so a pool on a machine with real
  accounts runs jobs as their owners; else an account gpupool creates, `<user_prefix>U` (e.g. `gp-alice`),
  without a home directory or a login shell;
- primary gid: the OS group `<group_prefix>P` (e.g. `gpp-vision`), created when missing;
- supplementary groups: that project group, the admins' group `<group_prefix>admins` for administrators
  (the group that may write the shared storage), and an existing account's own groups.

System accounts (uid below MIN_LOGIN_UID: root, daemon, ...) are never used, whatever the user's name, so a
gpupool user called `root` runs as `gp-root`. Names are made valid for `useradd` (lower case, letters,
digits, '_' and '-', at most 32 characters); a name that had to change gets a short digest of the original
appended, so `Alice` and `alice` never share an account.
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from gpupool.executors.base import ExecutorError, RunAs

MIN_LOGIN_UID = 1000  # Debian's and Fedora's UID_MIN (login.defs): below it are system accounts
NOBODY_UID = 65534
MAX_OS_NAME = 32  # useradd's limit on most distributions
ADMINS_GROUP = "admins"
_INVALID = re.compile(r"[^a-z0-9_-]")
Runner = Callable[[Sequence[str]], None]


def _run(argv: Sequence[str]) -> None:
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=60)
    if result.returncode not in (0, 9):  # 9: the name exists already (another start created it meanwhile)
        raise ExecutorError(f"{' '.join(argv)} failed: {result.stderr.strip() or result.returncode}")


def os_name(prefix: str, name: str) -> str:
    """A valid OS user or group name for gpupool name `name` (see the module docstring)."""
    safe = _INVALID.sub("-", name.lower())
    candidate = prefix + safe
    if safe == name and len(candidate) <= MAX_OS_NAME:
        return candidate
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{candidate[:MAX_OS_NAME - 9]}-{digest}"


@dataclass(frozen=True)
class OsAccounts:
    """Maps gpupool users and projects to OS users and groups, creating them with useradd/groupadd."""

    user_prefix: str = "gp-"
    group_prefix: str = "gpp-"
    user_map: Mapping[str, str] | None = None
    storage_home: Callable[[str], str] = lambda _user: "/"
    runner: Runner = _run

    def group(self, name: str) -> int:
        """The gid of OS group `<group_prefix><name>`, created when missing."""
        group_name = os_name(self.group_prefix, name)
        try:
            return grp.getgrnam(group_name).gr_gid
        except KeyError:
            self.runner(["groupadd", group_name])
        return grp.getgrnam(group_name).gr_gid

    def account(self, user: str) -> tuple[pwd.struct_passwd, bool]:
        """The OS account of gpupool user `user` and whether it existed before gpupool (an own account)."""
        mapped = (self.user_map or {}).get(user)
        if mapped:
            try:
                entry = pwd.getpwnam(mapped)
            except KeyError:
                raise ExecutorError(f"the OS account {mapped!r} mapped to user {user!r} does not exist") from None
            if entry.pw_uid == 0:
                raise ExecutorError(f"user {user!r} is mapped to {mapped!r}, which is root; map it to another")
            return entry, True
        try:
            entry = pwd.getpwnam(user)
            if MIN_LOGIN_UID <= entry.pw_uid != NOBODY_UID:
                return entry, True
        except KeyError:
            pass
        created = os_name(self.user_prefix, user)
        try:
            return pwd.getpwnam(created), False
        except KeyError:
            self.runner(["useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin",
                         "--home-dir", "/nonexistent", "--comment", f"gpupool user {user}", created])
        return pwd.getpwnam(created), False

    def admins_gid(self) -> int:
        """The gid of the admins' group (owner group of the shared storage), created when missing."""
        return self.group(ADMINS_GROUP)

    def run_as(self, user: str, project: str, admin: bool = False) -> RunAs:
        """The identity a replica of `user` in `project` runs as (creating accounts and groups as needed)."""
        entry, own = self.account(user)
        project_gid = self.group(project)
        groups = {project_gid}
        if admin:
            groups.add(self.admins_gid())
        if own:
            groups.update(g for g in _own_groups(entry) if g != 0)
        return RunAs(user=entry.pw_name, uid=entry.pw_uid, gid=project_gid, groups=tuple(sorted(groups)),
                     home=self.storage_home(user))


def _own_groups(entry: pwd.struct_passwd) -> list[int]:
    try:
        return os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        return [entry.pw_gid]
