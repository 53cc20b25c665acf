"""The typed HTTP client of the gpupool API, shared by the CLI, the SDK (`from gpupool import Client`) and tests.

Errors come back as the domain errors the server raised (ValidationError, NotFoundError, ...) with the
server's message; an unreachable server raises ServerUnavailableError saying how to start one. Fields that
are None are left out of requests, so a newer client keeps working with an older server.
"""

from __future__ import annotations

import functools
import os
import ssl
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, TypeAdapter, ValidationError

from gpupool.api import environment_schemas, gpu_schemas, notebook_schemas, schemas, sweep_schemas, usage_schemas
from gpupool.client.errors import (
    ApiError,
    ServerUnavailableError,
    error_from_response,
    not_json,
    redirected,
    unexpected_answer,
    unreachable,
    unreadable_certificates,
)
from gpupool.client.light import tls_context
from gpupool.client.settings import ClientSettings
from gpupool.domain.errors import GpupoolError
from gpupool.domain.status import TERMINAL_STATUSES

T = TypeVar("T")
API = "/api/v1"
__all__ = ["API", "ApiError", "Client", "ServerUnavailableError"]


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def shared_tls_context() -> ssl.SSLContext:
    """One TLS context per process for the certificates the environment names (SSL_CERT_FILE, its
    modification time, SSL_CERT_DIR): reading a certificate bundle costs ~15 ms of CPU, which httpx would
    spend again for every client. OSError when the certificates cannot be read."""
    cert_file = os.environ.get("SSL_CERT_FILE") or None
    stamp = os.stat(cert_file).st_mtime_ns if cert_file and os.path.exists(cert_file) else None
    return _tls_context_for(cert_file, stamp, os.environ.get("SSL_CERT_DIR") or None)


@functools.lru_cache(maxsize=4)
def _tls_context_for(cert_file: str | None, stamp: int | None, cert_dir: str | None) -> ssl.SSLContext:
    return tls_context()  # reads the same variables; the arguments only key the cache


_ADAPTERS: dict[Any, TypeAdapter[Any]] = {}


def _adapter(model: Any) -> TypeAdapter[Any]:
    """The validator of an answer type, built once per type: building one generates the type's whole schema,
    which took about twice as long as the rest of a request (its HTTP exchange included)."""
    try:
        return _ADAPTERS[model]
    except KeyError:
        adapter = _ADAPTERS[model] = TypeAdapter(model)
        return adapter
    except TypeError:  # an unhashable type expression: built each time
        return TypeAdapter(model)


def _validated(model: type[T] | Any, response: httpx.Response) -> T:
    """The answer's JSON as `model`; ApiError (not a pydantic traceback) when it is something else."""
    try:
        return _adapter(model).validate_python(_json(response))  # type: ignore[no-any-return]
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ())) or "the answer"
        raise unexpected_answer(response.status_code, f"{where}: {first.get('msg', '')}") from None


def _error_from(response: httpx.Response) -> GpupoolError:
    return error_from_response(response.status_code, response.text)


def _json(response: httpx.Response) -> Any:
    """The answer's JSON; the light client's ApiError when it is not JSON (a web page where the server should be)."""
    try:
        return response.json()
    except ValueError:
        raise not_json(response.status_code, response.text) from None


