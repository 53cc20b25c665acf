"""Multi-user isolation, for real: a server running as root starts each replica as its user's OS identity.

The probes a member's job runs are those an attacker would: read the admin token, the database, the
executor's state, another user's or project's storage and another workload's logs. The test creates its
OS users and groups with unique prefixes and removes them at the end; it needs root (CI runs as root).
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.client.http import Client
from gpupool.domain.errors import ConflictError
from gpupool.server.state_files import secure_home

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None,
                                reason="multi-user isolation needs root and useradd")

PROBE = r"""
H=$(dirname $(dirname $(dirname $GPUPOOL_USER_DIR)))
try() {{ label=$1; shift; if "$@" >/dev/null 2>&1; then echo "$label=yes"; else echo "$label=no"; fi; }}
try token cat $H/token
try database cat $H/gpupool.db
try list_home ls $H
try executor ls $H/executor
try other_logs cat $H/logs/{other}/replica-0.log
try other_user cat $H/storage/users/bob/secret
try other_project cat $H/storage/projects/beta/secret
try write_user sh -c "echo mine > $GPUPOOL_USER_DIR/mine"
try write_project sh -c "echo ours > $GPUPOOL_PROJECT_DIR/ours"
try read_shared cat $GPUPOOL_SHARED_DIR/readme
try write_shared sh -c "echo x > $GPUPOOL_SHARED_DIR/x"
echo "uid=$(id -u) gid=$(id -g) owner=$(stat -c %U $GPUPOOL_USER_DIR/mine)" \
     "group=$(stat -c %G $GPUPOOL_PROJECT_DIR/ours)"
