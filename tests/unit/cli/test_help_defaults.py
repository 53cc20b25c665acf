"""Defaults written in option help as `[default: ...]` reach `--help` (the help is rendered as rich markup, in
which an unescaped `[default: ...]` reads as a style tag and vanishes)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpupool.cli.main import app

runner = CliRunner(env={"COLUMNS": "250", "NO_COLOR": "1"})


@pytest.mark.parametrize(("command", "shown"), [
    (["up"], "[default: 8700]"),
    (["up"], "[default: $GPUPOOL_RECONCILER_PROCESS, else on"),
    (["up"], "[default: $GPUPOOL_SCHEDULER_PROCESS, else on"),
    (["wait"], "[default: any end]"),
])
def test_option_defaults_are_shown_in_help(command: list[str], shown: str) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert shown in " ".join(result.output.replace("│", " ").split()), result.output
