"""Storage scopes: strict names, the directory layout, and refusal of directories that escape the root."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.executors.storage import StorageLayout, validate_scope_name


@pytest.mark.parametrize("name", ["alice", "team-vision", "a.b_c-d", "A1", "x" * 64, "0day"])
def test_good_names_pass(name: str) -> None:
    assert validate_scope_name(name, "user") == name


@pytest.mark.parametrize(("name", "message"), [
    ("", "a user is required"),
    (None, "a user is required"),
    ("..", "must not contain"),
    (".", "must start with a letter or digit"),
    ("../etc", "must not contain"),
    ("a/b", "must not contain"),
    ("/abs", "must not contain"),
    ("a..b", "must not contain"),
    ("a\\b", "must not contain"),
    (".hidden", "must start with a letter or digit"),
    ("-rf", "must start with a letter or digit"),
    ("has space", "may hold only"),
    ("nul\0byte", "may hold only"),
    ("émile", "may hold only"),
    ("x" * 65, "longer than 64"),
])
def test_bad_names_are_refused(name: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message) as raised:
        validate_scope_name(name, "user")
    assert raised.value.field == "user"


def test_prepare_creates_the_three_scopes_with_their_modes(tmp_path: Path) -> None:
    scopes = StorageLayout(tmp_path).prepare("alice", "vision")
    root = (tmp_path / "storage").resolve()
    assert (scopes.user_dir, scopes.project_dir, scopes.shared_dir) == (
        root / "users" / "alice", root / "projects" / "vision", root / "shared")
    assert stat.S_IMODE(scopes.user_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(scopes.project_dir.stat().st_mode) == 0o770
    assert stat.S_IMODE(scopes.shared_dir.stat().st_mode) == 0o755
    assert scopes.env() == {"GPUPOOL_USER_DIR": str(root / "users" / "alice"),
                            "GPUPOOL_PROJECT_DIR": str(root / "projects" / "vision"),
                            "GPUPOOL_SHARED_DIR": str(root / "shared")}


def test_shared_is_read_only_unless_admin(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    member = layout.prepare("bob", "vision")
    admin = layout.prepare("root", "vision", admin=True)
    assert member.read_only_paths() == (member.shared_dir,)
    assert admin.read_only_paths() == ()


def test_prepare_is_repeatable_and_keeps_content(tmp_path: Path) -> None:
    layout = StorageLayout(tmp_path)
    first = layout.prepare("alice", "vision")
    (first.user_dir / "model.pt").write_text("weights")
    assert layout.prepare("alice", "vision") == first
    assert (first.user_dir / "model.pt").read_text() == "weights"


def test_names_are_validated_before_anything_is_created(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="project"):
        StorageLayout(tmp_path).prepare("alice", "../../etc")
    assert not (tmp_path / "storage").exists()


def test_a_symlink_out_of_the_storage_root_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (tmp_path / "storage" / "users").mkdir(parents=True)
    (tmp_path / "storage" / "users" / "mallory").symlink_to(outside)
    with pytest.raises(ValidationError, match="resolves outside"):
        StorageLayout(tmp_path).prepare("mallory", "vision")
