"""An in-memory executor with scripted outcomes, for tests of the server and for the simulator.

Nothing runs: each started replica follows a `ScriptedOutcome` counted in polls, not in seconds, so a test
or the simulator's virtual clock decides when things happen. By default a replica is STARTING for 0 polls,
RUNNING for 1 poll, then SUCCEEDED with exit code 0. Outcomes are scripted per workload or per replica;
`finish`, `lose` and `fail_next_start` change the course of a replica from the outside. Several
FakeExecutor instances given the same `FakeCluster` see the same replicas, which simulates a server restart
(REATTACH). The executor records every call (`launches`, `stops`) for assertions.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from gpupool.executors.base import (
    Capability,
    Executor,
    ExecutorError,
    Handle,
    ReplicaLaunch,
    ReplicaState,
    ReplicaStatus,
)

HANDLE_KIND = "fake"
SIGTERM_EXIT_CODE = 143  # 128 + SIGTERM
SIGKILL_EXIT_CODE = 137  # 128 + SIGKILL


@dataclass(frozen=True, slots=True)
class ScriptedOutcome:
    """How a fake replica behaves: polls spent STARTING, polls spent RUNNING (None: until `finish`,
    `lose` or `stop`), then `final` state with `exit_code`. `logs` are its output lines. `ignores_sigterm`
    makes a stop end with exit code 137 (SIGKILL after the grace period) instead of 143."""

    final: ReplicaState = ReplicaState.SUCCEEDED
    exit_code: int | None = 0
    starting_polls: int = 0
    running_polls: int | None = 1
    logs: tuple[str, ...] = ()
    ignores_sigterm: bool = False
    message: str = ""


SUCCEED = ScriptedOutcome()
RUN_FOREVER = ScriptedOutcome(running_polls=None)


def fail(exit_code: int = 1, running_polls: int = 1) -> ScriptedOutcome:
    """An outcome that ends FAILED with `exit_code` after `running_polls` polls of RUNNING."""
    return ScriptedOutcome(ReplicaState.FAILED, exit_code, running_polls=running_polls)


@dataclass(slots=True)
class FakeReplica:
    """One fake replica's launch, outcome and progress."""

    launch: ReplicaLaunch
    outcome: ScriptedOutcome
    polls: int = 0
    ended: ReplicaStatus | None = None


@dataclass
class FakeCluster:
    """The replicas that exist, shared by the FakeExecutor instances given it (one per 'server run')."""

    replicas: dict[str, FakeReplica] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    next_port: dict[str, int] = field(default_factory=dict)  # node -> the next port free_ports hands out
    port_requests: list[tuple[str, int]] = field(default_factory=list)  # (node, count) per free_ports call

    FIRST_PORT = 20000  # an arbitrary, recognisable start for fake ports (nothing listens on them)


def replica_key(workload_id: str, replica: int, attempt: int = 0) -> str:
    """The key (and handle id) of one replica attempt."""
    return f"{workload_id}/{replica}/{attempt}"


