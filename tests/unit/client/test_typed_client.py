"""The typed client: what it builds once and reuses: each answer type's validator (building one generates the
type's whole schema: more CPU than the rest of a request) and the TLS context (reading the certificates
costs more than a request), each still following what it depends on; and an answer it cannot read is a
clear error."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import certifi
import httpx
import pytest
from pydantic import BaseModel, TypeAdapter

import gpupool
from gpupool.api import schemas
from gpupool.client import http
from gpupool.client.errors import ApiError


class Unhashable:
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return self is other


def test_a_validator_is_built_once_per_answer_type() -> None:
    for model in (schemas.WorkloadSubmitted, list[schemas.NodeInfo], schemas.Health):
        first = http._adapter(model)
        assert http._adapter(model) is first and isinstance(first, TypeAdapter)
    assert http._adapter(list[schemas.NodeInfo]) is not http._adapter(list[schemas.Queue])


def test_an_unhashable_type_expression_still_gets_a_validator() -> None:
    class Item(BaseModel):
        n: int

    model: Any = Annotated[Item, Unhashable()]
    assert http._adapter(model).validate_python({"n": 3}) == Item(n=3)


def test_clients_share_one_tls_context_per_certificate_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    default = http.shared_tls_context()
    with http.Client("http://127.0.0.1:9", "t") as one, http.Client("http://127.0.0.1:9", "t") as two:
        assert one._http is not two._http
    assert http.shared_tls_context() is default
    bundle = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), bundle)
    monkeypatch.setenv("SSL_CERT_FILE", str(bundle))
    from_file = http.shared_tls_context()
    assert from_file is not default and http.shared_tls_context() is from_file
    os.utime(bundle, ns=(1, 1))  # the file was replaced: read again
    assert http.shared_tls_context() is not from_file
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(OSError):
        http.shared_tls_context()


def test_an_answer_of_another_shape_is_a_clear_error_not_a_traceback() -> None:
    """A server of another version answering fields this client does not know how to read."""
    answers = {"/healthz": {"status": "ok"}, "/api/v1/queues": [{"name": 3}]}

    def reply(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    with http.Client("http://127.0.0.1:9", "t", transport=httpx.MockTransport(reply)) as client:
        with pytest.raises(ApiError) as missing:
            client.health()
        with pytest.raises(ApiError) as wrong:
            client.queues()
    assert str(missing.value) == ("HTTP 200: the server's answer is not what this client (gpupool "
                                  f"{gpupool.__version__}) expects: version: Field required; use a client of the "
                                  "server's version (its /healthz names it)")
    assert "expects: 0.name: Input should be a valid string" in str(wrong.value) and wrong.value.http_status == 200
