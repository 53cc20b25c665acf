"""Who sees and uses which Python environment, and the disk quota of a member's own ones, on SQLite and
PostgreSQL, with real uv builds from the local package index and a real server and executor.

An administrator's environments are shared: everyone sees and uses them. A member's own are theirs: other
members neither see nor use them (their name is taken). A member's own environments hold at most the quota;
a build over it is refused naming usage and quota, and leaves no build behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.databases import fresh_database
from tests.support.package_index import index_settings
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.domain.environments import parse_environment
from gpupool.domain.errors import ConflictError, NotFoundError, ValidationError
from gpupool.executors.local import LocalExecutor

pytestmark = pytest.mark.slow

# A seeded venv with one small package measures about 10 MiB here (pip is most of it): 16 MiB holds one such
# environment of a member's and not two.
QUOTA_GIB = 16 / 1024


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp(f"env-owners-{request.param}")
    home = tmp / "replica-home"
    home.mkdir()
    executor = LocalExecutor(tmp / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                         "HOME": str(home), "LANG": "C.UTF-8"})

    with fresh_database(request.param, tmp) as url:
        running = start_server(server_settings(tmp / "home", url, environments_user_quota_gib=QUOTA_GIB,
                                               **index_settings()), executor)
        yield running
        running.stop()


@pytest.fixture(scope="module")
def tokens(server: TestServer) -> dict[str, str]:
    with server.client() as admin:
        return {name: admin.create_user(name, project="default", role="member").token for name in ("una", "bob")}


def test_an_admins_environment_is_shared_and_a_members_is_theirs(server: TestServer, tokens: dict[str, str]) -> None:
    with server.client() as admin:
        team = admin.create_environment("team", packages="six")
        assert (team.owner, team.shared) == ("admin", True) and team.size_bytes > 2**20
    with server.client(tokens["una"]) as una:
        own = una.create_environment("una-env", packages="packaging")
        assert (own.owner, own.shared) == ("una", False) and own.size_bytes > 2**20
        assert [(e.name, e.shared) for e in una.environments()] == [("team", True), ("una-env", False)]
        job = una.submit({"name": "in-own", "environment": "una-env", "resources": {"cpu": 0.5},
                          "command": "python -c 'import packaging, sys; print(sys.prefix)'"}).workload.id
        done = una.wait(job, timeout_s=120)
        assert done.status == "succeeded", done.message
        assert list(una.logs(job)) == [own.path]
    with server.client(tokens["bob"]) as bob:
        assert [e.name for e in bob.environments()] == ["team"]
        with pytest.raises(NotFoundError) as hidden:
            bob.environment("una-env")
        assert "environments: team " in str(hidden.value)  # the names bob sees, not una's
        with pytest.raises(NotFoundError):
            bob.remove_environment("una-env")
        with pytest.raises(ConflictError, match="taken by another user's environment"):
            bob.create_environment("una-env", packages="packaging")
        with pytest.raises(ValidationError, match="environment: no environment 'una-env'; environments: team "):
            bob.submit({"name": "not-his", "environment": "una-env", "command": "true", "resources": {"cpu": 0.5}})
        shared = bob.submit({"name": "in-team", "environment": "team", "resources": {"cpu": 0.5},
                             "command": "python -c 'import six'"}).workload.id
        assert bob.wait(shared, timeout_s=120).status == "succeeded"
    with server.client() as admin:
        assert {"team", "una-env"} <= {e.name for e in admin.environments()}
        assert admin.environment("una-env").owner == "una"


def test_a_members_own_environments_stay_within_the_quota(server: TestServer, tokens: dict[str, str]) -> None:
    cache = server.settings.home / "environments" / "cache"
    with server.client(tokens["una"]) as una:
        for mine in una.environments():  # start empty (una-env of the test before)
            if mine.owner == "una":
                una.remove_environment(mine.name)
        held = una.create_environment("una-held", packages="attrs")
        over = parse_environment("una-over", "3.11", ["idna"])
        with pytest.raises(ValidationError) as refused:
            una.create_environment("una-over", packages="idna")
        assert "quota: your environments use" in str(refused.value) and "of your 16.0 MiB quota; this one needs" \
            in str(refused.value)
        assert not (cache / over.hash).exists() and list(cache.glob(f"{over.hash}.partial-*")) == []
        with pytest.raises(NotFoundError):
            una.environment("una-over")
        again = una.create_environment("una-held-too", packages="attrs")  # the same build: counted once
        assert again.hash == held.hash and again.cached
        with pytest.raises(ValidationError, match="quota"):  # full already: refused before any build
            una.create_environment("una-over", packages="idna")
        for name in ("una-held", "una-held-too"):
            una.remove_environment(name)
        assert una.create_environment("una-over", packages="idna").size_bytes > 2**20  # room again
        una.remove_environment("una-over")
    with server.client() as admin:  # an administrator's environments count against no quota
        for name, package in (("wide-1", "idna"), ("wide-2", "attrs"), ("wide-3", "packaging")):
            assert admin.create_environment(name, packages=package).shared


def test_envs_ls_shows_owner_and_size(server: TestServer, tokens: dict[str, str], tmp_path: Path) -> None:
    with server.client(tokens["bob"]) as bob:
        bob.create_environment("bob-env", packages="six")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "GPUPOOL_HOME": str(tmp_path),
           "GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": tokens["bob"], "COLUMNS": "250"}
    listed = subprocess.run([sys.executable, "-m", "gpupool", "envs", "ls"], env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "OWNER" in listed.stdout and "SIZE" in listed.stdout
    assert "bob " in rows["bob-env"] and "(shared)" not in rows["bob-env"] and " MiB" in rows["bob-env"]
    assert "admin (shared)" in rows["team"] and "una-env" not in rows
    as_json = subprocess.run([sys.executable, "-m", "gpupool", "envs", "ls", "--json"], env=env,
                             capture_output=True, text=True, timeout=120, check=False)
    mine = next(e for e in json.loads(as_json.stdout) if e["name"] == "bob-env")
    assert (mine["owner"], mine["shared"]) == ("bob", False) and mine["size_bytes"] > 2**20
