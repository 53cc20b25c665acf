"""The proxy's header rules and same-origin check, as pure functions."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import PermissionDeniedError
from gpupool.server.proxy import (
    Target,
    check_same_origin,
    request_token,
    response_headers,
    upstream_request_headers,
)

TARGET = Target("127.0.0.1", 41000, "/workloads/7/ports/8888")


def test_request_headers_lose_hop_by_hop_auth_and_the_gpupool_cookie() -> None:
    headers = [("Host", "pool:8700"), ("Authorization", "Bearer t"), ("Connection", "keep-alive, X-Private"),
               ("X-Private", "1"), ("Keep-Alive", "5"), ("Upgrade", "h2c"), ("Accept", "text/html"),
               ("Cookie", "gpupool_token=t; _xsrf=abc"), ("X-Forwarded-For", "spoofed")]
    out = upstream_request_headers(headers, "10.0.0.9", "http", TARGET)
    assert out == [("Accept", "text/html"), ("cookie", "_xsrf=abc"), ("x-forwarded-for", "10.0.0.9"),
                   ("x-forwarded-proto", "http"), ("x-forwarded-host", "pool:8700"),
                   ("x-forwarded-prefix", "/workloads/7/ports/8888")]


def test_response_headers_lose_hop_by_hop_and_length() -> None:
    headers = [("Content-Type", "text/plain"), ("Transfer-Encoding", "chunked"), ("Content-Length", "3"),
               ("Connection", "x-a"), ("X-A", "1"), ("Set-Cookie", "a=1")]
    assert response_headers(headers) == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1")]


def test_token_from_header_else_cookie() -> None:
    assert request_token({"authorization": "Bearer a", "cookie": "gpupool_token=b"}) == "Bearer a"
    assert request_token({"cookie": "x=1; gpupool_token=b"}) == "Bearer b"
    assert request_token({"cookie": "x=1"}) is None


@pytest.mark.parametrize(("method", "headers", "websocket", "allowed"), [
    ("GET", {"host": "pool:8700", "origin": "https://evil"}, False, True),  # safe method: no check
    ("POST", {"host": "pool:8700"}, False, True),  # no Origin: not a browser, or same origin
    ("POST", {"host": "pool:8700", "origin": "http://pool:8700"}, False, True),
    ("POST", {"host": "pool:8700", "origin": "https://evil"}, False, False),
    ("DELETE", {"host": "pool:8700", "sec-fetch-site": "cross-site"}, False, False),
    ("GET", {"host": "pool:8700", "origin": "http://evil"}, True, False),  # a WebSocket handshake is checked
    ("GET", {"host": "pool:8700", "origin": "http://pool:8700"}, True, True),
])
def test_same_origin(method: str, headers: dict[str, str], websocket: bool, allowed: bool) -> None:
    scheme = "ws" if websocket else "http"
    if allowed:
        check_same_origin(method, headers, scheme, websocket)
    else:
        with pytest.raises(PermissionDeniedError):
            check_same_origin(method, headers, scheme, websocket)
