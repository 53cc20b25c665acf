"""Which node agents of cluster mode answer, and one log line per episode of silence.

An agent that does not answer (Ray restarting it, its worker busy or slow to start, a call timing out) is
not a lost machine: the node stays in the pool while Ray reports it alive (see docs/cluster.md). What the
operator needs is one warning when a node stops answering, with the node and the cause, and one line when it
answers again; not a traceback on every poll and every node pass. `AgentHealth` keeps that state for the
Ray executor. This module imports no Ray: it is plain Python, unit-tested without a cluster.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("gpupool.ray")
CAUSE_MAX_CHARS = 200  # Ray's error texts carry whole remote tracebacks; the first line says what happened


def short_cause(error: BaseException) -> str:
    """`error` in one line: its type and the first line of its message, at most CAUSE_MAX_CHARS long."""
    lines = str(error).strip().splitlines()
    text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return text if len(text) <= CAUSE_MAX_CHARS else text[: CAUSE_MAX_CHARS - 3] + "..."


@dataclass(frozen=True)
class Silence:
    """An episode of silence of one agent: when it began (monotonic seconds), its first cause, how many
    calls failed during it."""

    since: float
    cause: str
    failures: int


class AgentHealth:
    """Episodes of silence per agent (thread-safe: the node worker and the reconciler both call agents).
    `failed` logs a warning only when an episode begins; `answered` logs one line when it ends; `forget`
    ends one without a line (the node left the cluster: the node worker says so)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._silent: dict[str, Silence] = {}

    def failed(self, agent: str, node: str | None, cause: str) -> None:
        """A call to `agent` (the agent of `node`; None while it has never described its node) got no answer,
        because of `cause`."""
        with self._lock:
            episode = self._silent.get(agent)
            if episode is None:
                self._silent[agent] = Silence(self._clock(), cause, 1)
            else:
                self._silent[agent] = Silence(episode.since, episode.cause, episode.failures + 1)
        if episode is not None:
            log.debug("node %s still does not answer (agent %s): %s", node or "(new)", agent, cause)
        elif node is None:
            log.warning(
                "node agent %s does not answer (it has not described its node to this server yet): %s; a new "
                "node joins once it answers, a registered one stays while Ray reports it alive",
                agent,
                cause,
            )
        else:
            log.warning(
                "node %s does not answer (agent %s): %s; it stays in the pool while Ray reports it "
                "alive, and its replicas are not counted lost",
                node,
                agent,
                cause,
            )

    def now(self) -> float:
        """The health clock's time: take it before a call, and give it to `answered` after."""
        return self._clock()

    def answered(self, agent: str, node: str, asked_at: float | None = None) -> None:
        """A call to `agent` made at `asked_at` (default: now) was answered: ends its episode of silence, if
        any, with one line. An answer to a call made before the episode began ends nothing (a call made
        just before the agent died may answer just after another call found it dead)."""
        with self._lock:
            episode = self._silent.get(agent)
            if episode is None or (asked_at is not None and asked_at < episode.since):
                return
            del self._silent[agent]
        log.info(
            "node %s answers again (agent %s) after %.1f s without answer (%d calls failed)",
            node,
            agent,
            self._clock() - episode.since,
            episode.failures,
        )

    def forget(self, agent: str) -> None:
        """End `agent`'s episode without a line (its node left the cluster)."""
        with self._lock:
            self._silent.pop(agent, None)

    def silent_for(self, agent: str) -> float | None:
        """How long (seconds) `agent` has not answered, or None while it answers."""
        with self._lock:
            episode = self._silent.get(agent)
        return None if episode is None else self._clock() - episode.since

    def silence(self, agent: str) -> Silence | None:
        """The current episode of silence of `agent`, or None while it answers."""
        with self._lock:
            return self._silent.get(agent)
