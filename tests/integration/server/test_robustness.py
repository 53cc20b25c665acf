"""Bad input of every kind gets a clear 4xx with a JSON error body, and changes nothing.

One server per database for the whole module: every request here is refused, so tests cannot affect each
other (each checks that the number of workloads, projects or users did not change).
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support.servers import TestServer, refusing_server

from gpupool.client.http import Client


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestServer]:
    yield from refusing_server(request.param, tmp_path_factory.mktemp("robustness"))


@pytest.fixture
def admin(server: TestServer) -> Iterator[Client]:
    with server.client() as client:
        yield client


def count(admin: Client) -> int:
    return admin.list_workloads(status=[]).total


def post(server: TestServer, path: str, body: Any = None, **kwargs: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {server.admin_token}", **kwargs.pop("headers", {})}
    return httpx.post(f"{server.url}/api/v1{path}", json=body, headers=headers, timeout=30, **kwargs)


BAD_SPECS = [
    ("command: [unclosed\n", 422, "YAML cannot be read at line"),
    ("a: &x [1]\nb: *x\n", 422, "aliases"),
    ("- just\n- a list\n", 422, "must be a mapping"),
    ("", 422, "must be a mapping"),
    ("command: x\ncomand: y\n", 422, 'did you mean "command"'),
    ("command: x\nresources: {memory: 16 gigs}\n", 422, "unknown unit"),
    ("command: x\nreplicas: 1000000000\n", 422, "out of range"),
    ("command: x\nresources: {memory: 99999999PiB}\n", 422, "more memory than any machine"),
    ("command: x\nresources: {cpu: 1e300}\n", 422, "CPU"),
    ("command: x\nresources: {gpu: .nan}\n", 422, "finite"),
    ("command: x\npriority: 10000000000000000000000\n", 422, "out of range"),
    ("command: x\nname: ../../etc/passwd\n", 422, "not a valid name"),
    ("command: x\nproject: ../other\n", 422, "not a valid name"),
    ("command: x\nproject: nosuch\n", 422, "unknown project"),
    ("command: x\nworkdir: relative/dir\n", 422, "absolute"),
    ("command: x\nworkdir: /tmp/../etc\n", 422, "without '..'"),
    ("command: x\nworkdir: /no/such/dir/anywhere\n", 422, "not a directory"),
    ("command: x\nenv: {CUDA_VISIBLE_DEVICES: '0'}\n", 422, "gpupool sets this variable"),
    ("command: x\nqueue: other\n", 422, "submits to queue default"),
    ("command: x\nkind: sweep\n", 422, "unknown field"),
    ("command: x\nkind: notebook\n", 422, "notebook is one JupyterLab replica"),
    ("command: x\nmax_runtime: 2024-01-01\n", 422, "duration"),
    ("command: x\nmax_runtime: .nan\n", 422, "must be finite"),
    ("command: x\nmax_runtime: .inf\n", 422, "must be finite"),
    ("command: x\nmax_runtime: 1.0e+400\n", 422, "must be finite"),
    ("command: x\nresources: {cpu: .nan}\n", 422, "finite"),
    ("command: !!python/object:os.system x\n", 422, "YAML cannot be read"),
    ("command: x\n" + "  " * 5000 + "y: 1\n", 422, "YAML"),
]


@pytest.mark.parametrize(("text", "status", "message"), BAD_SPECS, ids=[m for _, _, m in BAD_SPECS])
def test_bad_specs_are_refused_with_a_clear_message(server: TestServer, admin: Client, text: str, status: int,
                                                   message: str) -> None:
    before = count(admin)
    response = post(server, "/workloads", {"spec_yaml": text})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] or message in str(error.get("field")), error
    assert "Traceback" not in response.text
    assert count(admin) == before


@pytest.mark.parametrize(("body", "message"), [
    ({}, "exactly one of"),
    ({"spec": {"command": "x"}, "spec_yaml": "command: x"}, "exactly one of"),
    ({"spec_yaml": "command: x", "extra": 1}, "Extra inputs"),
    ({"spec_yaml": 5}, "string"),
    ({"spec_yaml": "command: x", "idempotency_key": "../../x"}, "pattern"),
    ({"spec": {"command": "x", "env": {"A": [1, 2]}}}, "expected a string"),
    ({"spec_yaml": "command: x\n" + "#" * 1_100_000}, "at most 1048576 characters"),
])
def test_malformed_submit_bodies(server: TestServer, admin: Client, body: dict[str, Any], message: str) -> None:
    response = post(server, "/workloads", body)
    assert 400 <= response.status_code < 500, response.text
    assert message in response.text
    assert count(admin) == 0


def test_non_json_and_oversized_bodies(server: TestServer, admin: Client) -> None:
    r = post(server, "/workloads", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"]["type"] == "validation_error"
    r = post(server, "/workloads", content=b"x" * (3 * 1024 * 1024), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "too_large"
    assert count(admin) == 0


def _send_chunked(server: TestServer, token: str | None, total: int) -> tuple[int, str]:
    """POST a chunked body of up to `total` bytes to /api/v1/workloads over a raw socket; returns how many
    body bytes the server took before it answered or closed, and the status line it answered."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    host, port = server.url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /api/v1/workloads HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * (1024 * 1024)
        sock.settimeout(0.2)
        try:
            while sent < total:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
                try:
                    if sock.recv(1, socket.MSG_PEEK):
                        break  # the server answered already
                except TimeoutError:
                    pass
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server closed the connection without reading the rest
        sock.settimeout(30)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while b"\r\n" not in answer and (part := sock.recv(4096)):
                answer += part
    return sent, answer.split(b"\r\n", 1)[0].decode()


