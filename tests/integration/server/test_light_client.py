"""The CLI's light client (client/light.py) against a real server: the same answers as the typed client, in
JSON, and the same errors with the same messages."""

from __future__ import annotations

import http.server
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.support.servers import TestServer, free_port, wait_until

from gpupool.client.errors import ApiError, ServerUnavailableError
from gpupool.client.http import Client
from gpupool.client.light import LightClient
from gpupool.client.settings import ClientSettings
from gpupool.domain.errors import AuthenticationError, ConflictError, GpupoolError, NotFoundError, ValidationError
from gpupool.executors.fake import FakeExecutor, ScriptedOutcome

JOB = "kind: job\nname: {name}\ncommand: python train.py\nresources: {{cpu: 1, memory: 1GiB, gpu: 1}}\n"
# one database is enough for these tests: the light client sees only HTTP
ON_SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def light(server: TestServer, token: str | None = None) -> LightClient:
    settings = ClientSettings(url=server.url, token=token or server.admin_token, home=server.settings.home)
    return LightClient(settings)


def raised(call: Callable[[], Any]) -> GpupoolError:
    with pytest.raises(GpupoolError) as caught:
        call()
    return caught.value


@ON_SQLITE
def test_answers_are_the_typed_clients_as_json(server: TestServer, admin: Client, fake: FakeExecutor) -> None:
    client = light(server)
    submitted = client.submit(JOB.format(name="train"), idempotency_key="k-1")
    wid = submitted["workload"]["id"]
    assert submitted["created"] and client.submit(JOB.format(name="train"), idempotency_key="k-1")["created"] is False
    wait_until(lambda: client.get_workload(wid)["status"] == "running", what="running")  # then nothing changes
    assert client.get_workload(wid) == admin.get_workload(wid).model_dump(mode="json")
    assert client.whoami() == admin.whoami().model_dump(mode="json")
    assert client.nodes() == [n.model_dump(mode="json") for n in admin.nodes()]
    assert client.queues() == [q.model_dump(mode="json") for q in admin.queues()]
    # readings change between two calls: the same GPUs, with the same fields, held by the same replicas
    gpus, typed = client.gpus_now(), [g.model_dump(mode="json") for g in admin.gpus_now()]
    assert [(g["node"], g["index"], sorted(g), g["users"]) for g in gpus] == [
        (g["node"], g["index"], sorted(g), g["users"]) for g in typed]


@ON_SQLITE
def test_a_list_of_statuses_and_a_name_filter_reach_the_server(server: TestServer, fake: FakeExecutor) -> None:
    client = light(server)
    first = client.submit(JOB.format(name="a"))["workload"]["id"]
    second = client.submit(JOB.format(name="b"))["workload"]["id"]
    wait_until(lambda: client.get_workload(first)["status"] == "running", what="a running")
    client.cancel(second)
    both = client.list_workloads(status=["running", "cancelled"])
    assert {w["id"] for w in both["items"]} == {first, second}
    assert [w["id"] for w in client.list_workloads(status=["cancelled"])["items"]] == [second]
    assert [w["id"] for w in client.list_workloads(name="a", limit=1)["items"]] == [first]


@ON_SQLITE
def test_logs_stream_line_by_line_as_the_typed_client_reads_them(server: TestServer, admin: Client,
                                                                 fake: FakeExecutor) -> None:
    client = light(server)
    wid = client.submit(JOB.format(name="talks"))["workload"]["id"]
    fake.script(str(wid), ScriptedOutcome(logs=("first line", "", "é ünïcode", "last")))
    assert client.wait(wid, timeout_s=30)["status"] == "succeeded"
    lines = list(client.logs(wid))
    assert lines == ["first line", "", "é ünïcode", "last"] == list(admin.logs(wid))
    assert list(client.logs(wid, tail=1)) == ["last"]


@ON_SQLITE
def test_errors_are_the_typed_clients(server: TestServer, admin: Client, fake: FakeExecutor) -> None:
    client = light(server)
    pairs: list[tuple[Callable[[], Any], Callable[[], Any], type[GpupoolError]]] = [
        (lambda: client.get_workload(999), lambda: admin.get_workload(999), NotFoundError),
        (lambda: client.submit("kind: job\nname: x\n"), lambda: admin.submit("kind: job\nname: x\n"), ValidationError),
        (lambda: client.logs(999).__next__(), lambda: admin.logs(999).__next__(), NotFoundError),
    ]
    for ours, theirs, kind in pairs:
        mine, typed = raised(ours), raised(theirs)
        assert type(mine) is type(typed) and isinstance(mine, kind) and str(mine) == str(typed)
        if isinstance(mine, ValidationError) and isinstance(typed, ValidationError):
            assert mine.field == typed.field
    wid = client.submit(JOB.format(name="ends"))["workload"]["id"]
    client.cancel(wid)
    assert isinstance(raised(lambda: client.cancel(wid)), ConflictError)
    assert isinstance(raised(light(server, token="gpp_not-a-token").whoami), AuthenticationError)


