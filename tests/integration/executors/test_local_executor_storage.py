"""Storage scopes seen from a real replica: its directories in the environment, the shared one read-only
for non-admins where the executor can enforce it (root: a read-only bind mount in a mount namespace)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from gpupool.executors.base import Capability, ReplicaState
from gpupool.executors.local import can_enforce_read_only
from gpupool.executors.storage import StorageLayout

if TYPE_CHECKING:
    from conftest import LocalHarness

WRITE_EVERYWHERE = (
    'echo mine > "$GPUPOOL_USER_DIR/a" && echo ours > "$GPUPOOL_PROJECT_DIR/b" && '
    'cat "$GPUPOOL_SHARED_DIR/dataset.txt" && echo try > "$GPUPOOL_SHARED_DIR/c"'
)


def _launch_with_scopes(local: LocalHarness, user: str, admin: bool, workload_id: str) -> dict[str, object]:
    scopes = StorageLayout(local.tmp / "home").prepare(user, "vision", admin=admin)
    (scopes.shared_dir / "dataset.txt").write_text("shared data\n")
    return local.start(WRITE_EVERYWHERE, workload_id=workload_id, env=scopes.env(),
                       cwd=scopes.project_dir, read_only_paths=scopes.read_only_paths())


def test_replica_gets_its_own_scopes_in_its_environment(local: LocalHarness) -> None:
    scopes = StorageLayout(local.tmp / "home").prepare("alice", "vision")
    handle = local.start('echo "$GPUPOOL_USER_DIR|$GPUPOOL_PROJECT_DIR|$GPUPOOL_SHARED_DIR|$(pwd)"',
                         env=scopes.env(), cwd=scopes.project_dir)
    assert local.wait(handle).state == ReplicaState.SUCCEEDED
    storage = (local.tmp / "home" / "storage").resolve()
    assert list(local.executor.logs(handle)) == [
        f"{storage}/users/alice|{storage}/projects/vision|{storage}/shared|{storage}/projects/vision",
    ]


@pytest.mark.skipif(not can_enforce_read_only(), reason="read-only bind mounts need root, unshare and mount")
def test_shared_directory_is_read_only_for_a_non_admin_replica(local: LocalHarness) -> None:
    assert Capability.READ_ONLY_PATHS in local.executor.capabilities
    handle = _launch_with_scopes(local, "bob", admin=False, workload_id="w-member")
    status = local.wait(handle)
    assert (status.state, status.exit_code) == (ReplicaState.FAILED, 1)
    log = list(local.executor.logs(handle))
    assert log[0] == "shared data"  # reading works
    assert "Read-only file system" in log[1]  # writing does not
    storage = local.tmp / "home" / "storage"
    assert (storage / "users" / "bob" / "a").read_text() == "mine\n"
    assert (storage / "projects" / "vision" / "b").read_text() == "ours\n"
    assert not (storage / "shared" / "c").exists()
    (storage / "shared" / "outside").write_text("the server's own view stays writable\n")


@pytest.mark.skipif(not can_enforce_read_only(), reason="read-only bind mounts need root, unshare and mount")
def test_shared_directory_is_writable_for_an_admin_replica(local: LocalHarness) -> None:
    handle = _launch_with_scopes(local, "root-admin", admin=True, workload_id="w-admin")
    status = local.wait(handle)
    assert (status.state, status.exit_code) == (ReplicaState.SUCCEEDED, 0)
    assert (local.tmp / "home" / "storage" / "shared" / "c").read_text() == "try\n"


def test_without_enforcement_read_only_paths_are_passed_on_and_not_declared(local: LocalHarness) -> None:
    local.executor = local.new_executor(read_only=False)  # what a server without root gets
    assert Capability.READ_ONLY_PATHS not in local.executor.capabilities
    handle = _launch_with_scopes(local, "bob", admin=False, workload_id="w-member")
    assert local.wait(handle).state == ReplicaState.SUCCEEDED
