"""What a new user meets in their first hour, against a real `gpupool up`: everyday verbs, workloads by name,
JSON errors and exit codes, queue changes that merge and warn, and examples that work from anywhere."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartServer
from tests.support.processes import REPO, cli_env, run_cli, run_json
from tests.support.servers import free_port


def _submit(spec: str, env: dict[str, str], *args: str) -> Any:
    result = subprocess.run([sys.executable, "-m", "gpupool", "submit", "-", "--json", *args], input=spec, env=env,
                            cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def _error(args: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any]]:
    result = run_cli([*args, "--json"], env, check=False)
    assert "Traceback" not in result.stderr
    return result.returncode, json.loads(result.stdout)["error"]


def test_json_errors_have_a_kind_and_each_kind_its_exit_code(start_server: StartServer, tmp_path: Path) -> None:
    code, error = _error(["ls"], cli_env(tmp_path, free_port()))
    assert (code, error["kind"], error["exit_code"]) == (5, "server_unreachable", 5)
    assert "cannot reach the gpupool server" in error["message"]
    server = start_server()
    env = server.env
    code, error = _error(["show", "999"], env)
    assert (code, error["kind"], error["message"]) == (3, "not_found", "workload 999 not found")
    code, error = _error(["logs", "no-such-name"], env)
    assert (code, error["kind"]) == (3, "not_found") and "no workload named 'no-such-name'" in error["message"]
    code, error = _error(["ls", "--bogus"], env)
    assert (code, error["kind"]) == (2, "usage_error") and "--bogus" in error["message"]
    bad = subprocess.run([sys.executable, "-m", "gpupool", "submit", "-", "--json"], input="comand: x\n", env=env,
                         cwd=REPO, capture_output=True, text=True, check=False)
    error = json.loads(bad.stdout)["error"]
    assert (bad.returncode, error["kind"], error["field"]) == (2, "validation_error", "comand")
    ended = _submit("name: quick\ncommand: 'true'\n", env, "--wait")
    code, error = _error(["cancel", str(ended["id"])], env)
    assert (code, error["kind"]) == (4, "conflict") and "already ended" in error["message"]
    code, error = _error(["wait", str(_submit("command: sleep 30\n", env)["workload"]["id"]), "--timeout", "0.5"],
                         env)
    assert (code, error["kind"]) == (6, "timeout")


def test_everyday_verbs_and_workloads_by_name(start_server: StartServer) -> None:
    server = start_server()
    env = server.env
    me = run_cli(["whoami"], env).stdout
    assert me.startswith(f"admin (administrator) on {server.url}") and "default (admin)" in me
    assert run_json(["whoami"], env)["name"] == "admin"  # type: ignore[index]
    # a job that fails on its first run and succeeds on its retry: both runs' output stays readable
    flaky = ("name: flaky\nretries: 1\n"
             "command: echo run $GPUPOOL_ATTEMPT; test $GPUPOOL_ATTEMPT -ge 1\n")
    wid = _submit(flaky, env)["workload"]["id"]
    waited = run_cli(["wait", "flaky"], env)
    assert f"workload {wid} (flaky): succeeded" in waited.stdout
    assert run_cli(["logs", "flaky"], env).stdout.splitlines() == ["run 1"]
    assert run_cli(["logs", "flaky", "--attempt", "1"], env).stdout.splitlines() == ["run 0"]
    assert run_cli(["logs", str(wid), "--attempt", "2"], env).stdout.splitlines() == ["run 1"]
    beyond = run_cli(["logs", "flaky", "--attempt", "3"], env, check=False)
    assert beyond.returncode == 2 and f"workload {wid} has runs 1..2" in beyond.stderr
    # resubmit: same spec, new workload
    again: Any = run_json(["resubmit", "flaky"], env)
    assert again["workload"]["id"] != wid
    assert again["workload"]["spec"] == run_json(["show", str(wid)], env)["spec"]  # type: ignore[index]
    # wait exits 1 when the workload does not succeed; 5 runs of a failing job make a long history
    failing = _submit("name: doomed\nretries: 4\ncommand: exit 3\n", env)["workload"]["id"]
    result = run_cli(["wait", "doomed"], env, check=False)
    assert result.returncode == 1 and f"workload {failing} (doomed): failed" in result.stdout
    # show cuts the history to the last 15 events, and says how many it left out; --all shows them all
    events = run_json(["show", "doomed"], env)["events"]  # type: ignore[index]
    assert len(events) > 15
    wide = {**env, "COLUMNS": "200"}
    shown = run_cli(["show", "doomed"], wide).stdout
    assert f"{len(events) - 15} earlier event(s) not shown; `gpupool show {failing} --all` shows them" in shown
    assert "submitted by admin" not in shown
    every = run_cli(["show", "doomed", "--all"], wide).stdout
    assert "not shown" not in every and "submitted by admin" in every
    # cancel by name aims at the newest that has not ended
    sleeper = _submit("name: sleeper\ncommand: sleep 60\n", env)["workload"]["id"]
    assert run_json(["cancel", "sleeper"], env)["id"] == sleeper  # type: ignore[index]


def test_ls_watch_refreshes_until_stopped(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    env = server.env
    _submit("name: watched\ncommand: sleep 60\n", env)
    out_path = tmp_path / "watch.out"
    with out_path.open("w") as out_file:
        watcher = subprocess.Popen([sys.executable, "-m", "gpupool", "ls", "--watch", "--interval", "0.3"], env=env,
                                   cwd=REPO, stdout=out_file)
    try:
        deadline = time.monotonic() + 60  # a loaded machine may take seconds to start the command
        while out_path.read_text().count("watched") < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert watcher.poll() is None  # still refreshing
    finally:
        watcher.terminate()
        watcher.wait(timeout=10)
    out = out_path.read_text()
    assert out.count("every 0.3 s; Ctrl-C to stop") >= 3 and out.count("watched") >= 3


def test_queue_changes_merge_and_warn(start_server: StartServer) -> None:
    server = start_server("--cpus", "2", "--memory", "4GiB", "--gpus", "2xA100-80GB")
    env = server.env
    run_cli(["projects", "create", "vision"], env)
    first = run_cli(["queues", "set", "vision", "--guaranteed", "cpu=1,memory=1GiB,gpu=1", "--limit", "gpu=3,cpu=2"],
                    env)
    assert first.stderr == ""
    q = run_cli(["queues", "set", "vision", "--guaranteed", "gpu=2"], env)
    # merged: the CPU and memory guarantees stay; the whole queue is printed, its limit included
    assert q.stdout.strip() == ("queue vision: guaranteed 1 CPU, 1 GiB, 2 GPU; limit 2 CPU, 3 GPU; weight 1; "
                                "lend yes; strict FIFO no")
    unset: Any = run_json(["queues", "set", "vision", "--guaranteed", "cpu=-", "--limit", "cpu=-"], env)
    assert unset["guaranteed"] == {"cpu_milli": 0, "memory_mib": 1024, "gpu_milli": 2000}
    assert unset["limit"] == {"cpu_milli": None, "memory_mib": None, "gpu_milli": 3000}
    # 16 CPU on a 2-CPU pool: accepted, with a warning; with default's guarantee, the sum is over too
    big = run_cli(["queues", "set", "vision", "--guaranteed", "cpu=16"], env)
    assert "warning: the guarantee of queue vision is more than the pool holds (cpu 16 > cpu 2)" in big.stderr
    both = run_cli(["queues", "set", "default", "--guaranteed", "gpu=1"], env)
    assert ("warning: the guarantees of all 2 queues add up to more than the pool holds (cpu 16 > cpu 2, "
            "gpu 3 > gpu 2)") in both.stderr


def test_a_job_over_its_queue_limit_is_accepted_with_a_warning(start_server: StartServer) -> None:
    server = start_server("--gpus", "8xA100-80GB")
    env = server.env
    run_cli(["queues", "set", "default", "--limit", "gpu=4"], env)
    spec = "name: six\nresources: {gpu: 6}\ncommand: sleep 60\n"
    result = subprocess.run([sys.executable, "-m", "gpupool", "submit", "-"], input=spec, env=env, cwd=REPO,
                            capture_output=True, text=True, check=True)
    assert "can never start under the current limit of queue default (gpu 6 > limit 4)" in result.stderr
    assert "warning:" in result.stderr and "submitted to queue default" in result.stdout
    deadline = time.monotonic() + 60
    while True:
        shown: Any = run_json(["show", "six"], env)
        if shown["pending_reason"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert shown["pending_reason"] == ("can never start under the current limit of queue default (gpu 6 > limit 4) "
                                       "unless the limit is raised")


def test_a_gpu_request_on_a_pool_without_gpus_says_so(start_server: StartServer) -> None:
    env = start_server().env
    code, error = _error(["submit", "examples/gpus/train.yaml"], env)
    assert (code, error["kind"]) == (4, "unsatisfiable")
    assert (error["message"], error["field"]) == ("can never run: this pool has no GPUs", "resources")


def test_examples_work_for_a_member_of_another_project_from_another_directory(start_server: StartServer,
                                                                               tmp_path: Path) -> None:
    server = start_server()
    env = server.env
    run_cli(["projects", "create", "vision"], env)
    token = run_cli(["users", "create", "alice", "--project", "vision"], env).stdout.strip().splitlines()[-1]
    alice = {**env, "GPUPOOL_TOKEN": token}
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    submitted: Any = run_json(["submit", str(REPO / "examples" / "hello.yaml")], alice, cwd=elsewhere)
    assert submitted["workload"]["queue"] == "vision"
    # a spec's command starts in the spec file's directory: `cat data.txt` finds the file beside it
    spec_dir = tmp_path / "job"
    spec_dir.mkdir()
    (spec_dir / "data.txt").write_text("beside the spec\n")
    (spec_dir / "job.yaml").write_text("name: reader\ncommand: cat data.txt\n")
    reader: Any = run_json(["submit", str(spec_dir / "job.yaml"), "--wait"], alice, cwd=elsewhere)
    assert reader["status"] == "succeeded"
    assert run_cli(["logs", "reader"], alice).stdout == "beside the spec\n"
    assert run_cli(["wait", "hello"], alice).returncode == 0


def test_up_prints_a_short_banner_without_migration_noise(tmp_path: Path) -> None:
    port = free_port()
    env = cli_env(tmp_path, port, GPUPOOL_MULTI_USER="false")  # a pytest tmp dir is closed to other users
    env["PATH"] = "/usr/bin:/bin"  # the environment's bin directory is not on PATH, as after `make run`
    log_path = tmp_path / "up.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--home", str(tmp_path / "home"),
                                    "--port", str(port)], env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        process.terminate()
        process.wait(timeout=30)
    text = log_path.read_text()
    assert "Application startup complete" in text
    assert "alembic" not in text and "Running upgrade" not in text
    assert f"gpupool on http://127.0.0.1:{port} (API docs at /docs)\n  state in {tmp_path / 'home'}\n" in text
    assert f"`source {Path(sys.executable).parent / 'activate'}`" in text


def test_piped_tables_are_not_wrapped_at_80_columns(start_server: StartServer) -> None:
    server = start_server()
    env = {k: v for k, v in server.env.items() if k != "COLUMNS"}
    long_name = "a-rather-long-workload-name-that-would-wrap"
    wid = _submit(f"name: {long_name}\ncommand: sleep 60\n", env)["workload"]["id"]
    out = run_cli(["ls"], env).stdout  # stdout is a pipe here
    line = next(line for line in out.splitlines() if line.startswith(f"{wid} "))
    assert len(line) > 80 and long_name in line and "admin" in line
