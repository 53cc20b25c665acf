"""Reading replica log files: all lines, the last N lines, and following a file while its writer runs.

Lines are yielded without their trailing newline, decoded as UTF-8 (undecodable bytes replaced). A
missing file reads as empty.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_BLOCK = 64 * 1024


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def file_size(path: Path) -> int:
    """Size of `path` in bytes; 0 when it does not exist."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_lines(path: Path, start: int = 0, end: int | None = None) -> Iterator[str]:
    """Lines of `path` from byte offset `start` up to `end` (default: the size now). A last line without
    a newline is yielded too."""
    stop = file_size(path) if end is None else end
    try:
        handle = path.open("rb")
    except OSError:
        return
    with handle:
        handle.seek(start)
        remaining = stop - start
        pending = b""
        while remaining > 0:
            chunk = handle.read(min(_BLOCK, remaining))
            if not chunk:
                break
            remaining -= len(chunk)
            *complete, pending = (pending + chunk).split(b"\n")
            yield from (_decode(line) for line in complete)
        if pending:
            yield _decode(pending)


def tail_start(path: Path, count: int, end: int) -> int:
    """Byte offset where the last `count` lines before `end` begin (a final line without newline counts)."""
    if count <= 0:
        return end
    try:
        handle = path.open("rb")
    except OSError:
        return end
    with handle:
        position = end
        newlines = 0
        handle.seek(max(0, end - 1))
        skip_last = handle.read(1) == b"\n"  # the newline that ends the last line opens no new line
        while position > 0:
            size = min(_BLOCK, position)
            handle.seek(position - size)
            block = handle.read(size)
            if skip_last and position == end:
                block = block[:-1]
            for index in range(len(block) - 1, -1, -1):
                if block[index] == 0x0A:
                    newlines += 1
                    if newlines == count:
                        return position - size + index + 1
            position -= size
    return 0


def follow_lines(path: Path, start: int, finished: Callable[[], bool], interval_s: float = 0.1,
                 sleep: Callable[[float], None] = time.sleep) -> Iterator[str]:
    """Lines written to `path` from offset `start` on, as they arrive; blocks between lines. Ends once
    `finished()` is true and everything written up to then has been yielded (a partial last line too)."""
    position = start
    pending = b""
    while True:
        done = finished()  # asked before reading, so output written before the end is never missed
        size = file_size(path)
        if size < position:  # truncated or replaced: start again from its beginning
            position, pending = 0, b""
        if size > position:
            with path.open("rb") as handle:
                handle.seek(position)
                chunk = handle.read(size - position)
            position += len(chunk)
            *complete, pending = (pending + chunk).split(b"\n")
            yield from (_decode(line) for line in complete)
            continue
        if done:
            if pending:
                yield _decode(pending)
            return
        sleep(interval_s)


def open_for_append(path: Path) -> int:
    """Open (creating) `path` for appending and return the raw file descriptor (for a child's stdout)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
