"""Job arrays from the command line against a real server (real processes): submit, the folded `ls` line,
`show` with its tasks, `logs ID.INDEX`, `cancel ID.INDEX` and `cancel ID`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.e2e.conftest import StartServer
from tests.support.processes import run_cli, run_json
from tests.support.servers import wait_until

SPEC = """name: frames
array: 0-4%2
command: echo frame {{array.index}} index $GPUPOOL_ARRAY_INDEX; sleep 60
resources: {cpu: 0.1, memory: 64MiB}
"""


def test_array_commands(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server()
    env = {**server.env, "COLUMNS": "200"}
    (tmp_path / "frames.yaml").write_text(SPEC)
    submitted: Any = run_json(["submit", str(tmp_path / "frames.yaml")], env)
    array = submitted["workload"]["id"]
    assert submitted["workload"]["kind"] == "array" and submitted["workload"]["array"]["tasks"] == 5

    def listed() -> Any:
        page: Any = run_json(["ls"], env)
        return page if page["items"][0]["array"]["by_status"] == {"running": 2, "pending": 3} else None

    page = wait_until(listed, timeout_s=60, interval_s=0.5, what="two tasks running")
    assert [w["id"] for w in page["items"]] == [array]  # the tasks are folded into their array
    lines = [line for line in run_cli(["ls"], env).stdout.splitlines() if "frames" in line]
    assert len(lines) == 1 and "array 0-4%2, 5 tasks: 3 pending, 2 running" in lines[0], lines

    def output() -> str:
        return run_cli(["logs", f"{array}.1"], env).stdout.strip()

    logs = wait_until(output, timeout_s=30, what="output")
    assert logs == "frame 1 index 1"
    one = run_cli(["cancel", f"{array}.4"], env).stdout
    assert "(frames): cancelled" in one
    shown = run_cli(["show", str(array)], env).stdout
    assert "tasks       array 0-4%2, 5 tasks: 2 pending, 2 running, 1 cancelled" in shown
    task_rows = [line.split() for line in shown.splitlines() if line.strip().startswith(("0 ", "1 ", "4 "))]
    assert [row[0] for row in task_rows[:3]] == ["0", "1", "4"] and "cancelled" in task_rows[2]
    assert f"array task  1 of array {array}" in run_cli(["show", "frames.1"], env).stdout

    refused = run_cli(["logs", str(array)], env, check=False)
    assert refused.returncode == 2 and f"gpupool logs {array}.7" in refused.stderr
    assert "Traceback" not in refused.stderr
    missing = run_cli(["cancel", f"{array}.9"], env, check=False)
    assert missing.returncode != 0 and "has no task 9; its indices are 0-4%2" in missing.stderr

    run_cli(["cancel", str(array)], env)
    after: Any = run_json(["show", str(array)], env)
    assert after["status"] == "cancelled" and {t["status"] for t in after["tasks"]} == {"cancelled"}


def test_show_and_wait_page_a_large_array(start_server: StartServer, tmp_path: Path) -> None:
    """`show` asks for the first page and counts the rest; `show --all` follows the pages; `wait` reads the counts
    (never the task list) and prints them."""
    server = start_server()
    env = {**server.env, "COLUMNS": "200"}
    (tmp_path / "big.yaml").write_text(SPEC.replace("0-4%2", "0-1199%1").replace("name: frames", "name: big"))
    array = run_json(["submit", str(tmp_path / "big.yaml")], env)["workload"]["id"]  # type: ignore[index]
    shown = run_cli(["show", str(array)], env).stdout
    assert "1150 more task(s)" in shown and f"gpupool show {array} --all" in shown
    every: Any = run_json(["show", str(array), "--all"], env)
    assert [t["index"] for t in every["tasks"]] == list(range(1200))  # two pages of 1000
    assert every["array"]["tasks"] == 1200
    run_cli(["cancel", str(array)], env)
    waited = run_cli(["wait", str(array), "--timeout", "60"], env, check=False)
    assert waited.returncode == 1, waited.stderr  # it ended, not succeeded
    assert "tasks: array 0-1199%1, 1200 tasks: 1200 cancelled" in waited.stdout
