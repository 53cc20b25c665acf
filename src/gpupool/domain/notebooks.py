"""Notebooks: `kind: notebook` specs, their lifecycle, and the idle rule that culls them. Pure: no I/O, no clock.

A notebook is one replica running JupyterLab, launched like a job's replica (same resources, GPU shares, memory
cap, storage scopes), in the user's storage directory. gpupool writes the command; the user writes resources:

```yaml
kind: notebook
name: explore
resources: {cpu: 2, memory: 8GiB, gpu: 0.25}
idle_timeout: 2h        # culled after 2 h idle (freeing its GPU); `off` never culls; absent: the admin default
env: {HF_HOME: /data/hf}
```

A project may cap the idle timeout of its notebooks: the one applied is the lower of the two, and `off` under a
cap means the cap (effective_idle_timeout).

Jupyter listens on the port gpupool chose (`GPUPOOL_PORT`), with `base_url=/notebooks/<id>/` (so the server's
proxy forwards paths unchanged), the per-notebook token in `JUPYTER_TOKEN` (read by `IdentityProvider.token`;
an environment variable, not an argument, so other users of the node cannot read it with `ps`) and no news
pop-up or update check (offline sites).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# defined in display (light enough for the CLI's start: `notebook ls` needs no spec parser) and re-exported here
from gpupool.domain.display import duration_text as duration_text  # noqa: PLC0414
from gpupool.domain.errors import ValidationError, reject_unknown_keys
from gpupool.domain.resources import parse_duration
from gpupool.domain.specs import WorkloadKind, WorkloadSpec, _parse_common

# The port Jupyter listens on as the spec names it (the executor picks the real one on the node): Jupyter's
# own default, so `/workloads/<id>/ports/8888/` reads naturally too.
JUPYTER_PORT = 8888
IDLE_OFF = 0  # idle_timeout_s value of `idle_timeout: off`
MAX_IDLE_TIMEOUT_S = 30 * 86400  # a month: longer is `off` in practice; say so
NOTEBOOK_KEYS = ("kind", "name", "project", "queue", "priority", "resources", "env", "max_runtime", "preemptible",
                 "workdir", "idle_timeout", "environment")
# JupyterLab asks every new user whether to fetch news; `overrides.json` in a settings directory under the
# user's own HOME (no other user can plant one; rewritten at each start, nothing left in /tmp) answers "no"
# and turns the update check off.
LAB_OVERRIDES = ('{"@jupyterlab/apputils-extension:notification": '
                 '{"fetchNews": "false", "checkForUpdates": false}}')


def jupyter_arguments(ip: str, port: str, workload_id: str) -> list[str]:
    """JupyterLab's arguments for notebook `workload_id` listening on ip:port (after `python -m jupyterlab`
    and the settings directory): used by the command below and by a warm slot that becomes the notebook."""
    return ["--no-browser", "--allow-root", f"--ServerApp.ip={ip}", f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0", f"--ServerApp.base_url=/notebooks/{workload_id}/",
            "--ServerApp.root_dir=.", "--LabApp.news_url=None",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]


JUPYTER_COMMAND = (
    'settings="${HOME:-.}/.cache/gpupool/lab-settings" && mkdir -p "$settings" && '
    f"printf '%s' '{LAB_OVERRIDES}' > \"$settings/overrides.json\" && "
    'exec python -m jupyterlab --LabApp.app_settings_dir="$settings" '
    + " ".join(jupyter_arguments('"$GPUPOOL_NOTEBOOK_IP"', '"$GPUPOOL_PORT"', "$GPUPOOL_WORKLOAD_ID")))


@dataclass(frozen=True, slots=True, kw_only=True)
class NotebookSpec(WorkloadSpec):
    """A notebook: one JupyterLab replica. `idle_timeout_s` None means the pool's default, IDLE_OFF never culls;
    `environment` (every kind has it) names a Python environment, which must hold jupyterlab."""

    idle_timeout_s: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """Canonical plain-data form (without the command and port gpupool writes); parses back equal."""
        out = WorkloadSpec.to_dict(self)
        for generated in ("command", "ports", "replicas"):
            out.pop(generated, None)
        if self.idle_timeout_s is not None:
            out["idle_timeout"] = "off" if self.idle_timeout_s == IDLE_OFF else self.idle_timeout_s
        return out


def parse_notebook(data: dict[str, Any]) -> NotebookSpec:
    """Parse a `kind: notebook` spec; ValidationError naming the field (a notebook has no command, ports or
    replicas of its own: gpupool runs JupyterLab as one replica)."""
    for generated in ("command", "ports", "replicas", "roles"):
        if generated in data:
            raise ValidationError("a notebook is one JupyterLab replica whose command and port gpupool writes; "
                                  f"remove {generated} (kind: job runs a command of your own)", generated)
    reject_unknown_keys(data, NOTEBOOK_KEYS)
    common = _parse_common({**data, "command": JUPYTER_COMMAND, "ports": [JUPYTER_PORT], "replicas": 1},
                           WorkloadKind.NOTEBOOK)
    return NotebookSpec(idle_timeout_s=parse_idle_timeout(data.get("idle_timeout")), **common)


def parse_idle_timeout(value: Any, field_name: str = "idle_timeout") -> int | None:
    """`2h`, `30m`, a number of seconds, or `off` (IDLE_OFF); None when absent (the pool's default)."""
    if value is None:
        return None
    if value is False or (isinstance(value, str) and value.strip().lower() in ("off", "never", "none")):
        return IDLE_OFF
    seconds = parse_duration(value, field_name)
    if not 1 <= seconds <= MAX_IDLE_TIMEOUT_S:
        raise ValidationError(f"{value!r} is out of range; use 1s..30d, or off to never cull", field_name)
    return seconds


def effective_idle_timeout(timeout_s: int, cap_s: int | None) -> int:
    """The timeout the culler applies: the notebook's own (or the pool's default), `timeout_s`, held to its
    project's cap `cap_s` (None: no cap). Under a cap, `off` (IDLE_OFF) means the cap."""
    if cap_s is None or cap_s == IDLE_OFF:
        return timeout_s
    if timeout_s == IDLE_OFF:
        return cap_s
    return min(timeout_s, cap_s)


# ------------------------------------------------------------------------------------------ culling
@dataclass(frozen=True, slots=True)
class Activity:
    """What Jupyter says of its activity: `/api/status` (server last_activity, connections) and `/api/kernels`
    (each kernel's execution_state and last_activity). Times in seconds since the epoch."""

    server_last_activity: float
    connections: int
    kernels: Sequence[tuple[str, float]]  # (execution_state, last_activity)
    server_started: float = 0.0


def parse_activity(status: Mapping[str, Any], kernels: Sequence[Mapping[str, Any]]) -> Activity:
    """An Activity from the JSON of `/api/status` and `/api/kernels`; ValidationError when malformed."""
    try:
        return Activity(_epoch(status["last_activity"]), int(status.get("connections", 0)),
                        tuple((str(k.get("execution_state", "")), _epoch(k["last_activity"])) for k in kernels),
                        _epoch(status["started"]) if status.get("started") else 0.0)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValidationError(f"Jupyter answered an unexpected status ({exc})") from None


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def idle_since(activity: Activity, running_since: float) -> float | None:
    """When the notebook became idle, or None while it is busy (a kernel executing).

    Idle means: every kernel idle, since the latest kernel activity; and when something is connected (an
    open lab tab), also since the server's own last activity. An open tab polls the API every ~10 s, so the
    server's last_activity alone never ages while a tab is open; kernels' last_activity does (measured). Never
    earlier than `running_since` (the start of this run) or Jupyter's own start, so a fresh notebook is not
    culled at once."""
    if any(state == "busy" for state, _ in activity.kernels):
        return None
    moments = [running_since, activity.server_started, *(at for _, at in activity.kernels)]
    if activity.connections > 0:
        moments.append(activity.server_last_activity)
    return max(moments)


def warn_before_s(timeout_s: int) -> float:
    """How long before culling the warning event comes: a quarter of the timeout, at most 10 minutes (enough
    to come back to a tab; a quarter keeps short test timeouts meaningful)."""
    return min(600.0, timeout_s / 4)


@dataclass(frozen=True, slots=True)
class CullDecision:
    """What the culler does with one notebook now: `cull`, `warn` (once per run), or nothing."""

    idle_for_s: float | None
    culls_in_s: float | None
    warn: bool = False
    cull: bool = False


def cull_decision(activity: Activity, running_since: float, timeout_s: int | None, now: float) -> CullDecision:
    """The culling rule: cull when idle for longer than `timeout_s`; warn within warn_before_s of it;
    never with IDLE_OFF or None."""
    since = idle_since(activity, running_since)
    idle_for = None if since is None else max(0.0, now - since)
    if not timeout_s or idle_for is None:
        return CullDecision(idle_for, None)
    left = timeout_s - idle_for
    return CullDecision(idle_for, max(0.0, left), warn=0 < left <= warn_before_s(timeout_s), cull=left <= 0)


# How the warning event begins (cull_warning_text): how the console finds a run's warning among its events.
_WARNING = re.compile(r"idle for [0-9hms]+; culled in [0-9hms]+ unless used")


def cull_warning_text(idle_for_s: float, culls_in_s: float, timeout_s: int, capped: bool = False) -> str:
    """The warning event the culler records once per run before it culls ("idle for 1h45m; culled in 15m
    unless used (idle_timeout 2h)"); `capped`: the timeout is the project's cap."""
    cap_note = ", its project's cap" if capped else ""
    return (f"idle for {duration_text(idle_for_s)}; culled in {duration_text(culls_in_s)} unless used "
            f"(idle_timeout {duration_text(timeout_s)}{cap_note})")


def is_cull_warning(reason: str) -> bool:
    """True when an event's reason is the culler's warning (cull_warning_text)."""
    return _WARNING.match(reason) is not None


def about_to_cull(decision: CullDecision | None) -> bool:
    """True unless the culler's latest look (`decision`; None: no look yet) puts the notebook outside the
    warning window: busy, or used since it was warned."""
    return decision is None or decision.warn or decision.cull


def cull_summary(culls_in_s: float | None) -> str:
    """The short form of a warning the console shows: "culls in 4m10s unless used" (from the culler's latest
    look; "culls soon" before one, or when the culler is due now)."""
    if culls_in_s is None or culls_in_s < 1:
        return "culls soon unless used"
    return f"culls in {duration_text(culls_in_s)} unless used"