def test_a_chunked_body_without_a_token_is_refused_before_it_is_read(server: TestServer, admin: Client) -> None:
    sent, status = _send_chunked(server, None, 300 * 1024 * 1024)
    assert status.startswith("HTTP/1.1 401"), status
    assert sent < 32 * 1024 * 1024  # socket buffers hold a few MiB; the server read none of the 300 MiB
    assert count(admin) == 0


@pytest.mark.parametrize("token", [None, "gp_not-a-token"])
@pytest.mark.parametrize("content", [b"{not json", b'{"spec_yaml": 5}', b'{"spec_yaml": "command: x"}'])
def test_a_submit_without_a_valid_token_is_refused_whatever_its_body(
        server: TestServer, admin: Client, token: str | None, content: bytes) -> None:
    """401, never a 422 that would tell an unknown caller what is wrong with its body."""
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    r = httpx.post(f"{server.url}/api/v1/workloads", content=content, headers=headers, timeout=30)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error", r.text
    assert count(admin) == 0


def test_a_submit_without_a_token_is_refused_before_its_body_is_sent(server: TestServer) -> None:
    """Authenticated from the headers: the server answers 401 while the client has sent none of the body."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /api/v1/workloads HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n")
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]


def test_a_chunked_body_is_counted_as_it_streams(server: TestServer, admin: Client) -> None:
    sent, status = _send_chunked(server, server.admin_token, 64 * 1024 * 1024)
    assert status.startswith("HTTP/1.1 413"), status
    assert sent < 40 * 1024 * 1024  # refused at 2 MiB, not after the whole 64 MiB
    assert count(admin) == 0


def test_nan_durations_leave_the_keep_alive_connection_usable(server: TestServer, admin: Client) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=f"{server.url}/api/v1", headers=headers, timeout=30) as http:
        for value in ("NaN", "Infinity", "1e400"):
            body = '{"spec": {"command": "x", "max_runtime": VALUE}}'.replace("VALUE", value)
            r = http.post("/workloads", content=body, headers={"Content-Type": "application/json"})
            assert r.status_code == 422, r.text
        assert http.get("/workloads").status_code == 200  # the same connection still answers
    assert count(admin) == 0


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/workloads/0"), ("GET", "/workloads/-1"), ("GET", "/workloads/abc"), ("GET", "/workloads/99999999999"),
    ("GET", "/workloads/1/logs?replica=-1"), ("GET", "/workloads?limit=0"), ("GET", "/workloads?status=bogus"),
    ("GET", "/workloads?project=../x"), ("PUT", "/queues/..%2F..%2Fetc"), ("PUT", "/projects/../members"),
    ("DELETE", "/tokens/0"), ("GET", "/nope"), ("POST", "/projects"), ("POST", "/users"),
])
def test_bad_paths_and_parameters_are_4xx(server: TestServer, method: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    body = {"weight": 1} if method == "PUT" else ({"name": "../x"} if method == "POST" else None)
    r = httpx.request(method, f"{server.url}/api/v1{path}", headers=headers, json=body, timeout=30)
    assert 400 <= r.status_code < 500, (path, r.status_code, r.text)
    assert set(r.json()) == {"error"} and r.json()["error"]["message"]


def test_names_that_would_be_paths_are_refused_everywhere(admin: Client, server: TestServer) -> None:
    for name in ("..", "../x", "a/b", "A", "x" * 64, "-x"):
        for body in ({"name": name}, {"name": name, "project": "default"}):
            r = post(server, "/users", body)
            assert r.status_code == 422, (name, r.text)
        assert post(server, "/projects", {"name": name}).status_code == 422
        assert post(server, "/tokens", {"name": name}).status_code == 422
    assert [p.name for p in admin.projects()] == ["default"]
    assert [u.name for u in admin.users()] == ["admin"]
