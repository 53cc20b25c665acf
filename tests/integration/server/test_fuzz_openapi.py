"""A schemathesis pass over the OpenAPI schema: generated requests (valid and not) never get a 5xx.

Bounded (a few examples per operation) so that it stays fast; one server per database for the module.
Revoking tokens is left out so that the fuzzer keeps its administrator token.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from tests.support.servers import TestServer, refusing_server

MAX_EXAMPLES = 12


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fuzz_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    yield from refusing_server(request.param, tmp_path_factory.mktemp("fuzz"))


def _operations(server: TestServer) -> list[schemathesis.APIOperation]:
    loaded = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in loaded.get_all_operations()]
    return [op for op in operations if not (op.method.upper() == "DELETE" and "/tokens/" in op.path)]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_makes_the_server_fail(fuzz_server: TestServer, mode: GenerationMode) -> None:
    headers = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    operations = _operations(fuzz_server)
    assert len(operations) >= 15

    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=fuzz_server.url, headers=headers, timeout=30)
            assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:500]}"
            if response.status_code >= 400:
                assert "error" in response.json(), response.text[:500]

        try:
            check()
        except Unsatisfiable:  # an operation without parameters or body has no invalid input to try
            assert mode == GenerationMode.NEGATIVE, operation.label
