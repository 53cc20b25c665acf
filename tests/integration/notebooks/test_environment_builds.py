"""Python environments built by real uv from a real package index: cached by spec hash, built once under
concurrent requests, a failed build is an error with its log and leaves nothing usable, a job runs in one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.support.package_index import index_settings
from tests.support.servers import TestServer, server_settings, start_server

from gpupool.domain.errors import NotFoundError, PermissionDeniedError, ValidationError
from gpupool.executors.local import LocalExecutor

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp("envs")
    home = tmp / "replica-home"
    home.mkdir()
    executor = LocalExecutor(tmp / "executor", base_env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                                                         "HOME": str(home), "LANG": "C.UTF-8"})
    running = start_server(server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", **index_settings()),
                           executor)
    yield running
    running.stop()


def test_built_once_cached_by_hash_and_used_by_a_job(server: TestServer) -> None:
    with server.client() as admin:
        first = admin.create_environment("small", packages="six")
        assert (first.cached, first.requirements) == (False, ["six"])
        again = admin.create_environment("small", packages="six")
        other_name = admin.create_environment("also-small", packages="six  six")
        assert again.cached and other_name.cached and other_name.hash == first.hash
        assert "six" in admin.environment("small").log and [e.name for e in admin.environments()] == [
            "also-small", "small"]
        job = admin.submit({"name": "in-env", "environment": "small", "resources": {"cpu": 0.5},
                            "command": "python -c 'import six, sys; print(sys.prefix)'"}).workload.id
        done = admin.wait(job, timeout_s=60)
        assert done.status == "succeeded", done.message
        assert list(admin.logs(job)) == [first.path]


def test_concurrent_requests_for_one_spec_build_once(server: TestServer) -> None:
    results = []

    def create(name: str) -> None:
        with server.client() as admin:
            results.append(admin.create_environment(name, packages="packaging six"))

    threads = [threading.Thread(target=create, args=(f"twin-{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(r.cached for r in results) == [False, True]  # one built, the other waited and found it
    assert len({r.path for r in results}) == 1


def test_a_failed_build_is_an_error_with_its_log_and_leaves_nothing(server: TestServer) -> None:
    with server.client() as admin, pytest.raises(ValidationError) as error:
        admin.create_environment("broken", packages="gpupool-no-such-package-anywhere==9.9")
    assert "build log" in str(error.value) and "gpupool-no-such-package-anywhere" in str(error.value)
    cache = server.settings.home / "environments" / "cache"
    assert [p.name for p in cache.iterdir() if p.is_dir() and not (p / ".gpupool-complete").exists()] == []
    with server.client() as admin:
        with pytest.raises(NotFoundError):
            admin.environment("broken")
        with pytest.raises(ValidationError, match="not a requirement"):
            admin.create_environment("bad", packages="https://example.com/x.whl")


def test_only_its_owner_or_an_admin_removes_it_and_the_build_goes_with_its_last_name(server: TestServer) -> None:
    with server.client() as admin:
        env = admin.create_environment("mine", packages="packaging")
        admin.create_environment("mine-too", packages="packaging")
        token = admin.create_user("una", project="default", role="member").token
    with server.client(token) as una:
        assert "mine" in [e.name for e in una.environments()]
        with pytest.raises(PermissionDeniedError):
            una.remove_environment("mine")
    with server.client() as admin:
        admin.remove_environment("mine")
        assert Path(env.path).exists()  # "mine-too" still uses the same build
        admin.remove_environment("mine-too")
        assert not Path(env.path).exists()


def test_a_spec_naming_a_missing_or_unbuilt_environment_is_refused_at_submit(server: TestServer) -> None:
    with server.client() as admin:
        before = len(admin.list_workloads().items)
        for spec in ({"name": "job", "environment": "nowhere", "command": "true", "resources": {"cpu": 0.5}},
                     {"kind": "notebook", "name": "nb", "environment": "nowhere", "resources": {"cpu": 0.5}}):
            with pytest.raises(ValidationError) as missing:
                admin.submit(spec)
            assert "environment: no environment 'nowhere'" in str(missing.value)
            assert "gpupool envs create" in str(missing.value)
            with pytest.raises(ValidationError, match="no environment 'nowhere'"):
                admin.dry_run(spec)  # a dry run says the same
        built = admin.create_environment("soon-broken", packages="six")
        (Path(built.path) / ".gpupool-complete").unlink()  # a build that is no longer usable
        with pytest.raises(ValidationError, match="environment 'soon-broken' is not built"):
            admin.submit({"name": "job", "environment": "soon-broken", "command": "true", "resources": {"cpu": 0.5}})
        assert len(admin.list_workloads().items) == before  # nothing was stored


def test_the_cli_builds_lists_shows_and_removes_one_with_a_build_longer_than_its_request_timeout(
        server: TestServer, tmp_path: Path) -> None:
    """`gpupool envs` over the light client; `envs create` waits for a build longer than GPUPOOL_TIMEOUT_S (a
    build of `six` takes about a second here, when this test runs first in the module and it is not cached)."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), "GPUPOOL_HOME": str(tmp_path),
           "GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": server.admin_token}

    def cli(*args: str, timeout_s: str = "30") -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gpupool", "envs", *args],
                              env={**env, "GPUPOOL_TIMEOUT_S": timeout_s}, capture_output=True, text=True,
                              timeout=600, check=False)

    started = time.monotonic()
    created = cli("create", "via-cli", "--packages", "six", "--json", timeout_s="0.2")
    assert created.returncode == 0, created.stdout
    assert time.monotonic() - started > 0.2 or json.loads(created.stdout)["cached"]
    info = json.loads(created.stdout)
    assert (info["name"], info["requirements"]) == ("via-cli", ["six"])
    listed = cli("ls", "--json")
    assert listed.returncode == 0, listed.stdout
    assert "via-cli" in [e["name"] for e in json.loads(listed.stdout)]
    shown = cli("show", "via-cli")
    assert shown.returncode == 0 and "via-cli: python 3.11; six" in shown.stdout and "six" in shown.stdout.split(
        "\n", 2)[2]
    assert cli("rm", "via-cli").stdout == "environment via-cli removed\n"
    missing = cli("show", "via-cli")
    assert (missing.returncode, missing.stderr.startswith("error: no environment 'via-cli'")) == (3, True)