echo "gpus=$GPUPOOL_GPU_INDICES"
"""


def _remove_os_names(user_prefix: str, group_prefix: str) -> None:
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(user_prefix):
            subprocess.run(["userdel", entry.pw_name], check=False, capture_output=True)
    for group in grp.getgrall():
        if group.gr_name.startswith(group_prefix):
            subprocess.run(["groupdel", group.gr_name], check=False, capture_output=True)


@pytest.fixture
def multi_user_server() -> Iterator[TestServer]:
    """A root server in multi-user mode on a home every OS user can traverse (pytest's tmp is 0700)."""
    tag = uuid.uuid4().hex[:6]
    user_prefix, group_prefix = f"t{tag}u-", f"t{tag}g-"
    base = Path(tempfile.mkdtemp(prefix="gpupool-isolation-", dir="/tmp"))
    base.chmod(0o711)
    home = base / "home"
    server = start_server(server_settings(home, f"sqlite:///{home / 'gpupool.db'}", multi_user=True,
                                          os_user_prefix=user_prefix, os_group_prefix=group_prefix,
                                          gpus="2xA100-80GB", stop_grace_s=0.5))
    try:
        yield server
    finally:
        admin = server.client()
        for workload in admin.list_workloads(status=["pending", "scheduled", "starting", "running"]).items:
            admin.cancel(workload.id)
        server.stop()
        _remove_os_names(user_prefix, group_prefix)
        shutil.rmtree(base, ignore_errors=True)


def _run(client: Client, command: str, project: str) -> tuple[str, list[str]]:
    workload = client.submit({"kind": "job", "project": project, "command": command,
                              "resources": {"cpu": 0.1, "memory": "64MiB", "gpu": 1}}).workload
    done = client.wait(workload.id, timeout_s=60)
    return done.status, list(client.logs(workload.id))


def test_a_members_job_runs_as_its_os_user_and_reads_nothing_of_the_server_or_of_others(
        multi_user_server: TestServer) -> None:
    server = multi_user_server
    settings = server.settings
    admin = server.client()
    for project in ("alpha", "beta"):
        admin.create_project(project)
    alice = server.client(admin.create_user("alice", project="alpha", role="member").token)
    bob = server.client(admin.create_user("bob", project="beta", role="member").token)

    status, lines = _run(bob, "echo bob-secret > $GPUPOOL_USER_DIR/secret; echo bob-secret > "
                              "$GPUPOOL_PROJECT_DIR/secret; echo the log of bob", "beta")
    assert status == "succeeded", lines
    bobs_workload = bob.list_workloads(status=[]).items[0].id
    (settings.storage_dir / "shared" / "readme").write_text("for everyone\n")
    status, admin_lines = _run(admin, "echo x > $GPUPOOL_SHARED_DIR/from-admin && echo wrote-shared", "default")
    assert (status, admin_lines) == ("succeeded", ["wrote-shared"])  # admins write the shared directory

    status, lines = _run(alice, PROBE.format(other=bobs_workload), "alpha")
    assert status == "succeeded", lines
    found = dict(line.split("=", 1) for line in lines if line.count("=") == 1)
    assert {k: found.get(k) for k in ("token", "database", "list_home", "executor", "other_logs", "other_user",
                                      "other_project", "write_shared")} == dict.fromkeys(
        ("token", "database", "list_home", "executor", "other_logs", "other_user", "other_project",
         "write_shared"), "no")
    assert (found["write_user"], found["write_project"], found["read_shared"]) == ("yes", "yes", "yes")
    alice_os = pwd.getpwnam(f"{settings.os_user_prefix}alice")
    alpha_group = grp.getgrnam(f"{settings.os_group_prefix}alpha")
    identity = next(line for line in lines if line.startswith("uid="))
    assert identity == (f"uid={alice_os.pw_uid} gid={alpha_group.gr_gid} owner={alice_os.pw_name} "
                        f"group={alpha_group.gr_name}")
    assert any(line in ("gpus=0", "gpus=1") for line in lines), lines  # the GPU environment is there

    mine = settings.storage_dir / "users" / "alice" / "mine"
    assert (mine.stat().st_uid, oct(mine.parent.stat().st_mode & 0o7777)) == (alice_os.pw_uid, "0o700")
    project_dir = settings.storage_dir / "projects" / "alpha"
    assert (project_dir.stat().st_gid, oct(project_dir.stat().st_mode & 0o7777)) == (alpha_group.gr_gid, "0o2770")
    for private in (settings.token_file, Path(settings.resolved_database_url.removeprefix("sqlite:///"))):
        assert (private.stat().st_uid, oct(private.stat().st_mode & 0o777)) == (0, "0o600"), private
    assert oct(settings.home.stat().st_mode & 0o777) == "0o711"
    assert oct(settings.logs_dir.stat().st_mode & 0o777) == "0o700"


def test_a_working_directory_the_user_cannot_reach_is_refused(multi_user_server: TestServer) -> None:
    admin = multi_user_server.client()
    admin.create_project("alpha")
    alice = multi_user_server.client(admin.create_user("alice", project="alpha", role="member").token)
    private = multi_user_server.settings.executor_dir  # root's, 0700: the server chdirs there, alice may not
    workload = alice.submit({"kind": "job", "project": "alpha", "command": "ls", "workdir": str(private),
                             "resources": {"cpu": 0.1, "memory": "64MiB"}}).workload
    done = alice.wait(workload.id, timeout_s=60)
    assert done.status == "failed" and done.replica_list[0].exit_code == 127
    assert any("Permission denied" in line for line in alice.logs(workload.id))


def test_a_gpupool_user_named_after_a_system_account_never_runs_as_it(multi_user_server: TestServer) -> None:
    admin = multi_user_server.client()
    root = multi_user_server.client(admin.create_user("root", project="default", role="member").token)
    status, lines = _run(root, "id -u; id -un", "default")
    assert status == "succeeded", lines
    assert lines == [str(pwd.getpwnam(f"{multi_user_server.settings.os_user_prefix}root").pw_uid),
                     f"{multi_user_server.settings.os_user_prefix}root"]


def test_a_multi_user_home_that_replicas_cannot_reach_is_refused(tmp_path: Path) -> None:
    closed = tmp_path / "closed"
    closed.mkdir(mode=0o700)
    settings = server_settings(closed / "home", f"sqlite:///{closed / 'home' / 'gpupool.db'}", multi_user=True)
    with pytest.raises(ConflictError, match=f"{closed} is closed to other users; choose a home such as"):
        secure_home(settings)
