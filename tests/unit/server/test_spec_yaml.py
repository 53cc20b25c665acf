"""A spec's YAML from an untrusted client: libyaml and the pure-Python loader give the same data and the
same refusals (aliases, deep nesting, unsafe tags), and nothing reaches libyaml's recursive composer deep."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from gpupool.domain.errors import ValidationError
from gpupool.server.services.spec_yaml import C_LOADER, MAX_NESTING, load_spec_yaml

LOADERS = [pytest.param(None, id="pure")] + ([pytest.param(C_LOADER, id="libyaml")] if C_LOADER else [])
EXAMPLES = sorted(Path(__file__).parents[3].joinpath("examples").rglob("*.yaml"))


def nested(depth: int) -> str:
    return "command: x\nextra: " + "[" * depth + "1" + "]" * depth + "\n"


def test_libyaml_is_there() -> None:
    """The fast path is the one the server runs: PyYAML's wheels carry libyaml."""
    assert C_LOADER is not None


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_both_loaders_give_the_same_data_as_pyyaml(path: Path) -> None:
    text = path.read_text()
    expected = yaml.safe_load(text)
    assert load_spec_yaml(text, None) == expected
    if C_LOADER is not None:
        assert load_spec_yaml(text, C_LOADER) == expected


@pytest.mark.parametrize("loader", LOADERS)
@pytest.mark.parametrize(("text", "message"), [
    ("a: &x [1]\nb: *x\n", "aliases (*name) are not allowed in specs (line 2)"),
    ("a: &x {k: v}\nb:\n  c: *x\n", "aliases (*name) are not allowed in specs (line 3)"),
    (nested(MAX_NESTING + 1), f"nests deeper than {MAX_NESTING} levels"),
    ("command: !!python/object:os.system x\n", "the YAML cannot be read at line 1"),
    ("command: [unclosed\n", "the YAML cannot be read at line 2"),
    ("a: 1\n\tb: 2\n", "the YAML cannot be read at line 2"),
])
def test_refusals_say_what_is_wrong(loader: Any, text: str, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_spec_yaml(text, loader)
    assert message in str(caught.value) and caught.value.field == "spec_yaml"


@pytest.mark.parametrize("loader", LOADERS)
def test_nesting_up_to_the_limit_is_read(loader: Any) -> None:
    data = load_spec_yaml(nested(MAX_NESTING - 1), loader)
    depth, value = 0, data["extra"]
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert (depth, value) == (MAX_NESTING - 1, 1)


@pytest.mark.parametrize("loader", LOADERS)
def test_a_megabyte_of_brackets_is_refused_not_composed(loader: Any) -> None:
    """What a member could send in one request body: refused (by the event check, or by libyaml's own
    limit, which its scanner reaches first), never composed."""
    with pytest.raises(ValidationError, match=r"nests deeper|maximum nesting depth") as caught:
        load_spec_yaml(nested(500_000), loader)
    assert caught.value.field == "spec_yaml"
