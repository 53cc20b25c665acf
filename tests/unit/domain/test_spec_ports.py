"""`ports:` in a spec: the ports each replica listens on."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.specs import parse_spec


def test_ports_parse_and_round_trip() -> None:
    spec = parse_spec({"command": "serve", "ports": [8888, 6006]})
    assert spec.ports == (8888, 6006)
    assert spec.to_dict()["ports"] == [8888, 6006] and parse_spec(spec.to_dict()) == spec
    assert parse_spec({"command": "serve", "ports": 8080}).ports == (8080,)
    assert "ports" not in parse_spec({"command": "x"}).to_dict()


@pytest.mark.parametrize(("ports", "message"), [
    ([0], "ports[0]: 0 is out of range; use 1..65535"),
    (["http"], "ports[0]: expected a whole number"),
    ([80, 80], "ports: a port is listed twice"),
    (list(range(1000, 1017)), "ports: expected a list of at most 16 port numbers"),
    ({"a": 1}, "ports: expected a list"),
])
def test_bad_ports_name_the_field(ports: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec({"command": "x", "ports": ports})
