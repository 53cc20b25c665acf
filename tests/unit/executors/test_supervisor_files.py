"""The supervisor's state files: the same JSON `json.dumps` writes, read back by the executor; and a
supervised start that imports neither `json` nor `re` (the cost of every replica start)."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpupool.executors import _supervisor as supervisor

VALUES: list[object] = [None, True, False, 0, -1, 2**63, 0.0, -0.0, 1.5, 1e-05, 1e16, 123456.789, "SIGKILL",
                        "a-b_c.d", "/tmp/log", 'quote"d', "tab\there", "ünï", math.inf, -math.inf, math.nan, ""]


def test_json_text_is_what_json_dumps_writes() -> None:
    generator = random.Random(7)
    for _ in range(2000):
        data = {generator.choice(["pid", "start_time", "exit code", "k\\"]): generator.choice(VALUES)
                for _ in range(generator.randint(0, 5))}
        data["ended_at"] = generator.uniform(-1e12, 1e12)
        assert supervisor.json_text(data) == json.dumps(data)


@pytest.mark.parametrize("grace", [0.0, 10.0, 2.5e-3, 604800.0, 1e300, math.inf, -3.0])
def test_json_number_reads_the_executors_stop_request(grace: float) -> None:
    for text in (json.dumps({"grace_s": grace, "requested_at": 1.7e9}),
                 json.dumps({"requested_at": 1.7e9, "grace_s": grace}), supervisor.json_text({"grace_s": grace})):
        assert supervisor.json_number(text, "grace_s") == grace


@pytest.mark.parametrize("text", ["{}", "[]", '{"grace_s": "ten"}', '{"grace_s": null}', "", '{"other": 1}'])
def test_json_number_refuses_what_is_not_a_number(text: str) -> None:
    with pytest.raises(ValueError, match=r".*"):
        supervisor.json_number(text, "grace_s")


def test_a_supervised_start_imports_neither_json_nor_re(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    done = subprocess.run([sys.executable, "-I", "-S", "-X", "importtime", supervisor.__file__, str(state), "--",
                           shutil.which("true") or "/bin/true"], capture_output=True, text=True, timeout=60, check=True)
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "os" in imported and not imported & {"json", "re"}
    assert json.loads((state / supervisor.EXIT_FILE).read_text())["exit_code"] == 0
    for name in (supervisor.SUPERVISOR_FILE, supervisor.COMMAND_FILE):
        assert set(json.loads((state / name).read_text())) == {"pid", "start_time"}
