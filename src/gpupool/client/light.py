"""The CLI's light client: the API calls of the CLI's commands (ls, show, logs, submit, cancel, wait, whoami,
queues, nodes, top, sweep, envs, notebook, port-forward; service and pipeline calls are in light_services.py
and light_pipelines.py) over the standard library's `http.client`, answering with the server's JSON as plain
dicts and lists.

The typed client (client/http.py, the SDK) validates answers into pydantic models over httpx; importing those
costs a command about two thirds of its start-up time (benchmarks/cli), and a command that prints the answer
needs no more than the JSON. Both clients read the same settings (client/settings.py) and raise the same errors
with the same messages (client/errors.py). Each request opens its own connection: a command makes one or two,
and `wait` one every few tenths of a second to a server that is usually on the same machine.
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

from gpupool.client.errors import (
    ServerUnavailableError,
    error_from_response,
    not_json,
    redirected,
    unreachable,
    unreadable_certificates,
)
from gpupool.client.settings import ClientSettings
from gpupool.domain.status import TERMINAL_STATUSES

if TYPE_CHECKING:
    import ssl

API = "/api/v1"  # the same prefix as client/http.py's
JsonObject = dict[str, Any]


def query_string(params: Mapping[str, Any]) -> str:
    """A query string as httpx writes it: None left out, booleans as true/false, a list as repeated keys."""
    pairs: list[tuple[str, str]] = []
    for key, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is not None:
                pairs.append((key, ("true" if item else "false") if isinstance(item, bool) else str(item)))
    return "?" + urlencode(pairs) if pairs else ""


def _reason(exc: BaseException) -> str:
    """What went wrong on the wire, in a few words ("Connection refused", "timed out")."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text or type(exc).__name__


def tls_context() -> ssl.SSLContext:
    """A TLS context that trusts SSL_CERT_FILE, else SSL_CERT_DIR, else certifi's certificates (what httpx
    trusts by default; the typed client shares one, see `http.shared_tls_context`). OSError when they cannot
    be read."""
    import ssl  # noqa: PLC0415  (only for https)

    if os.environ.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    if os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=os.environ["SSL_CERT_DIR"])
    import certifi  # noqa: PLC0415  (installed with httpx)

    return ssl.create_default_context(cafile=certifi.where())


