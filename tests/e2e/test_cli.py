"""The command line against a real server: every command, --json, help texts, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.conftest import StartServer
from tests.support.processes import REPO, cli_env, run_cli, run_json
from tests.support.servers import free_port
from typer.testing import CliRunner

from gpupool.cli.main import app

COMMANDS = [["up"], ["submit"], ["ls"], ["show"], ["logs"], ["cancel"], ["wait"], ["resubmit"], ["whoami"],
            ["nodes"], ["queues"], ["queues", "set"],
            ["projects"], ["projects", "create"], ["projects", "add-member"], ["projects", "remove-member"],
            ["projects", "set-idle-cap"],
            ["users"], ["users", "create"], ["tokens"], ["tokens", "create"], ["tokens", "revoke"], ["nodes", "show"],
            ["nodes", "set-sharing"], ["nodes", "set-mig"], ["nodes", "clear-unhealthy"], ["top"], ["report"],
            ["report", "idle"]]


def test_every_command_has_help() -> None:
    runner = CliRunner()
    for command in COMMANDS:
        result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0 and "Usage: " in result.output and len(result.output.split("\n")) > 5, command


def test_a_helpful_message_when_the_server_is_not_running(tmp_path: Path) -> None:
    env = cli_env(tmp_path, free_port())
    for command in (["ls"], ["nodes"], ["show", "1"], ["submit", "examples/hello.yaml"], ["queues"]):
        result = run_cli(command, env, check=False)
        assert result.returncode == 5, command  # 5: the server cannot be reached
        assert "cannot reach the gpupool server" in result.stderr and "gpupool up" in result.stderr
        assert "Traceback" not in result.stderr


def test_workload_commands(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    env = server.env
    spec = "name: counter\ncommand: for i in 1 2 3; do echo line $i; sleep 0.2; done\n"
    submitted: Any = json_of(subprocess.run([sys.executable, "-m", "gpupool", "submit", "-", "--json"], input=spec,
                                            env=env, cwd=REPO, capture_output=True, text=True, check=True))
    wid = submitted["workload"]["id"]
    followed = run_cli(["logs", "-f", str(wid)], env).stdout
    assert followed.splitlines() == ["line 1", "line 2", "line 3"]
    listed: Any = run_json(["ls", "--all"], env)
    assert [w["id"] for w in listed["items"]] == [wid]
    assert "counter" in run_cli(["ls", "--all"], env).stdout
    shown = run_cli(["show", str(wid)], env).stdout
    assert "succeeded" in shown and "history" in shown
    bad = subprocess.run(
        [sys.executable, "-m", "gpupool", "submit", "-"], input="comand: x\n", env=env, cwd=REPO,
        capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and 'did you mean "command"' in bad.stderr and "Traceback" not in bad.stderr
    sleeper: Any = json_of(subprocess.run([sys.executable, "-m", "gpupool", "submit", "-", "--json"],
                                          input="command: sleep 60\n", env=env, cwd=REPO, capture_output=True,
                                          text=True, check=True))
    cancelled: Any = run_json(["cancel", str(sleeper["workload"]["id"])], env)
    assert cancelled["status"] == "cancelled"
    again = run_cli(["cancel", str(sleeper["workload"]["id"])], env, check=False)
    assert again.returncode == 4 and "already ended" in again.stderr  # 4: refused


def test_logs_follow_waits_for_a_workload_that_has_not_started(start_server: StartServer) -> None:
    server = start_server("--gpus", "1xA100-80GB")
    env = server.env
    blocker = "name: blocker\ncommand: sleep 600\nresources: {gpu: 1}\n"
    waiting = "name: waiting\ncommand: echo started; echo done\nresources: {gpu: 1}\n"
    first, second = (json_of(subprocess.run([sys.executable, "-m", "gpupool", "submit", "-", "--json"], input=spec,
                                            env=env, cwd=REPO, capture_output=True, text=True, check=True))
                     ["workload"]["id"] for spec in (blocker, waiting))
    follower = subprocess.Popen([sys.executable, "-m", "gpupool", "logs", "-f", str(second)],
                                env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while run_json(["show", str(second)], env)["status"] != "pending":  # type: ignore[index]
            assert time.monotonic() < deadline, "the second job never waited"
            time.sleep(0.2)
        time.sleep(1.5)  # a few of the follower's polls while it waits
        assert follower.poll() is None, follower.communicate()  # still waiting, not failed
        run_cli(["cancel", str(first)], env)
        out, err = follower.communicate(timeout=120)
    finally:
        follower.kill()
    assert follower.returncode == 0, err
    assert out.splitlines() == ["started", "done"]
    assert "waiting for it to start" in err and "Traceback" not in err


def test_pool_and_account_commands(start_server: StartServer) -> None:
    server = start_server("--gpus", "2xA100-80GB")
    env = server.env
    nodes: Any = run_json(["nodes"], env)
    assert nodes[0]["simulated_gpus"] and len(nodes[0]["gpus"]) == 2
    assert "(simulated)" in run_cli(["nodes"], env, cwd=REPO).stdout
    run_cli(["projects", "create", "vision"], env)
    queue: Any = run_json(["queues", "set", "vision", "--guaranteed", "gpu=1,memory=4GiB", "--limit", "gpu=2",
                           "--weight", "2", "--no-lend"], env)
    assert (queue["guaranteed"]["gpu_milli"], queue["limit"]["gpu_milli"], queue["lend"]) == (1000, 2000, False)
    assert {q["name"] for q in run_json(["queues"], env)} == {"default", "vision"}  # type: ignore[union-attr]
    token = run_cli(["users", "create", "alice", "--project", "vision"], env).stdout.strip().splitlines()[-1]
    assert token.startswith("gpp_")
    alice_env = {**env, "GPUPOOL_TOKEN": token}
    me: Any = run_json(["users"], alice_env)
    assert [u["name"] for u in me] == ["alice"]
    denied = run_cli(["queues", "set", "vision", "--weight", "5"], alice_env, check=False)
    assert denied.returncode == 4 and "only administrators" in denied.stderr
    run_cli(["projects", "add-member", "vision", "admin", "--role", "viewer"], env)
    projects: Any = run_json(["projects"], alice_env)
    assert {m["user"] for m in projects[0]["members"]} == {"admin", "alice"}
    _idle_cap_commands(env, alice_env)
    created: Any = run_json(["tokens", "create", "ci"], alice_env)
    tokens: Any = run_json(["tokens"], alice_env)
    assert {t["name"] for t in tokens} == {"initial", "ci"}
    run_cli(["tokens", "revoke", str(created["info"]["id"])], alice_env)
    revoked = run_cli(["ls"], {**env, "GPUPOOL_TOKEN": created["token"]}, check=False)
    assert revoked.returncode == 4 and "not valid" in revoked.stderr
    _gpu_admin_commands(env, alice_env)


def _idle_cap_commands(env: dict[str, str], member_env: dict[str, str]) -> None:
    assert "culled after at most 4h idle" in run_cli(["projects", "set-idle-cap", "vision", "4h"], env).stdout
    assert "4h" in run_cli(["projects"], env, cwd=REPO).stdout.split("vision", 1)[1].splitlines()[0]
    denied = run_cli(["projects", "set-idle-cap", "vision", "8h"], member_env, check=False)
    assert denied.returncode == 4 and "may cap" in denied.stderr and "Traceback" not in denied.stderr
    bad = run_cli(["projects", "set-idle-cap", "vision", "soon"], env, check=False)
    assert bad.returncode != 0 and "max_idle_timeout" in bad.stderr and "Traceback" not in bad.stderr
    cleared: Any = run_json(["projects", "set-idle-cap", "vision", "none"], env)
    assert cleared["max_idle_timeout_s"] is None


def _gpu_admin_commands(env: dict[str, str], member_env: dict[str, str]) -> None:
    """The GPU commands on the simulated node of test_pool_and_account_commands (two A100-80GB)."""
    wide = {**env, "COLUMNS": "200"}
    assert "now holds 3g.40gb,3g.40gb" in run_cli(["nodes", "set-mig", "node", "1", "3g.40gb,3g.40gb"], wide).stdout
    shown = run_cli(["nodes", "show", "node"], wide).stdout
    assert "mig (2 instances)" in shown and "0:3g.40gb, 1:3g.40gb" in shown and "backend fake" in shown
    mps: Any = run_json(["nodes", "set-sharing", "node", "0", "mps"], env)
    assert mps["gpu"]["mode"] == "mps" and mps["mps"]["state"] == "simulated"  # no daemon for simulated cards
    assert "was not marked unhealthy" in run_cli(["nodes", "clear-unhealthy", "node", "0"], env).stdout
    bad = run_cli(["nodes", "set-mig", "node", "0", "4g.40gb,4g.40gb"], env, check=False)
    assert bad.returncode == 2 and "holds at most 1 x 4g.40gb" in bad.stderr and "Traceback" not in bad.stderr
    denied = run_cli(["nodes", "set-sharing", "node", "0", "shared"], member_env, check=False)
    assert denied.returncode == 4 and "only administrators" in denied.stderr
    listed = run_cli(["nodes"], wide).stdout
    assert "mps" in listed and "simulated" in listed
    top = run_cli(["top", "--once"], wide).stdout
    assert "A100-80GB (simulated)" in top and "0%" in top


def json_of(result: subprocess.CompletedProcess[str]) -> object:
    return json.loads(result.stdout)


@pytest.mark.parametrize("args", [["--port", "99999"], ["--gpus", "lots"], ["--database-url", "mysql://x/y"],
                                  ["--gpu-description", "/nonexistent/gpus.yaml"],
                                  ["--database-url", "postgresql://nobody:x@127.0.0.1:1/none"]])
def test_up_refuses_bad_options_clearly(tmp_path: Path, args: list[str]) -> None:
    args = args if "--port" in args else [*args, "--port", str(free_port())]
    result = run_cli(["up", "--home", str(tmp_path), *args], cli_env(tmp_path, free_port()), check=False,
                     timeout_s=60)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "error" in result.stderr.lower()
