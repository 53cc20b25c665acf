"""Usage accounting over HTTP and from the CLI: a real server with two simulated A100s at 70 % utilisation,
jobs of two projects holding GPUs; GPU-hours allocated (from the replicas' runs) and busy (from the sampler);
a member sees only their project; CSV; bad input named."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator

import pytest
from tests.support.databases import fresh_database
from tests.support.gpus import a100s, write_description
from tests.support.servers import TestServer, server_settings, start_server, wait_until
from typer.testing import CliRunner

from gpupool.cli.main import app
from gpupool.client.http import Client
from gpupool.domain.errors import AuthenticationError, ValidationError
from gpupool.executors.fake import RUN_FOREVER, FakeExecutor

JOB = "name: {name}\nproject: {project}\ncommand: sleep 600\nresources: {{cpu: 0.5, memory: 256MiB, gpu: 1}}\n"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    tmp = tmp_path_factory.mktemp("usage")
    description = write_description(tmp, {"node": "m", "gpus": [a100s(2, utilization=70)]})

    with fresh_database(request.param, tmp) as url:
        running = start_server(server_settings(tmp / "home", url, gpu_description=description,
                                               sample_interval_s=0.05), FakeExecutor(default=RUN_FOREVER))
        yield running
        running.stop()


@pytest.fixture(scope="module")
def member_token(server: TestServer) -> str:
    """bob, a member of project nlp only, whose job holds one GPU; the admin's job in default holds the other."""
    with server.client() as admin:
        admin.create_project("nlp")
        token = admin.create_user("bob", project="nlp").token
        ids = [admin.submit(JOB.format(name="train", project="default")).workload.id]
    with Client(server.url, token) as bob:
        ids.append(bob.submit(JOB.format(name="tune", project="nlp")).workload.id)
    with server.client() as admin:
        for wid in ids:
            wait_until(lambda w=wid: admin.get_workload(w).status == "running", 20, what=f"workload {wid} running")
        # enough samples that both runs have been observed for a while
        wait_until(lambda: all(line.observed_gpu_h * 3600 > 1.0 for line in admin.usage().lines)
                   and len(admin.usage().lines) == 2, 20, what="sampled usage")
    return token


def test_admin_sees_every_project_with_busy_hours_from_utilisation(server: TestServer, member_token: str) -> None:
    with server.client() as admin:
        report = admin.usage(by="project", since="1h")
    assert [line.group for line in report.lines] == ["default", "nlp"]
    for line in report.lines:
        assert line.workloads == 1 and line.period == "day"
        assert 0 < line.observed_gpu_h <= line.allocated_gpu_h + 1e-3
        # the cards run at 70 %, above the 5 % idle threshold: busy = 0.7 x observed, nothing idle
        assert line.busy_gpu_h == pytest.approx(0.7 * line.observed_gpu_h, rel=0.02, abs=2e-4)
        assert line.idle_gpu_h == 0
    assert report.total_allocated_gpu_h == pytest.approx(sum(line.allocated_gpu_h for line in report.lines),
                                                         abs=1e-3)


def test_a_member_sees_only_their_projects_and_users_group(server: TestServer, member_token: str) -> None:
    with Client(server.url, member_token) as bob:
        assert [line.group for line in bob.usage().lines] == ["nlp"]
        assert [line.group for line in bob.usage(by="user", period="month").lines] == ["bob"]
    with server.client() as admin:
        assert [line.group for line in admin.usage(by="user", period="week").lines] == ["admin", "bob"]


def test_csv_and_the_cli_report(server: TestServer, member_token: str) -> None:
    with server.client() as admin:
        rows = list(csv.DictReader(io.StringIO(admin.usage_csv(since="2h"))))
    assert [r["group"] for r in rows] == ["default", "nlp"] and float(rows[0]["allocated_gpu_h"]) > 0
    env = {"GPUPOOL_URL": server.url, "GPUPOOL_TOKEN": member_token}
    result = CliRunner().invoke(app, ["report", "usage", "--by", "project", "--since", "30d", "--csv"], env=env)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("period_start,period,group,allocated_gpu_h")
    assert [line.split(",")[2] for line in result.output.splitlines()[1:]] == ["nlp"]
    table = CliRunner().invoke(app, ["report", "usage", "--by", "user"], env=env)
    assert table.exit_code == 0 and "bob" in table.output and "GPU-h allocated" in table.output


def test_bad_input_is_named_and_anonymous_callers_refused(server: TestServer) -> None:
    with server.client() as admin:
        with pytest.raises(ValidationError, match="duration"):
            admin.usage(since="yesterday")
        with pytest.raises(ValidationError):
            admin.usage(by="queue")
    with Client(server.url, "gpp_not-a-token") as stranger, pytest.raises(AuthenticationError):
        stranger.usage()
