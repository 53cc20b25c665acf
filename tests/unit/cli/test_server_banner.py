"""`gpupool up` tells a new user how to get the `gpupool` command when its directory is not on PATH."""

from __future__ import annotations

import sys
from pathlib import Path

from gpupool.cli.server import path_hint

BIN = Path(sys.executable).parent


def test_no_hint_when_the_command_of_this_environment_is_on_path() -> None:
    assert (BIN / "gpupool").exists()  # the test environment installs gpupool, as `make run` does
    assert path_hint(f"{BIN}:/usr/bin:/bin") == ""


def test_a_hint_with_the_activate_script_and_the_full_path_otherwise(tmp_path: Path) -> None:
    hint = path_hint(f"{tmp_path}:/usr/bin:/bin")
    assert f"`source {BIN / 'activate'}`" in hint and f"or run {BIN / 'gpupool'}" in hint
    # another gpupool earlier on PATH is not this one: still a hint
    other = tmp_path / "gpupool"
    other.write_text("#!/bin/sh\n")
    other.chmod(0o755)
    assert path_hint(f"{tmp_path}:{BIN}") != ""
