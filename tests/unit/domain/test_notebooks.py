"""`kind: notebook` specs, the notebook lifecycle and the idle rule that culls notebooks."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.lifecycle import NotebookLifecycle, ReplicaView, Step, WorkloadView
from gpupool.domain.notebooks import (
    IDLE_OFF,
    JUPYTER_PORT,
    Activity,
    NotebookSpec,
    about_to_cull,
    cull_decision,
    cull_summary,
    cull_warning_text,
    duration_text,
    effective_idle_timeout,
    idle_since,
    is_cull_warning,
    parse_activity,
)
from gpupool.domain.replicas import ReplicaState as R
from gpupool.domain.specs import parse_spec
from gpupool.domain.status import WorkloadStatus as S


def test_a_notebook_spec_is_one_jupyter_replica_on_its_port_and_round_trips() -> None:
    spec = parse_spec({"kind": "notebook", "name": "explore", "resources": {"gpu": 0.25, "memory": "8GiB"},
                       "idle_timeout": "2h", "environment": "torch"})
    assert isinstance(spec, NotebookSpec)
    assert (spec.replica_count, spec.ports, spec.idle_timeout_s, spec.environment) == (1, (JUPYTER_PORT,), 7200,
                                                                                       "torch")
    assert spec.roles[0].resources.gpu.share_milli == 250
    assert "jupyterlab" in spec.command_for(spec.roles[0]) and "base_url" in spec.command_for(spec.roles[0])
    assert "command" not in spec.to_dict() and parse_spec(spec.to_dict()) == spec
    off = parse_spec({"kind": "notebook", "idle_timeout": "off"})
    assert isinstance(off, NotebookSpec) and off.idle_timeout_s == IDLE_OFF and off.to_dict()["idle_timeout"] == "off"


@pytest.mark.parametrize(("fields", "message"), [
    ({"command": "python x.py"}, "command: a notebook is one JupyterLab replica"),
    ({"ports": [80]}, "ports: a notebook"),
    ({"replicas": 2}, "replicas: a notebook"),
    ({"gpus": 1}, "gpus: unknown field"),
    ({"idle_timeout": "soon"}, "idle_timeout"),
    ({"idle_timeout": "90d"}, "idle_timeout: '90d' is out of range"),
    ({"environment": "Bad Name"}, "environment: 'Bad Name' is not an environment name"),
])
def test_bad_notebook_specs_name_the_field(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_spec({"kind": "notebook", **fields})
    assert message in str(error.value)


def view(status: S, *states: R) -> WorkloadView:
    return WorkloadView(status, tuple(ReplicaView(i, "worker", s, 0 if s == R.SUCCEEDED else None)
                                      for i, s in enumerate(states)))


def test_notebook_lifecycle_runs_stops_on_shutdown_and_leaves_stopped_alone() -> None:
    life = NotebookLifecycle()
    assert life.advance(view(S.STARTING, R.RUNNING), now=1) == Step(S.RUNNING, "all 1 replica(s) running",
                                                                     started=True)
    shut = life.advance(view(S.RUNNING, R.SUCCEEDED), now=2)
    assert shut is not None and shut.target == S.STOPPED and shut.reset_start  # exit 0: stopped, not succeeded
    failed = life.advance(view(S.RUNNING, R.FAILED), now=2)
    assert failed is not None and failed.target == S.FAILED
    assert life.advance(view(S.STOPPED, R.STOPPED), now=3) is None


def activity(connections: int = 0, server: float = 0.0, *kernels: tuple[str, float]) -> Activity:
    return Activity(server, connections, kernels)


def test_idle_since_follows_kernels_and_only_counts_the_server_while_something_is_connected() -> None:
    # kernel idle since 100, a tab open (1 connection) polled the API at 190: idle since 190
    assert idle_since(activity(1, 190.0, ("idle", 100.0)), running_since=50) == 190
    # no connection: the server's API activity does not count, the kernel's does: idle since 100
    assert idle_since(activity(0, 190.0, ("idle", 100.0)), running_since=50) == 100
    # never before this run started (150 > 100)
    assert idle_since(activity(0, 190.0, ("idle", 100.0)), running_since=150) == 150
    assert idle_since(activity(0, 190.0, ("busy", 100.0), ("idle", 120.0)), running_since=50) is None


def test_cull_decision_warns_in_the_last_quarter_then_culls_and_off_never_culls() -> None:
    idle = activity(0, 0.0, ("idle", 1000.0))
    # timeout 400 s: warn within min(600, 400/4) = 100 s of culling, i.e. idle 300..400 s
    early = cull_decision(idle, 0, 400, now=1250)  # idle 250 s: 150 s left, no warning yet
    assert (early.idle_for_s, early.culls_in_s, early.warn, early.cull) == (250, 150, False, False)
    near = cull_decision(idle, 0, 400, now=1350)  # idle 350 s: 50 s left, warn
    assert (near.warn, near.cull, near.culls_in_s) == (True, False, 50)
    assert cull_decision(idle, 0, 400, now=1400).cull  # idle 400 s: 0 left, cull
    never = cull_decision(idle, 0, IDLE_OFF, now=10**9)
    assert (never.cull, never.warn, never.culls_in_s, never.idle_for_s) == (False, False, None, 10**9 - 1000)


def test_the_warning_is_recognised_and_holds_while_the_notebook_stays_in_the_last_quarter() -> None:
    text = cull_warning_text(6300, 900, 7200, capped=True)
    assert text == "idle for 1h45m; culled in 15m unless used (idle_timeout 2h, its project's cap)"
    assert is_cull_warning(text) and is_cull_warning(cull_warning_text(22.4, 7.6, 30))
    assert not is_cull_warning("culled after 2h idle; files kept") and not is_cull_warning("idle for lunch")
    idle = activity(0, 0.0, ("idle", 1000.0))
    # timeout 400 s, warned within its last 100 s (idle 300..400 s)
    assert about_to_cull(cull_decision(idle, 0, 400, now=1350))  # 50 s left
    assert about_to_cull(cull_decision(idle, 0, 400, now=1450))  # past: culled on the culler's next pass
    assert not about_to_cull(cull_decision(idle, 0, 400, now=1010))  # used since: 390 s left
    assert not about_to_cull(cull_decision(activity(0, 0.0, ("busy", 1000.0)), 0, 400, now=1350))
    assert about_to_cull(None)  # no look yet: the warning stands
    assert cull_summary(250.4) == "culls in 4m10s unless used"
    assert cull_summary(0.0) == cull_summary(None) == "culls soon unless used"


def test_parse_activity_reads_jupyters_json_and_refuses_garbage() -> None:
    parsed = parse_activity({"last_activity": "2026-01-01T00:00:10.000000Z", "connections": 2,
                             "started": "2026-01-01T00:00:00Z"},
                            [{"execution_state": "idle", "last_activity": "2026-01-01T00:00:05Z"}])
    assert parsed.connections == 2 and parsed.server_last_activity - parsed.server_started == 10
    assert parsed.kernels[0][0] == "idle" and parsed.server_last_activity - parsed.kernels[0][1] == 5
    with pytest.raises(ValidationError):
        parse_activity({"connections": 0}, [])


def test_duration_text() -> None:
    assert [duration_text(s) for s in (0, 45, 90, 3600, 5400, 7260)] == ["0s", "45s", "1m30s", "1h", "1h30m", "2h1m"]


def test_stopped_is_left_only_by_start_or_cancel() -> None:
    from gpupool.domain.status import can_transition  # noqa: PLC0415

    assert all(can_transition(s, S.STOPPED) for s in (S.PENDING, S.SCHEDULED, S.STARTING, S.RUNNING))
    assert [t for t in S if can_transition(S.STOPPED, t)] == [S.PENDING, S.CANCELLED]
    assert not S.STOPPED.is_terminal() and not S.STOPPED.is_active()


def test_effective_idle_timeout_is_the_own_or_default_timeout_held_to_the_projects_cap() -> None:
    assert effective_idle_timeout(7200, None) == 7200  # no cap: unchanged
    assert effective_idle_timeout(IDLE_OFF, None) == IDLE_OFF  # off really off without a cap
    assert effective_idle_timeout(7200, 3600) == 3600  # asks more than the cap: the cap
    assert effective_idle_timeout(1800, 3600) == 1800  # asks less: its own
    assert effective_idle_timeout(3600, 3600) == 3600
    assert effective_idle_timeout(IDLE_OFF, 3600) == 3600  # off under a cap means the cap
