"""What requests read on every call and what rarely changes, kept while the store's setup sequence says it is
unchanged (store/changes.py: accounts, tokens, memberships, projects, queues, the nodes' capacity).

A request authenticates its caller, resolves its project and reads that project's queue; each was a query of
its own on every call. `cached(session, key, read)` answers from a value read earlier when the setup sequence
this transaction sees (read once per transaction, one primary-key row) is the one the value was read at, and
otherwise runs `read(session)` and keeps its answer with that sequence.

Why the answer is never older than the transaction's view: a value is kept with the sequence read *before* the
value in the same transaction, so it is at least as new as that sequence; a transaction that sees the
sequence at S is answered only from values kept at S. A change counted by the sequence (a revoked token, a
removed member, a queue's new limit) makes every kept value miss in the next transaction that sees it. When
the counter row is missing (a store emptied by hand) nothing is kept. Changes the sessions cannot see (a
raw connection, another program) are not counted: a kept value is therefore read again once it is
`MAX_AGE_S` old, whatever the sequence says (the scheduling loop's safety net is the same).
A transaction that has written anything reads for itself (it must see its own writes).

Values must be immutable (frozen dataclasses, tuples, read-only mappings): one kept value is shared by every
request thread. The cache holds at most `SetupCache.size` values, the least recently used going first.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from sqlalchemy.orm import Session

from gpupool.store import changes

T = TypeVar("T")
CACHE_KEY = "gpupool.setup_cache"  # session.info: the SetupCache of the Database that made the session
_SEQ_KEY = "gpupool.setup_cache.seq"  # session.info: the setup sequence this transaction saw (read once)
# Enough for every token and project of a large installation (a few hundred bytes each); an attacker cannot grow
# it: only values that were read for a valid caller are kept.
DEFAULT_SIZE = 4096
# How long a value is kept at most: the bound on how late an edit the sessions cannot see (SQL by hand) reaches
# the requests, e.g. a token revoked that way. 30 s as the scheduling loop's full read (FULL_REBUILD_S): at
# most one read per key and half a minute, nothing next to a request's own reads.
MAX_AGE_S = 30.0


class SetupCache:
    """Values keyed by what they answer, each with the setup sequence it was read at; thread-safe."""

    def __init__(self, size: int = DEFAULT_SIZE, max_age_s: float = MAX_AGE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.max_age_s = max_age_s
        self.clock = clock
        self._lock = threading.Lock()
        self._values: OrderedDict[Hashable, tuple[int, float, Any]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, seq: int, key: Hashable) -> tuple[bool, Any]:
        """(True, value) when `key` was kept at sequence `seq` less than `max_age_s` ago; (False, None)
        otherwise."""
        with self._lock:
            found = self._values.get(key)
            if found is None or found[0] != seq or self.clock() - found[1] >= self.max_age_s:
                self.misses += 1
                return False, None
            self._values.move_to_end(key)
            self.hits += 1
            return True, found[2]

    def keep(self, seq: int, key: Hashable, value: Any) -> None:
        """Keep `value` for `key` as read at sequence `seq` (dropping the least recently used beyond `size`)."""
        with self._lock:
            self._values[key] = (seq, self.clock(), value)
            self._values.move_to_end(key)
            while len(self._values) > self.size:
                self._values.popitem(last=False)

    def replace(self, seq: int, key: Hashable, value: Any) -> None:
        """Put `value` in place of the value kept for `key` at sequence `seq`, as old as the one it replaces;
        nothing when none is kept at `seq`."""
        with self._lock:
            found = self._values.get(key)
            if found is not None and found[0] == seq:
                self._values[key] = (seq, found[1], value)

    def __len__(self) -> int:
        """How many values are kept."""
        with self._lock:
            return len(self._values)

    def clear(self) -> None:
        """Forget every kept value."""
        with self._lock:
            self._values.clear()


def cached(session: Session, key: Hashable, read: Callable[[Session], T]) -> T:
    """`read(session)`, or the value kept for `key` at the setup sequence this transaction sees (see the module
    docstring). A None answer is not kept (it is read again on the next call)."""
    cache: SetupCache | None = session.info.get(CACHE_KEY)
    if cache is None or _writes_setup(session):
        return read(session)
    seq = setup_seq(session)
    if seq is None:
        return read(session)
    found, value = cache.lookup(seq, key)
    if found:
        return value  # type: ignore[no-any-return]
    value = read(session)
    if value is not None:
        cache.keep(seq, key, value)
    return value


def keep_again(session: Session, key: Hashable, value: Any) -> None:
    """Put `value` in place of what `cached` answered for `key` in this transaction (a detail the setup
    sequence does not count has changed, e.g. a token's last use), as old as the value it replaces; nothing
    when none is kept at this transaction's sequence."""
    cache: SetupCache | None = session.info.get(CACHE_KEY)
    seq = setup_seq(session) if cache is not None and not _writes_setup(session) else None
    if cache is not None and seq is not None:
        cache.replace(seq, key, value)


def _writes_setup(session: Session) -> bool:
    """True when this transaction may have changed what the setup sequence counts: it must read its own
    writes (any unflushed row counts, whatever its table)."""
    return bool(session.new or session.deleted or session.dirty) or changes.counted(session, changes.SETUP_COUNTER_ID)


def setup_seq(session: Session) -> int | None:
    """The setup sequence as this transaction sees it, read on the first call of the transaction."""
    transaction = session.get_transaction()
    memo = session.info.get(_SEQ_KEY)
    if memo is not None and memo[0] is transaction and transaction is not None:
        return memo[1]  # type: ignore[no-any-return]
    seq = changes.current(session, changes.SETUP_COUNTER_ID)
    session.info[_SEQ_KEY] = (session.get_transaction(), seq)
    return seq
