"""A service in a named Python environment, end to end: a real server builds the environment with real uv,
the local executor runs the replica (a tiny HTTP server written here) with the environment's bin first on
PATH, and the gateway carries what the replica reports: VIRTUAL_ENV, its interpreter and where `six` comes
from. An update without the environment is a new revision whose replica runs outside it. A missing or
unbuilt environment is refused at submit and at update, with the message jobs get."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from tests.support.package_index import index_settings
from tests.support.servers import TestServer, server_settings, start_server, wait_until

from gpupool.client.services import update_service
from gpupool.domain.errors import ValidationError
from gpupool.executors.local import LocalExecutor

pytestmark = pytest.mark.slow
# Starting a replica is one Python process with the standard library; a minute allows for a loaded machine.
START_S = 120
# The replica: answers every GET with what it runs in. `six` is in the environment, not on the system Python.
REPLICA = """
import http.server, json, os, sys
try:
    import six
    six_from = six.__file__
except ImportError:
    six_from = None

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"virtual_env": os.environ.get("VIRTUAL_ENV"), "prefix": sys.prefix,
                           "six": six_from}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp("service-env")
    (tmp / "replica-home").mkdir()
    executor = LocalExecutor(
        tmp / "executor",
        base_env={
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(tmp / "replica-home"),
            "LANG": "C.UTF-8",
        },
    )
    running = start_server(
        server_settings(tmp / "home", f"sqlite:///{tmp / 'gpupool.db'}", **index_settings()), executor
    )
    yield running
    with running.client() as admin:
        for w in admin.list_workloads(limit=1000).items:
            if w.status in ("pending", "scheduled", "starting", "running"):
                admin.cancel(w.id)
    running.stop()


@pytest.fixture(scope="module")
def replica_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replica") / "replica.py"
    path.write_text(REPLICA)
    return path


def service(script: Path, **fields: Any) -> dict[str, Any]:
    return {
        "kind": "service",
        "name": "envsvc",
        "command": f"python3 {script}",
        "models": ["env-model"],
        "readiness": {"path": "/"},
        "replicas": {"min": 1, "max": 1},
        "scaling": {"cold_start_timeout": START_S},
        "resources": {"cpu": 0.2, "memory": "256MiB"},
    } | fields


def what_replica_reports(server: TestServer) -> dict[str, Any]:
    """GET through the gateway (held until a replica is ready)."""
    response = httpx.get(
        f"{server.url}/services/envsvc/",
        timeout=START_S + 30,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert response.status_code == 200, response.text
    reported: dict[str, Any] = response.json()
    return reported


def test_replicas_run_in_the_environment_and_an_update_changes_it(server: TestServer, replica_script: Path) -> None:
    with server.client() as admin:
        env = admin.create_environment("svc-six", packages="six")
        sid = admin.submit(service(replica_script, environment="svc-six")).workload.id
        assert admin.get_workload(sid).spec["environment"] == "svc-six"
        reported = what_replica_reports(server)
        assert reported["virtual_env"] == env.path and Path(reported["prefix"]) == Path(env.path)
        assert reported["six"] is not None and reported["six"].startswith(env.path)
        (first,) = [w for w in admin.list_workloads(limit=1000).items if w.parent_id == sid]
        assert admin.get_workload(first.id).spec["environment"] == "svc-six"

        with pytest.raises(ValidationError, match="no environment 'nowhere'"):  # as at submit; no revision
            update_service(admin, "envsvc", yaml.safe_dump(service(replica_script, environment="nowhere")))
        assert admin.get_workload(sid).spec["environment"] == "svc-six"
        without = service(replica_script)
        update_service(admin, "envsvc", yaml.safe_dump(without))  # revision 2: no environment
        moved = wait_until(
            lambda: (r := what_replica_reports(server))["virtual_env"] is None and r,
            START_S,
            0.5,
            "the revision without the environment serving",
        )
        assert not moved["prefix"].startswith(env.path)
        assert moved["six"] is None or not moved["six"].startswith(env.path)
        children = {w.name: w for w in admin.list_workloads(limit=1000).items if w.parent_id == sid}
        assert "environment" not in admin.get_workload(children["envsvc-r2"].id).spec
        assert "revision 2: updated by" in " ".join(e.reason for e in admin.get_workload(sid).events)


def test_a_missing_or_unbuilt_environment_is_refused_at_submit(server: TestServer, replica_script: Path) -> None:
    with server.client() as admin:
        before = len(admin.list_workloads(limit=1000).items)
        with pytest.raises(ValidationError) as missing:
            admin.submit(service(replica_script, name="nowhere-svc", environment="nowhere"))
        assert "environment: no environment 'nowhere'" in str(missing.value)
        assert "gpupool envs create" in str(missing.value)
        built = admin.create_environment("svc-broken", packages="six")
        (Path(built.path) / ".gpupool-complete").unlink()  # a build that is no longer usable
        with pytest.raises(ValidationError, match="environment 'svc-broken' is not built"):
            admin.submit(service(replica_script, name="broken-svc", environment="svc-broken"))
        assert len(admin.list_workloads(limit=1000).items) == before  # nothing was stored
