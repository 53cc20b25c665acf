"""Replica states, the transitions allowed between them, and the one definition of which states are terminal.

Life cycle of one replica of one run:

    pending -> starting -> running -> succeeded | failed | stopped | lost
        \\-> failed (could not start) | stopped (stopped before it started) | lost

`pending` is the server's own state (placed, not yet handed to an executor); every other state is what an
executor reports. A replica holds its placement's resources until its state is terminal.
"""

from __future__ import annotations

from enum import StrEnum

from gpupool.domain.errors import InvalidTransitionError


class ReplicaState(StrEnum):
    """Where one replica is: pending (server side), then what its executor knows of it."""

    PENDING = "pending"  # placed by the scheduler, not started by the executor yet
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"  # ended because stop() was called
    LOST = "lost"  # the executor can no longer find it (or its node left the pool)

    @property
    def is_terminal(self) -> bool:
        """True for states a replica never leaves (TERMINAL_REPLICA_STATES)."""
        return self in TERMINAL_REPLICA_STATES


TERMINAL_REPLICA_STATES = frozenset({ReplicaState.SUCCEEDED, ReplicaState.FAILED, ReplicaState.STOPPED,
                                     ReplicaState.LOST})
_ENDS = TERMINAL_REPLICA_STATES
_R = ReplicaState
REPLICA_TRANSITIONS: dict[ReplicaState, frozenset[ReplicaState]] = {
    _R.PENDING: frozenset({_R.STARTING, _R.RUNNING, *_ENDS}),
    _R.STARTING: frozenset({_R.RUNNING, *_ENDS}),
    _R.RUNNING: frozenset(_ENDS),
    _R.SUCCEEDED: frozenset(),
    _R.FAILED: frozenset(),
    _R.STOPPED: frozenset(),
    _R.LOST: frozenset(),
}


def can_replica_transition(current: ReplicaState, target: ReplicaState) -> bool:
    """True when a replica may go from `current` to `target` (staying in a live state counts as allowed)."""
    return target in REPLICA_TRANSITIONS[current] or (target == current and not current.is_terminal)


def check_replica_transition(current: ReplicaState, target: ReplicaState) -> None:
    """InvalidTransitionError (saying which) when a replica may not go from `current` to `target`."""
    if not can_replica_transition(current, target):
        if current.is_terminal:
            raise InvalidTransitionError(f"the replica already ended ({current}); it cannot become {target}")
        raise InvalidTransitionError(f"a replica cannot go from {current} to {target}")