class LightClient:
    """A connection to one gpupool server for the CLI; `url`, `token` and the timeout come from the same settings
    as the typed Client's. Answers are the server's JSON (dicts, lists); errors are the domain errors the server
    raised, ServerUnavailableError or ApiError, as the typed Client raises them."""

    def __init__(self, settings: ClientSettings | None = None) -> None:
        settings = settings or ClientSettings()
        self.url = settings.url.rstrip("/")
        self.token = settings.resolved_token()
        self.timeout_s = settings.timeout_s
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ServerUnavailableError(f"GPUPOOL_URL {self.url!r} is not an http:// or https:// address; set it "
                                         "to the server's address, such as http://127.0.0.1:8700")
        self._https = parts.scheme == "https"
        self._host, self._port, self._prefix = parts.hostname, parts.port, parts.path.rstrip("/")

    def __enter__(self) -> LightClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Nothing to close: each request closes its own connection."""

    # ----------------------------------------------------------------------------------- plumbing
    def _connect(self, timeout_s: float | None = None) -> http.client.HTTPConnection:
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self._https:
            try:
                context = tls_context()
            except OSError as exc:  # ssl.SSLError is one too
                raise unreadable_certificates(_reason(exc)) from None
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=context)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _open(self, method: str, path: str, body: Mapping[str, Any] | None = None, *, stream: bool = False,
              timeout_s: float | None = None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send a request and return the connection and the response, its headers read; the domain error of an
        error response, ServerUnavailableError when the server cannot be reached. With `stream`, reading the
        body waits as long as the server takes (the connection still times out); `timeout_s` replaces the
        settings' timeout for this request."""
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None
        if body is not None:
            data = json.dumps({k: v for k, v in body.items() if v is not None}).encode()
            headers["Content-Type"] = "application/json"
        connection = self._connect(timeout_s)
        try:
            connection.connect()
            if stream and connection.sock is not None:
                connection.sock.settimeout(None)
            connection.request(method, self._prefix + path, body=data, headers=headers)
            response = connection.getresponse()
            if response.status >= 300:
                text = response.read().decode("utf-8", "replace")
                connection.close()
                if response.status < 400:
                    raise redirected(self.url, response.status, response.getheader("location", ""))
                raise error_from_response(response.status, text)
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise unreachable(self.url, _reason(exc)) from None
        return connection, response

    def _text(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              timeout_s: float | None = None) -> tuple[int, str]:
        connection, response = self._open(method, path, body, timeout_s=timeout_s)
        try:
            return response.status, response.read().decode("utf-8", "replace")
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(self.url, _reason(exc)) from None
        finally:
            connection.close()

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None,
              timeout_s: float | None = None) -> Any:
        status, text = self._text(method, path, body, timeout_s)
        try:
            return json.loads(text)
        except ValueError:
            raise not_json(status, text) from None

    def get_text(self, path: str, **params: Any) -> str:
        """GET `path` (with these query parameters) and return its body as text (CSV, Prometheus text)."""
        return self._text("GET", path + query_string(params))[1]

    def get(self, path: str, **params: Any) -> Any:
        """GET `path` (with these query parameters, None left out) and return its JSON."""
        return self._call("GET", path + query_string(params))

    def send(self, method: str, path: str, body: Mapping[str, Any] | None = None, *,
             timeout_s: float | None = None) -> Any:
        """POST/PUT/DELETE `path` with a JSON body (None values left out; no body for None) and return its JSON;
        `timeout_s` replaces the settings' timeout for this request (one the server answers slowly)."""
        return self._call(method, path, body, timeout_s)

    # ------------------------------------------------------------------------------------ the API
    def whoami(self) -> JsonObject:
        """The user of this client's token (schemas.User as JSON)."""
        return self.get(f"{API}/whoami")  # type: ignore[no-any-return]

    def list_workloads(self, *, project: str | None = None, status: Sequence[str] | None = None,
                       name: str | None = None, limit: int = 50, before_id: int | None = None) -> JsonObject:
        """Workloads you may see, newest first (schemas.WorkloadPage as JSON)."""
        return self.get(f"{API}/workloads", project=project, status=list(status) if status else None,  # type: ignore[no-any-return]
                        name=name, limit=limit, before_id=before_id)

    def get_workload(self, workload_id: int, *, tasks: int | None = None) -> JsonObject:
        """One workload with its replicas and history (schemas.WorkloadDetail as JSON); a job array with its
        counts by status and its first `tasks` tasks (default the server's 50; 0 for none)."""
        return self.get(f"{API}/workloads/{int(workload_id)}", tasks=tasks)  # type: ignore[no-any-return]

    def array_tasks(self, workload_id: int, *, limit: int = 1000, after: int | None = None,
                    status: Sequence[str] | None = None) -> JsonObject:
        """A page of job array `workload_id`'s tasks in index order, above index `after` (the previous page's
        `next_after`), in `status` when given (schemas.ArrayTaskPage as JSON)."""
        return self.get(f"{API}/workloads/{int(workload_id)}/tasks", limit=limit, after=after,  # type: ignore[no-any-return]
                        status=list(status) if status else None)

    def all_array_tasks(self, workload_id: int, *, page_size: int = 1000) -> Iterator[JsonObject]:
        """Every task of job array `workload_id` in index order (schemas.ArrayTask as JSON), a page at a time."""
        after: int | None = None
        while True:
            page = self.array_tasks(workload_id, limit=page_size, after=after)
            yield from page["tasks"]
            if page.get("next_after") is None:
                return
            after = page["next_after"]

    def submit(self, spec: Mapping[str, Any] | str, *, idempotency_key: str | None = None,
               workdir: str | Path | None = None) -> JsonObject:
        """Submit a spec (YAML text, or a mapping); the server validates it (schemas.WorkloadSubmitted as JSON)."""
        body: JsonObject = {"spec_yaml": spec} if isinstance(spec, str) else {"spec": dict(spec)}
        body.update(idempotency_key=idempotency_key,
                    workdir=str(Path(workdir).resolve()) if workdir is not None else None)
        return self.send("POST", f"{API}/workloads", body)  # type: ignore[no-any-return]

    def array_task(self, workload_id: int, index: int) -> JsonObject:
        """Task `index` of job array `workload_id` (schemas.WorkloadDetail as JSON; NotFoundError when it has no
        such task)."""
        return self.get(f"{API}/workloads/{int(workload_id)}/tasks/{int(index)}")  # type: ignore[no-any-return]

    def cancel(self, workload_id: int) -> JsonObject:
        """Cancel a workload (ConflictError when it already ended)."""
        return self.send("POST", f"{API}/workloads/{int(workload_id)}/cancel")  # type: ignore[no-any-return]

    def logs(self, workload_id: int, *, replica: int = 0, tail: int | None = None, follow: bool = False,
             attempt: int | None = None) -> Iterator[str]:
        """Lines of a replica's output (without line ends) of the current run or of run `attempt`; `follow`
        streams until the replica ends."""
        query = query_string({"replica": replica, "tail": tail, "follow": follow, "attempt": attempt})
        connection, response = self._open("GET", f"{API}/workloads/{int(workload_id)}/logs{query}", stream=True)
        try:
            while line := response.readline():
                yield line.decode("utf-8", "replace").rstrip("\r\n")
        except (OSError, http.client.HTTPException) as exc:
            raise ServerUnavailableError(f"lost the connection to {self.url} ({_reason(exc)})") from None
        finally:
            connection.close()

    def wait(self, workload_id: int, statuses: Sequence[str] | None = None, timeout_s: float = 300.0,
             interval_s: float = 0.2) -> JsonObject:
        """Poll until the workload reaches one of `statuses` (default: any terminal status) and return it;
        TimeoutError after `timeout_s`."""
        wanted = set(statuses) if statuses else {s.value for s in TERMINAL_STATUSES}
        deadline = time.monotonic() + timeout_s
        while True:
            workload = self.get_workload(workload_id, tasks=0)  # an array's counts say how far it got
            if workload["status"] in wanted:
                return workload
            if time.monotonic() > deadline:
                raise TimeoutError(f"workload {workload_id} is {workload['status']} after {timeout_s:g}s, not "
                                   f"{' or '.join(sorted(wanted))}")
            time.sleep(interval_s)

    def queues(self) -> list[JsonObject]:
        """Every queue with quota and usage (schemas.Queue as JSON)."""
        return self.get(f"{API}/queues")  # type: ignore[no-any-return]

    def nodes(self) -> list[JsonObject]:
        """Every node of the pool (schemas.NodeInfo as JSON)."""
        return self.get(f"{API}/nodes")  # type: ignore[no-any-return]

    def node(self, name: str) -> JsonObject:
        """One node with its GPUs' modes, health, MIG instances and MPS daemons."""
        return self.get(f"{API}/nodes/{quote(name)}")  # type: ignore[no-any-return]

    def gpus_now(self) -> list[JsonObject]:
        """Every GPU's latest reading and the replicas using it (gpu_schemas.GpuNow as JSON)."""
        return self.get(f"{API}/metrics/gpus")  # type: ignore[no-any-return]

    def sweep(self, ref: int | str, steps: int | None = None) -> JsonObject:
        """A sweep (by id, or name: the newest of that name) with its trials and best trial, each trial with its
        last `steps` reported steps (sweep_schemas.SweepDetail as JSON)."""
        return self.get(f"{API}/sweeps/{quote(str(ref))}", steps=steps)  # type: ignore[no-any-return]

    def create_environment(self, name: str, *, python: str = "3.11", packages: str = "", requirements: str = "",
                           timeout_s: float = 3600.0) -> JsonObject:
        """Build (or find in the cache) a Python environment and name it; waits up to `timeout_s` while the
        server builds it (environment_schemas.EnvironmentInfo as JSON)."""
        body = {"name": name, "python": python, "packages": packages, "requirements": requirements}
        return self.send("POST", f"{API}/environments", body, timeout_s=timeout_s)  # type: ignore[no-any-return]

    def environments(self) -> list[JsonObject]:
        """The environments the caller sees (environment_schemas.EnvironmentInfo as JSON)."""
        return self.get(f"{API}/environments")  # type: ignore[no-any-return]

    def environment(self, name: str) -> JsonObject:
        """One environment with its build log (environment_schemas.EnvironmentDetail as JSON)."""
        return self.get(f"{API}/environments/{quote(name)}")  # type: ignore[no-any-return]

    def remove_environment(self, name: str) -> JsonObject:
        """Remove an environment (its owner or an administrator)."""
        return self.send("DELETE", f"{API}/environments/{quote(name)}")  # type: ignore[no-any-return]

    def notebooks(self, *, include_ended: bool = False) -> list[JsonObject]:
        """Notebooks you may see, ended ones too with `include_ended` (notebook_schemas.NotebookInfo as JSON)."""
        return self.get(f"{API}/notebooks", all=include_ended or None)  # type: ignore[no-any-return]

    def open_notebook(self, workload_id: int) -> JsonObject:
        """A one-time link that opens the notebook (notebook_schemas.NotebookOpen as JSON; `path` to append to
        the server's address)."""
        return self.send("POST", f"{API}/notebooks/{int(workload_id)}/open")  # type: ignore[no-any-return]

    def stop_notebook(self, workload_id: int) -> JsonObject:
        """Stop a notebook, keeping its files (schemas.WorkloadDetail as JSON)."""
        return self.send("POST", f"{API}/notebooks/{int(workload_id)}/stop")  # type: ignore[no-any-return]

    def start_notebook(self, workload_id: int) -> JsonObject:
        """Start a stopped notebook again (schemas.WorkloadDetail as JSON; ConflictError while it is still
        stopping)."""
        return self.send("POST", f"{API}/notebooks/{int(workload_id)}/start")  # type: ignore[no-any-return]
