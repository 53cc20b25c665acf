"""First start: an administrator, the `default` project, and the admin token in $GPUPOOL_HOME/token."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from gpupool.domain.accounts import ProjectRole
from gpupool.server.services.accounts import create_project_row, create_user_row
from gpupool.server.services.auth import issue_token
from gpupool.store.db import Database
from gpupool.store.orm import MembershipRow
from gpupool.store.repos import accounts

log = logging.getLogger("gpupool.server")
DEFAULT_PROJECT = "default"


def write_token_file(path: Path, token: str) -> None:
    """Write `token` to `path` readable by this OS user only (mode 0600), replacing any older file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (token + "\n").encode())
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def ensure_admin(db: Database, admin_name: str, token_file: Path, now: float, reset_token: bool = False) -> bool:
    """On an empty database create the administrator `admin_name`, the `default` project (with its queue,
    the admin as its admin) and a token written to `token_file`. With `reset_token`, issue a new token for
    the existing administrator. Returns True when a token file was written."""
    with db.session() as session:
        if accounts.count_users(session) == 0:
            admin = create_user_row(session, admin_name, True, now)
            project = create_project_row(session, DEFAULT_PROJECT, now)
            session.add(MembershipRow(user_id=admin.id, project_id=project.id, role=ProjectRole.ADMIN.value))
            _, token = issue_token(session, admin, "bootstrap", now)
        elif reset_token:
            admin = accounts.user_by_name(session, admin_name)
            if admin is None or not admin.is_admin:
                raise ValueError(f"no administrator called {admin_name!r}")
            _, token = issue_token(session, admin, "reset", now)
        else:
            if not token_file.exists():
                log.warning("no token file at %s; run `gpupool up --reset-admin-token` to issue a new one",
                            token_file)
            return False
    write_token_file(token_file, token)
    log.info("administrator token written to %s", token_file)
    return True
