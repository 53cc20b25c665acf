"""Reading replica log files: all lines, the last N lines, and following a file while its writer runs.

Lines are yielded without their trailing newline, decoded as UTF-8 (undecodable bytes replaced). A
missing file reads as empty.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

_BLOCK = 64 * 1024
# The longest line returned: 64 KiB is far beyond any progress bar or JSON log record, and small enough
# that one pathological line (a 300 MB dump without newlines) costs a reader a few blocks, not the file.
MAX_LINE_BYTES = 64 * 1024


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def cut_marker(cut: int) -> str:
    """What replaces the end of a line longer than MAX_LINE_BYTES."""
    return f" [... {cut} more bytes of this line not shown]"


class _LineSplitter:
    """Splits a byte stream into lines, keeping at most MAX_LINE_BYTES of a line (the rest is counted, not
    stored): linear in the input, however long a line is."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max_line
        self.parts: list[bytes] = []
        self.kept = 0
        self.cut = 0

    def _keep(self, piece: bytes) -> None:
        room = self.max_line - self.kept
        if len(piece) > room:
            self.cut += len(piece) - max(room, 0)
            piece = piece[:max(room, 0)]
        if piece:
            self.parts.append(piece)
            self.kept += len(piece)

    def _line(self) -> str:
        text = _decode(b"".join(self.parts)) + (cut_marker(self.cut) if self.cut else "")
        self.parts, self.kept, self.cut = [], 0, 0
        return text

    def feed(self, chunk: bytes) -> list[str]:
        """The lines `chunk` completes (without their newlines)."""
        lines = []
        start = 0
        while (newline := chunk.find(b"\n", start)) >= 0:
            self._keep(chunk[start:newline])
            lines.append(self._line())
            start = newline + 1
        self._keep(chunk[start:])
        return lines

    def flush(self) -> list[str]:
        """The partial last line, if any."""
        return [self._line()] if self.parts or self.cut else []


def file_size(path: Path) -> int:
    """Size of `path` in bytes; 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[str]:
    """Lines of `path` from byte offset `start` up to `end` (default: the size now). A last line without
    a newline is yielded too; a line longer than MAX_LINE_BYTES is cut (see `cut_marker`)."""
    for lines in read_blocks(path, start, end):
        yield from lines


def as_text(blocks: Iterator[list[str]]) -> Iterator[str]:
    """Each non-empty block of lines as one string, every line ending with a newline (what a response
    streams: one write per block read, not one per line)."""
    for lines in blocks:
        if lines:
            yield "\n".join(lines) + "\n"


def read_blocks(path: Path, start: int = 0, end: int | None = None) -> Iterator[list[str]]:
    """`read_lines`, as the list of lines each block read completes."""
    stop = file_size(path) if end is None else end
    try:
        handle = path.open("rb")
    except OSError:
        return
    with handle:
        handle.seek(start)
        remaining = stop - start
        splitter = _LineSplitter()
        while remaining > 0:
            chunk = handle.read(min(_BLOCK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            yield splitter.feed(chunk)
        yield splitter.flush()


def tail_start(path: Path, count: int, end: int) -> int:
    """Byte offset where the last `count` lines before `end` begin (a final line without newline counts).
    Reads backwards from `end` in blocks, so its cost is that of the lines wanted, not of the file."""
    if count <= 0:
        return end
    try:
        handle = path.open("rb")
    except OSError:
        return end
    with handle:
        handle.seek(max(0, end - 1))
        last = end - 1 if handle.read(1) == b"\n" else end  # the newline ending the last line opens none
        position = last
        newlines = 0
        while position > 0:
            size = min(_BLOCK, position)
            handle.seek(position - size)
            block = handle.read(size)
            index = len(block)
            while (index := block.rfind(b"\n", 0, index)) >= 0:
                newlines += 1
                if newlines == count:
                    return position - size + index + 1
            position -= size
    return 0


def follow_lines(path: Path, start: int, finished: Callable[[], bool], interval_s: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Lines written to `path` from offset `start` on, as they arrive; blocks between lines. Ends once
    `finished()` is true and everything written up to then has been yielded (a partial last line too).
    Reads at most one block at a time; long lines are cut as in `read_lines`."""
    for lines in follow_blocks(path, start, finished, interval_s, sleep):
        yield from lines


def follow_blocks(path: Path, start: int, finished: Callable[[], bool], interval_s: float = 0.1,
                  sleep: Callable[[float], None] = time.sleep) -> Iterator[list[str]]:
    """`follow_lines`, as the list of lines each block read completes."""
    position = start
    splitter = _LineSplitter()
    while True:
        done = finished()  # asked before reading, so output written before the end is never missed
        size = file_size(path)
        if size < position:  # truncated or replaced: start again from its beginning
            position, splitter = 0, _LineSplitter()
        if size > position:
            chunk = _read_block(path, position, size)
            position += len(chunk)
            yield splitter.feed(chunk)
            continue
        if done:
            yield splitter.flush()
            return
        sleep(interval_s)


def _read_block(path: Path, position: int, size: int) -> bytes:
    """At most one block (64 KiB) of `path` from `position`, the file being `size` bytes long."""
    with path.open("rb") as handle:
        handle.seek(position)
        return handle.read(min(_BLOCK, size - position))