def test_a_server_that_is_not_there_says_how_to_start_one(tmp_path: Path) -> None:
    settings = ClientSettings(url=f"http://127.0.0.1:{free_port()}", token=None, home=tmp_path)
    error = raised(LightClient(settings).whoami)
    assert isinstance(error, ServerUnavailableError)
    assert "cannot reach the gpupool server" in str(error) and "gpupool up" in str(error)
    with pytest.raises(ServerUnavailableError, match="not an http:// or https:// address"):
        LightClient(ClientSettings(url="ftp://example.org", token=None, home=tmp_path))


@pytest.fixture
def proxy_error_page() -> Iterator[str]:
    """A web server that answers every request with 502 and an HTML page, as a broken proxy does."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"<html>bad gateway</html>"
            self.send_response(502)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/prefix"
    httpd.shutdown()
    thread.join(10)


def test_an_answer_that_is_not_an_api_error_is_quoted(proxy_error_page: str, tmp_path: Path) -> None:
    settings = ClientSettings(url=proxy_error_page, token=None, home=tmp_path)
    error = raised(LightClient(settings).whoami)
    typed = raised(Client(settings=settings).whoami)
    assert isinstance(error, ApiError) and error.http_status == 502
    assert str(error) == str(typed) == "HTTP 502: <html>bad gateway</html>"


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An https server with a self-signed certificate for 127.0.0.1 that answers every GET with a JSON user;
    yields its URL and the certificate's file."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"id": 1, "name": "tls", "is_admin": False, "created_at": 0.0}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            """Quiet."""

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{httpd.server_address[1]}", cert
    httpd.shutdown()
    thread.join(10)


def test_https_trusts_the_certificates_the_typed_client_trusts(https_server: tuple[str, Path], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    url, cert = https_server
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    settings = ClientSettings(url=url, token=None, home=tmp_path)
    error = raised(LightClient(settings).whoami)  # a self-signed certificate is trusted by neither
    assert isinstance(error, ServerUnavailableError) and "certificate" in str(error)
    assert isinstance(raised(Client(settings=settings).whoami), ServerUnavailableError)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    assert LightClient(settings).whoami()["name"] == "tls" == Client(settings=settings).whoami().name


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers every GET as the server's class says; remembers the Authorization header of each request."""

    seen: list[str | None]
    answer: tuple[int, dict[str, str], bytes]

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        status, headers, body = self.answer
        self.send_response(status)
        for key, value in (headers | {"Content-Length": str(len(body))}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        """Quiet."""


@pytest.fixture
def web_servers() -> Iterator[Callable[[int, dict[str, str], bytes], tuple[str, list[str | None]]]]:
    """Start plain web servers that answer every GET with a fixed status, headers and body; each call yields
    its URL and the Authorization headers it received."""
    started: list[tuple[http.server.HTTPServer, threading.Thread]] = []

    def start(status: int, headers: dict[str, str], body: bytes) -> tuple[str, list[str | None]]:
        seen: list[str | None] = []
        handler = type("Handler", (_Recorder,), {"seen": seen, "answer": (status, headers, body)})
        httpd = http.server.HTTPServer(("127.0.0.1", 0), handler)
        thread = threading.Thread(target=httpd.serve_forever, daemon=True)
        thread.start()
        started.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}", seen

    yield start
    for httpd, thread in started:
        httpd.shutdown()
        thread.join(10)


def test_a_redirect_is_an_error_and_the_token_stays_home(web_servers: Any, tmp_path: Path) -> None:
    """Neither client follows a redirect (the token would go to wherever it points): both raise the same
    ApiError naming the new address, and the other host sees no request."""
    elsewhere, seen_there = web_servers(200, {"Content-Type": "application/json"}, b"{}")
    moved, seen_here = web_servers(307, {"Location": f"{elsewhere}/api/v1/whoami"}, b"")
    settings = ClientSettings(url=moved, token="gpp_secret", home=tmp_path)
    error = raised(LightClient(settings).whoami)
    typed = raised(Client(settings=settings).whoami)
    assert isinstance(error, ApiError) and isinstance(typed, ApiError) and error.http_status == 307
    assert str(error) == str(typed) and elsewhere in str(error) and "GPUPOOL_URL" in str(error)
    assert seen_here == ["Bearer gpp_secret", "Bearer gpp_secret"] and seen_there == []


def test_an_answer_that_is_not_json_is_the_same_error_from_both_clients(web_servers: Any, tmp_path: Path) -> None:
    url, _ = web_servers(200, {"Content-Type": "text/html"}, b"<html>a login page</html>")
    settings = ClientSettings(url=url, token=None, home=tmp_path)
    error, typed = raised(LightClient(settings).whoami), raised(Client(settings=settings).whoami)
    assert isinstance(typed, ApiError) and typed.http_status == 200
    assert str(error) == str(typed) == "HTTP 200: not a JSON answer: <html>a login page</html>"


def test_certificates_that_cannot_be_read_are_a_clear_error(https_server: tuple[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    url, _ = https_server
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    settings = ClientSettings(url=url, token=None, home=tmp_path)
    error = raised(LightClient(settings).whoami)
    typed = raised(lambda: Client(settings=settings).whoami())
    assert isinstance(error, ServerUnavailableError) and isinstance(typed, ServerUnavailableError)
    assert str(error) == str(typed) and "SSL_CERT_FILE" in str(error) and "missing.pem" in str(error)