class Client:
    """A connection to one gpupool server. `url` and `token` default to GPUPOOL_URL and GPUPOOL_TOKEN (or the
    token file in $GPUPOOL_HOME). Use as a context manager, or call `close()`."""

    def __init__(self, url: str | None = None, token: str | None = None, *, timeout_s: float | None = None,
                 settings: ClientSettings | None = None, transport: httpx.BaseTransport | None = None) -> None:
        settings = settings or ClientSettings()
        self.url = (url or settings.url).rstrip("/")
        self.token = token or settings.resolved_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            self._http = httpx.Client(base_url=self.url, headers=headers, transport=transport,
                                      verify=shared_tls_context(),
                                      timeout=timeout_s if timeout_s is not None else settings.timeout_s)
        except OSError as exc:  # SSL_CERT_FILE / SSL_CERT_DIR cannot be read (ssl.SSLError is an OSError)
            raise unreadable_certificates(exc.strerror or str(exc) or type(exc).__name__) from None

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # ----------------------------------------------------------------------------------- plumbing
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.url, type(exc).__name__) from None
        if response.status_code >= 400:
            raise _error_from(response)
        if response.is_redirect:
            raise redirected(self.url, response.status_code, response.headers.get("location", ""))
        return response

    def _get(self, path: str, model: type[T] | Any, **params: Any) -> T:
        response = self._request("GET", path, params=_drop_none(params))
        return _validated(model, response)

    def _send(self, method: str, path: str, model: type[T], body: BaseModel | Mapping[str, Any] | None) -> T:
        payload = body.model_dump(exclude_none=True) if isinstance(body, BaseModel) else body
        response = self._request(method, path, json=_drop_none(payload) if payload is not None else None)
        return _validated(model, response)

    # ------------------------------------------------------------------------------------- system
    def health(self) -> schemas.Health:
        """The server's /healthz (needs no token)."""
        return self._get("/healthz", schemas.Health)

    def whoami(self) -> schemas.User:
        """The user of this client's token."""
        return self._get(f"{API}/whoami", schemas.User)

    # ---------------------------------------------------------------------------------- workloads
    def submit(self, spec: Mapping[str, Any] | str | Path, *, idempotency_key: str | None = None,
               workdir: str | Path | None = None) -> schemas.WorkloadSubmitted:
        """Submit a spec: a mapping, YAML text, or a Path to a YAML file. With `idempotency_key`, retrying the
        same submit returns the same workload (`created` False). `workdir` is where the command starts
        when the spec names none (an absolute directory on the server's machine)."""
        body = _submit_request(spec, idempotency_key, str(Path(workdir).resolve()) if workdir is not None else None)
        return self._send("POST", f"{API}/workloads", schemas.WorkloadSubmitted, body)

    def submit_batch(self, specs: Sequence[Mapping[str, Any] | str | Path], *,
                     idempotency_keys: Sequence[str | None] | None = None,
                     workdir: str | Path | None = None) -> schemas.BatchSubmitted:
        """Submit several specs (mappings, YAML texts or Paths) in one request: all are accepted, or none (the
        error names the first refused item, e.g. `items[2].resources`). `idempotency_keys`, when given, has
        one key (or None) per spec. The answer has one item per spec, in order."""
        if not 1 <= len(specs) <= schemas.MAX_BATCH:
            raise ValueError(f"a batch has 1 to {schemas.MAX_BATCH} specs, not {len(specs)}; split it")
        keys = list(idempotency_keys) if idempotency_keys is not None else [None] * len(specs)
        if len(keys) != len(specs):
            raise ValueError(f"{len(specs)} specs but {len(keys)} idempotency keys; give one key (or None) per spec")
        folder = str(Path(workdir).resolve()) if workdir is not None else None
        items = [_submit_request(spec, key, folder) for spec, key in zip(specs, keys, strict=True)]
        return self._send("POST", f"{API}/workloads/batch", schemas.BatchSubmitted,
                          schemas.SubmitBatchRequest(items=items))

    def list_workloads(self, *, project: str | None = None, status: Sequence[str] | None = None,
                       name: str | None = None, limit: int = 50, before_id: int | None = None) -> schemas.WorkloadPage:
        """Workloads you may see, newest first (see WorkloadPage for paging)."""
        return self._get(f"{API}/workloads", schemas.WorkloadPage, project=project,
                         status=list(status) if status else None, name=name, limit=limit, before_id=before_id)

    def get_workload(self, workload_id: int, *, tasks: int | None = None) -> schemas.WorkloadDetail:
        """One workload with its replicas and history; a job array with its counts by status and its first
        `tasks` tasks (default the server's 50; 0 for none; `array_tasks` pages through the rest)."""
        return self._get(f"{API}/workloads/{int(workload_id)}", schemas.WorkloadDetail, tasks=tasks)

    def array_tasks(self, workload_id: int, *, limit: int = 1000, after: int | None = None,
                    status: Sequence[str] | None = None) -> schemas.ArrayTaskPage:
        """A page of job array `workload_id`'s tasks in index order, those above index `after` (the previous
        page's `next_after`) and in `status` when given."""
        return self._get(f"{API}/workloads/{int(workload_id)}/tasks", schemas.ArrayTaskPage, limit=limit,
                         after=after, status=list(status) if status else None)

    def all_array_tasks(self, workload_id: int, *, status: Sequence[str] | None = None,
                        page_size: int = 1000) -> Iterator[schemas.ArrayTask]:
        """Every task of job array `workload_id` in index order (in `status` when given), a page at a time."""
        after: int | None = None
        while True:
            page = self.array_tasks(workload_id, limit=page_size, after=after, status=status)
            yield from page.tasks
            if page.next_after is None:
                return
            after = page.next_after

    def sweep(self, ref: int | str, steps: int | None = None) -> sweep_schemas.SweepDetail:
        """A sweep (by id, or name: the newest of that name) with its trials and best trial; each trial with
        its last `steps` reported steps (the server's default when None; at most 1,000)."""
        return self._get(f"{API}/sweeps/{ref}", sweep_schemas.SweepDetail, steps=steps)

    def array_task(self, workload_id: int, index: int) -> schemas.WorkloadDetail:
        """Task `index` of job array `workload_id` (NotFoundError when it has no such task)."""
        return self._get(f"{API}/workloads/{int(workload_id)}/tasks/{int(index)}", schemas.WorkloadDetail)

    def cancel(self, workload_id: int) -> schemas.WorkloadDetail:
        """Cancel a workload (ConflictError when it already ended)."""
        return self._send("POST", f"{API}/workloads/{int(workload_id)}/cancel", schemas.WorkloadDetail, None)

    def logs(self, workload_id: int, *, replica: int = 0, tail: int | None = None,
             follow: bool = False, attempt: int | None = None) -> Iterator[str]:
        """Lines of a replica's output (without newlines) of the current run, or of run `attempt` (1 is the
        first); `follow` streams until the replica ends."""
        params = _drop_none({"replica": replica, "tail": tail, "follow": follow, "attempt": attempt})
        try:
            with self._http.stream("GET", f"{API}/workloads/{int(workload_id)}/logs", params=params,
                                   timeout=httpx.Timeout(self._http.timeout.connect, read=None)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_from(response)
                if response.is_redirect:
                    raise redirected(self.url, response.status_code, response.headers.get("location", ""))
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise ServerUnavailableError(f"lost the connection to {self.url} ({type(exc).__name__})") from None

    def wait(self, workload_id: int, statuses: Sequence[str] | None = None, timeout_s: float = 300.0,
             interval_s: float = 0.2) -> schemas.WorkloadDetail:
        """Poll until the workload reaches one of `statuses` (default: any terminal status) and return it;
        TimeoutError after `timeout_s`."""
        wanted = set(statuses) if statuses else {s.value for s in TERMINAL_STATUSES}
        deadline = time.monotonic() + timeout_s
        while True:
            workload = self.get_workload(workload_id, tasks=0)  # an array's counts say how far it got
            if workload.status in wanted:
                return workload
            if time.monotonic() > deadline:
                raise TimeoutError(f"workload {workload_id} is {workload.status} after {timeout_s:g}s, not "
                                   f"{' or '.join(sorted(wanted))}")
            time.sleep(interval_s)

    # ---------------------------------------------------------------------------------- notebooks
    def notebooks(self, *, include_ended: bool = False) -> list[notebook_schemas.NotebookInfo]:
        """Notebooks you may see, newest first, with idle for / culls in."""
        return self._get(f"{API}/notebooks", list[notebook_schemas.NotebookInfo], all=include_ended or None)

    def open_notebook(self, workload_id: int) -> notebook_schemas.NotebookOpen:
        """A one-time link (a path on this server) that opens the notebook in a browser."""
        return self._send("POST", f"{API}/notebooks/{int(workload_id)}/open", notebook_schemas.NotebookOpen, None)

    def stop_notebook(self, workload_id: int) -> schemas.WorkloadDetail:
        """Stop a notebook (GPU freed, files kept); ConflictError when already stopped or ended."""
        return self._send("POST", f"{API}/notebooks/{int(workload_id)}/stop", schemas.WorkloadDetail, None)

    def start_notebook(self, workload_id: int) -> schemas.WorkloadDetail:
        """Start a stopped notebook again; ConflictError unless it is stopped."""
        return self._send("POST", f"{API}/notebooks/{int(workload_id)}/start", schemas.WorkloadDetail, None)

    # ------------------------------------------------------------------------------- environments
    def create_environment(self, name: str, *, python: str = "3.11", packages: str = "",
                           requirements: str = "", timeout_s: float = 3600.0) -> environment_schemas.EnvironmentInfo:
        """Build (or find in the cache) a Python environment and name it; blocks while it builds."""
        body = environment_schemas.EnvironmentCreate(name=name, python=python, packages=packages,
                                                     requirements=requirements)
        response = self._request("POST", f"{API}/environments", json=body.model_dump(), timeout=timeout_s)
        return _validated(environment_schemas.EnvironmentInfo, response)

    def environments(self) -> list[environment_schemas.EnvironmentInfo]:
        """The environments the caller sees (the shared ones and their own; an administrator: all)."""
        return self._get(f"{API}/environments", list[environment_schemas.EnvironmentInfo])

    def environment(self, name: str) -> environment_schemas.EnvironmentDetail:
        """One environment with its build log."""
        return self._get(f"{API}/environments/{name}", environment_schemas.EnvironmentDetail)

    def remove_environment(self, name: str) -> environment_schemas.EnvironmentInfo:
        """Remove an environment (its owner or an administrator)."""
        return self._send("DELETE", f"{API}/environments/{name}", environment_schemas.EnvironmentInfo, None)

    # ------------------------------------------------------------------------------ nodes, queues
    def nodes(self) -> list[schemas.NodeInfo]:
        """Every node of the pool."""
        return self._get(f"{API}/nodes", list[schemas.NodeInfo])

    def node(self, name: str) -> schemas.NodeInfo:
        """One node with its GPUs' modes, health, MIG instances and MPS daemons."""
        return self._get(f"{API}/nodes/{name}", schemas.NodeInfo)

    def set_sharing(self, node: str, gpu: int, mode: str) -> gpu_schemas.GpuChange:
        """Set a GPU's sharing mode: exclusive, shared, mps or mig (administrators)."""
        return self._send("PUT", f"{API}/nodes/{node}/gpus/{int(gpu)}/sharing", gpu_schemas.GpuChange,
                          {"mode": mode})

    def set_mig(self, node: str, gpu: int, layout: str) -> gpu_schemas.GpuChange:
        """Apply a MIG layout such as "3g.40gb,2g.20gb,1g.10gb,1g.10gb" ("none": MIG off; administrators)."""
        return self._send("PUT", f"{API}/nodes/{node}/gpus/{int(gpu)}/mig", gpu_schemas.GpuChange,
                          {"layout": layout})

    def clear_unhealthy(self, node: str, gpu: int) -> gpu_schemas.GpuChange:
        """Declare a GPU healthy again after an XID/ECC error (administrators)."""
        return self._send("POST", f"{API}/nodes/{node}/gpus/{int(gpu)}/clear-unhealthy", gpu_schemas.GpuChange,
                          None)

    def gpus_now(self) -> list[gpu_schemas.GpuNow]:
        """Every GPU's latest reading and the replicas using it (what `gpupool top` shows)."""
        return self._get(f"{API}/metrics/gpus", list[gpu_schemas.GpuNow])

    def gpu_series(self, *, node: str | None = None, gpu: int | None = None, metric: str | None = None,
                   since: float | None = None, until: float | None = None,
                   max_points: int | None = None) -> gpu_schemas.SeriesPage:
        """GPU time series (utilization_pct, memory_used_bytes, power_w, temperature_c), filtered."""
        return self._get(f"{API}/metrics/gpus/series", gpu_schemas.SeriesPage, node=node, gpu=gpu, metric=metric,
                         since=since, until=until, max_points=max_points)

    def workload_series(self, workload_id: int, *, since: float | None = None, until: float | None = None,
                        max_points: int | None = None) -> gpu_schemas.SeriesPage:
        """The GPU memory of a workload's processes over time, per node."""
        return self._get(f"{API}/metrics/workloads/{int(workload_id)}", gpu_schemas.SeriesPage, since=since,
                         until=until, max_points=max_points)

    def idle_report(self) -> gpu_schemas.IdleReport:
        """Wasted GPUs: allocations idle past the threshold (administrators)."""
        return self._get(f"{API}/reports/idle", gpu_schemas.IdleReport)

    def dry_run(self, spec: Mapping[str, Any] | str) -> usage_schemas.DryRunResult:
        """What the scheduler would do with this spec now (start it where, preempt, wait why, never); nothing
        is submitted."""
        body = {"spec_yaml": spec} if isinstance(spec, str) else {"spec": dict(spec)}
        return self._send("POST", f"{API}/workloads/dry-run", usage_schemas.DryRunResult, body)

    def console_link(self) -> usage_schemas.ConsoleLink:
        """A one-time link (a path on the server) that signs a browser in to the console as this client's user."""
        return self._send("POST", f"{API}/console/links", usage_schemas.ConsoleLink, None)

    def usage(self, *, by: str = "project", period: str = "day", since: str = "30d") -> usage_schemas.UsageReport:
        """GPU-hours allocated, busy and idle per project or user per day/week/month over the last `since`."""
        return self._get(f"{API}/usage", usage_schemas.UsageReport, by=by, period=period, since=since)

    def usage_csv(self, *, by: str = "project", period: str = "day", since: str = "30d") -> str:
        """The same report's lines as CSV text."""
        return self._request("GET", f"{API}/usage", params={"by": by, "period": period, "since": since,
                                                            "format": "csv"}).text

    def prometheus_metrics(self) -> str:
        """The Prometheus exposition text of /metrics (an administrator's or the scrape token)."""
        return self._request("GET", "/metrics").text

    def queues(self) -> list[schemas.Queue]:
        """Every queue with quota and usage."""
        return self._get(f"{API}/queues", list[schemas.Queue])

    def update_queue(self, name: str, *, guaranteed: Mapping[str, Any] | None = None,
                     limit: Mapping[str, Any] | None = None, weight: float | None = None, lend: bool | None = None,
                     strict_fifo: bool | None = None) -> schemas.Queue:
        """Change a queue (administrators); amounts like {gpu: 2, memory: 64GiB}."""
        body = schemas.QueueUpdate(guaranteed=dict(guaranteed) if guaranteed is not None else None,
                                   limit=dict(limit) if limit is not None else None, weight=weight, lend=lend,
                                   strict_fifo=strict_fifo)
        return self._send("PUT", f"{API}/queues/{name}", schemas.Queue, body)

    # ----------------------------------------------------------------------------------- accounts
    def users(self) -> list[schemas.User]:
        """Every user (administrators), else yourself."""
        return self._get(f"{API}/users", list[schemas.User])

    def create_user(self, name: str, *, admin: bool = False, project: str | None = None,
                    role: str = "member") -> schemas.UserCreated:
        """Create a user (administrators); the result holds their first token."""
        body = schemas.UserCreate(name=name, admin=admin, project=project, role=role)
        return self._send("POST", f"{API}/users", schemas.UserCreated, body)

    def projects(self) -> list[schemas.Project]:
        """Your projects (all for administrators)."""
        return self._get(f"{API}/projects", list[schemas.Project])

    def create_project(self, name: str) -> schemas.Project:
        """Create a project and its queue (administrators)."""
        return self._send("POST", f"{API}/projects", schemas.Project, schemas.ProjectCreate(name=name))

    def set_member(self, project: str, user: str, role: str = "member") -> schemas.Project:
        """Give `user` a role in `project`."""
        return self._send("PUT", f"{API}/projects/{project}/members", schemas.Project,
                          schemas.MemberSet(user=user, role=role))

    def set_idle_cap(self, project: str, cap: str | int) -> schemas.Project:
        """Cap the idle_timeout of `project`'s notebooks (`4h`, seconds), or remove the cap with `none`."""
        return self._send("PUT", f"{API}/projects/{project}/idle-cap", schemas.Project,
                          schemas.ProjectIdleCap(max_idle_timeout=cap))

    def remove_member(self, project: str, user: str) -> schemas.Project:
        """Remove `user` from `project`."""
        return self._send("DELETE", f"{API}/projects/{project}/members/{user}", schemas.Project, None)

    def tokens(self, user: str | None = None) -> list[schemas.Token]:
        """Your tokens (administrators: `user`'s)."""
        return self._get(f"{API}/tokens", list[schemas.Token], user=user)

    def create_token(self, name: str = "cli", user: str | None = None) -> schemas.TokenCreated:
        """A new token (its text is in the result, shown once)."""
        return self._send("POST", f"{API}/tokens", schemas.TokenCreated, schemas.TokenCreate(name=name, user=user))

    def revoke_token(self, token_id: int) -> schemas.Token:
        """Revoke a token."""
        return self._send("DELETE", f"{API}/tokens/{int(token_id)}", schemas.Token, None)


def _submit_request(spec: Mapping[str, Any] | str | Path, key: str | None,
                    workdir: str | None) -> schemas.SubmitRequest:
    """The request body for one spec: a Path is read, a str is YAML text, a mapping is sent as an object."""
    if isinstance(spec, Path):
        return schemas.SubmitRequest(spec_yaml=spec.read_text(), idempotency_key=key, workdir=workdir)
    if isinstance(spec, str):
        return schemas.SubmitRequest(spec_yaml=spec, idempotency_key=key, workdir=workdir)
    return schemas.SubmitRequest(spec=dict(spec), idempotency_key=key, workdir=workdir)