class FakeExecutor(Executor):
    """Scripted, in-memory executor (see the module docstring). Thread-safe."""

    name = "fake"

    def __init__(self, cluster: FakeCluster | None = None, default: ScriptedOutcome = SUCCEED,
                 capabilities: frozenset[Capability] = frozenset({Capability.FOLLOW_LOGS, Capability.REATTACH,
                                                                  Capability.MULTI_NODE})) -> None:
        self.cluster = cluster if cluster is not None else FakeCluster()
        self.default = default
        self.capabilities = capabilities
        self._scripts: dict[tuple[str, int | None], ScriptedOutcome] = {}
        self._start_errors: list[str] = []
        self.launches: list[ReplicaLaunch] = []
        self.stops: list[tuple[str, float]] = []

    def script(self, workload_id: str, outcome: ScriptedOutcome, replica: int | None = None) -> None:
        """Use `outcome` for the replicas of `workload_id` started from now on (only `replica` when given)."""
        self._scripts[(workload_id, replica)] = outcome

    def free_ports(self, node: str, count: int) -> list[int]:
        """Distinct ports per node, counting up from FakeCluster.FIRST_PORT (nothing is bound); each call is
        recorded in `cluster.port_requests`."""
        with self.cluster.lock:
            first = self.cluster.next_port.get(node, FakeCluster.FIRST_PORT)
            self.cluster.next_port[node] = first + count
            self.cluster.port_requests.append((node, count))
        return list(range(first, first + count))

    def fail_next_start(self, message: str = "no capacity left on the fake node") -> None:
        """Make the next start raise ExecutorError(message)."""
        self._start_errors.append(message)

    def start(self, launch: ReplicaLaunch) -> Handle:
        """Create the fake replica (no blocking). Idempotent per (workload_id, replica, attempt), also across
        instances sharing the cluster. Raises ExecutorError when `fail_next_start` asked for it."""
        key = replica_key(launch.workload_id, launch.replica, launch.attempt)
        with self.cluster.lock:
            if key not in self.cluster.replicas:
                if self._start_errors:
                    raise ExecutorError(self._start_errors.pop(0))
                outcome = self._scripts.get((launch.workload_id, launch.replica),
                                            self._scripts.get((launch.workload_id, None), self.default))
                self.cluster.replicas[key] = FakeReplica(launch, outcome)
                self.launches.append(launch)
        return {"executor": HANDLE_KIND, "id": key}

    def _find(self, handle: Handle) -> FakeReplica | None:
        if not isinstance(handle, dict) or handle.get("executor") != HANDLE_KIND:
            return None
        return self.cluster.replicas.get(str(handle.get("id")))

    def poll(self, handle: Handle) -> ReplicaStatus:
        """Advance the replica by one poll and return its status. Unknown handles are LOST."""
        with self.cluster.lock:
            fake = self._find(handle)
            if fake is None:
                return ReplicaStatus(ReplicaState.LOST, message="unknown replica handle")
            if fake.ended is not None:
                return fake.ended
            fake.polls += 1
            outcome = fake.outcome
            if fake.polls <= outcome.starting_polls:
                return ReplicaStatus(ReplicaState.STARTING)
            running_for = fake.polls - outcome.starting_polls
            if outcome.running_polls is None or running_for <= outcome.running_polls:
                return ReplicaStatus(ReplicaState.RUNNING)
            fake.ended = ReplicaStatus(outcome.final, outcome.exit_code, outcome.message)
            return fake.ended

    def stop(self, handle: Handle, grace_s: float = 10.0) -> None:
        """End the replica as STOPPED (exit 143, or 137 when it ignores SIGTERM). No blocking; idempotent;
        unknown or ended replicas are left alone."""
        with self.cluster.lock:
            fake = self._find(handle)
            if fake is None or fake.ended is not None:
                return
            self.stops.append((str(handle["id"]), grace_s))
            code = SIGKILL_EXIT_CODE if fake.outcome.ignores_sigterm else SIGTERM_EXIT_CODE
            fake.ended = ReplicaStatus(ReplicaState.STOPPED, code, "stopped")

    def logs(self, handle: Handle, tail: int | None = None, follow: bool = False) -> Iterator[str]:
        """The scripted lines (the last `tail` of them). `follow` yields the same and ends: a fake
        replica has all its output from the start. Unknown handles yield nothing."""
        with self.cluster.lock:
            fake = self._find(handle)
            lines = fake.outcome.logs if fake is not None else ()
        if tail is not None:
            lines = lines[len(lines) - tail:] if tail > 0 else ()
        yield from lines

    # -- steering from tests and the simulator ------------------------------------------------------------

    def finish(self, workload_id: str, replica: int, exit_code: int = 0, attempt: int = 0) -> None:
        """End a running replica now: SUCCEEDED for exit code 0, else FAILED."""
        state = ReplicaState.SUCCEEDED if exit_code == 0 else ReplicaState.FAILED
        self._end(workload_id, replica, attempt, ReplicaStatus(state, exit_code, f"exit code {exit_code}"))

    def lose(self, workload_id: str, replica: int, attempt: int = 0) -> None:
        """Make a replica vanish (as after a machine crash): it polls as LOST."""
        self._end(workload_id, replica, attempt, ReplicaStatus(ReplicaState.LOST, message="the fake node vanished"))

    def _end(self, workload_id: str, replica: int, attempt: int, status: ReplicaStatus) -> None:
        with self.cluster.lock:
            fake = self.cluster.replicas.get(replica_key(workload_id, replica, attempt))
            if fake is None:
                raise KeyError(f"no fake replica {replica_key(workload_id, replica, attempt)}")
            if fake.ended is None:
                fake.ended = status

    def running(self) -> list[str]:
        """Keys of the replicas not ended yet, sorted."""
        with self.cluster.lock:
            return sorted(key for key, fake in self.cluster.replicas.items() if fake.ended is None)

