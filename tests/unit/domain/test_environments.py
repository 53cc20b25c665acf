"""Environment specs: checked requirements, a canonical form and its hash (the build cache's key)."""

from __future__ import annotations

import pytest

from gpupool.domain.environments import parse_environment, parse_requirements
from gpupool.domain.errors import ValidationError


def test_the_hash_ignores_order_duplicates_and_the_name() -> None:
    a = parse_environment("torch", "3.11", ["torch==2.13.0", "numpy", "numpy"])
    b = parse_environment("other", "3.11", ["numpy", "torch==2.13.0"])
    assert a.requirements == ("numpy", "torch==2.13.0") and a.hash == b.hash and len(a.hash) == 24
    assert parse_environment("torch", "3.12", ["numpy", "torch==2.13.0"]).hash != a.hash


def test_requirements_files_are_read_line_by_line() -> None:
    text = "# pinned\nnumpy>=1.26,<3\n\ntorch[cuda]==2.13.0  # the big one\n"
    assert parse_requirements(text) == ["numpy>=1.26,<3", "torch[cuda]==2.13.0"]


@pytest.mark.parametrize(("name", "python", "packages", "message"), [
    ("Bad", "3.11", ["six"], "name: 'Bad' is not a valid name"),
    ("ok", "python3", ["six"], "python: 'python3' is not a Python version"),
    ("ok", "3.11", [], "packages: name at least one package"),
])
def test_bad_requests_name_the_field(name: str, python: str, packages: list[str], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_environment(name, python, packages)
    assert message in str(error.value)


@pytest.mark.parametrize("item", ["https://x/y.whl", "./local", "-e", "--index-url=x", "a;rm"])
def test_urls_paths_options_and_shell_are_refused(item: str) -> None:
    with pytest.raises(ValidationError, match="line 1"):
        parse_requirements(item)