async def follow_text(path: Path, start: int, finished: Callable[[], bool], interval_s: float = 0.25,
                      finished_every_s: float = 1.0) -> AsyncIterator[str]:
    """`follow_blocks` for an event loop, as text (see `as_text`): waits with asyncio.sleep, never in a
    thread, so a thousand followers cost a thousand small coroutines, not a thousand worker threads. It
    stats the file every `interval_s` (0.25 s: fast enough to read along) and asks `finished()` (which
    polls the replica) at most every `finished_every_s` (1 s: the end of a replica shows within a second).
    Reads are one block (64 KiB) at a time, done inline, and shared by the followers of the same file at
    the same offset (`SharedReads`); with many followers each one looks less often (`follow_pace`), so the
    event loop's work stays bounded however many follow."""
    position = start
    splitter = _LineSplitter()
    loop = asyncio.get_running_loop()
    checked_at = -finished_every_s
    token = object()
    _FOLLOWERS.add(token)
    try:
        while True:
            now = loop.time()
            done = False
            if now - checked_at >= finished_every_s:
                done, checked_at = finished(), now  # asked before reading, so no output written before is missed
            size, inode = _stat(path)
            if size < position:
                position, splitter = 0, _LineSplitter()
            if size > position:
                chunk = SHARED_READS.block(path, inode, position, size)
                position += len(chunk)
                lines = splitter.feed(chunk)
                if lines:
                    yield "\n".join(lines) + "\n"
                continue
            if done:
                lines = splitter.flush()
                if lines:
                    yield "\n".join(lines) + "\n"
                return
            await asyncio.sleep(follow_pace(interval_s, len(_FOLLOWERS)))
    finally:
        _FOLLOWERS.discard(token)


# Followers of this process (`follow_text` coroutines running): a set, whose add and discard are atomic.
_FOLLOWERS: set[object] = set()
# How many followers may look at the base interval (0.25 s): 250 x 4 = 1,000 looks a second. Measured with
# 1,000 followers of one replica at 4 looks a second each, the event loop spent about 0.6 of a core on
# them (one socket write and one stat per look), and the API's p99 grew about tenfold on a loaded 2-CPU
# machine; past this many followers each looks less often, so the total stays near 1,000 a second.
FOLLOWERS_AT_FULL_PACE = 250
MAX_FOLLOW_INTERVAL_S = 2.0  # the slowest pace: a line still shows within 2 s with 2,000 followers or more


def follow_pace(interval_s: float, followers: int) -> float:
    """Seconds a follower waits between two looks at its file: `interval_s` with up to
    FOLLOWERS_AT_FULL_PACE followers in the process, longer in proportion beyond, at most
    MAX_FOLLOW_INTERVAL_S (and never less than `interval_s`)."""
    scaled = interval_s * followers / FOLLOWERS_AT_FULL_PACE
    return max(interval_s, min(scaled, MAX_FOLLOW_INTERVAL_S))


def _stat(path: Path) -> tuple[int, int]:
    """(size, inode) of `path`; (0, 0) when it does not exist."""
    try:
        result = path.stat()
    except OSError:
        return 0, 0
    return result.st_size, result.st_ino


class SharedReads:
    """The blocks last read from log files, by (path, inode, offset): followers of the same file at the same
    offset (a thousand `logs -f` of one replica) read it once, not once each. A log file only grows (or is
    replaced, which changes its inode), so the bytes at an offset never change; a cached block shorter than
    what the file now holds there is read again. At most `capacity` blocks are kept (the oldest go first)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._blocks: dict[tuple[str, int, int], bytes] = {}

    def block(self, path: Path, inode: int, position: int, size: int) -> bytes:
        """At most one block of `path` from `position`, the file being `size` bytes long."""
        key = (str(path), inode, position)
        cached = self._blocks.get(key)
        if cached is not None and len(cached) >= min(_BLOCK, size - position):
            return cached[:size - position]
        chunk = _read_block(path, position, size)
        if len(self._blocks) >= self.capacity:
            self._blocks.pop(next(iter(self._blocks)), None)
        self._blocks[key] = chunk
        return chunk


# 64 blocks (4 MiB at most): room for the followers of many replicas at once; a block evicted early is only
# read again.
SHARED_READS = SharedReads(capacity=64)


class SharedCheck:
    """Answers of a slow check (has a replica ended?) shared by the callers that ask about the same key
    within `max_age_s`: a thousand followers of one replica poll it once a second, not a thousand times.
    A true answer is kept for good (an ended replica stays ended); at most `capacity` keys are kept."""

    def __init__(self, max_age_s: float = 1.0, capacity: int = 4096) -> None:
        self.max_age_s = max_age_s
        self.capacity = capacity
        self._answers: dict[str, tuple[float, bool]] = {}

    def ask(self, key: str, check: Callable[[], bool], now: Callable[[], float] = time.monotonic) -> bool:
        """`check()`, or its answer for `key` if one was given less than `max_age_s` ago (or was true)."""
        at = now()
        known = self._answers.get(key)
        if known is not None and (known[1] or at - known[0] < self.max_age_s):
            return known[1]
        answer = check()
        if len(self._answers) >= self.capacity:
            self._answers.pop(next(iter(self._answers)), None)
        self._answers[key] = (at, answer)
        return answer


def open_for_append(path: Path) -> int:
    """Open (creating) `path` for appending and return the raw file descriptor (for a child's stdout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
