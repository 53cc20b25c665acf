"""Running readers while writers work, for the store's consistency tests."""

from __future__ import annotations

import threading
from collections.abc import Callable


def read_while_writing(read: Callable[[], None], readers: int, write: Callable[[int], None], writers: int,
                       done: threading.Event) -> None:
    """Start `readers` threads running `read` (which loops until `done` is set) and `writers` threads running
    `write(k)`; when every writer has returned, set `done` and wait for the readers."""
    reading = [threading.Thread(target=read) for _ in range(readers)]
    writing = [threading.Thread(target=write, args=(k,)) for k in range(writers)]
    for thread in [*reading, *writing]:
        thread.start()
    for thread in writing:
        thread.join()
    done.set()
    for thread in reading:
        thread.join()
