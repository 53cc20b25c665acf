"""Many followers of one log file share its reads and its "has the replica ended?" check, and look less often
when there are many of them, so the event loop's work does not grow with every follower."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gpupool.executors import logfiles
from gpupool.executors.logfiles import (
    FOLLOWERS_AT_FULL_PACE,
    MAX_FOLLOW_INTERVAL_S,
    SharedCheck,
    SharedReads,
    follow_pace,
    follow_text,
)

FOLLOWERS = 200


def test_followers_of_one_file_read_each_block_once_and_poll_the_end_once(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"")
    reads: list[int] = []
    original = logfiles._read_block

    def counting_read(path: Path, position: int, size: int) -> bytes:
        reads.append(position)
        return original(path, position, size)

    monkeypatch.setattr(logfiles, "_read_block", counting_read)
    polls: list[int] = []
    ended = asyncio.Event()
    shared = SharedCheck(max_age_s=10.0)

    def finished() -> bool:
        return shared.ask("replica", lambda: polls.append(1) or ended.is_set())

    async def follower() -> str:
        return "".join([chunk async for chunk in follow_text(log, 0, finished, interval_s=0.01,
                                                             finished_every_s=0.01)])

    async def scenario() -> list[str]:
        tasks = [asyncio.create_task(follower()) for _ in range(FOLLOWERS)]
        for n in range(5):
            await asyncio.sleep(0.05)
            with log.open("ab") as handle:
                handle.write(f"line {n}\n".encode())
        await asyncio.sleep(0.05)
        ended.set()
        shared._answers.clear()  # the end is seen at the next look, not after the 10 s of the cache
        return await asyncio.gather(*tasks)

    outputs = asyncio.run(scenario())
    assert outputs == ["".join(f"line {n}\n" for n in range(5))] * FOLLOWERS
    # One read per write at most (followers that looked between two writes share the block), not one each.
    assert len(reads) <= 2 * 5, reads
    assert len(polls) <= 3, len(polls)  # once before the end, once after; not once per follower
    assert not logfiles._FOLLOWERS  # every follower left the count


def test_the_pace_slows_only_past_the_followers_at_full_pace() -> None:
    assert follow_pace(0.25, 1) == 0.25
    assert follow_pace(0.25, FOLLOWERS_AT_FULL_PACE) == 0.25
    assert follow_pace(0.25, 4 * FOLLOWERS_AT_FULL_PACE) == pytest.approx(1.0)
    assert follow_pace(0.25, 100 * FOLLOWERS_AT_FULL_PACE) == MAX_FOLLOW_INTERVAL_S


def test_shared_reads_never_return_more_than_the_file_held_or_a_stale_short_block(tmp_path: Path) -> None:
    log = tmp_path / "output.log"
    log.write_bytes(b"abc")
    reads = SharedReads(capacity=2)
    inode = log.stat().st_ino
    assert reads.block(log, inode, 0, 3) == b"abc"
    log.write_bytes(b"abcdef")  # grown: the cached 3 bytes are read again, with the rest
    assert reads.block(log, inode, 0, 6) == b"abcdef"
    assert reads.block(log, inode, 0, 4) == b"abcd"  # a follower that saw the file shorter gets no more
    reads.block(log, inode, 1, 6)
    reads.block(log, inode, 2, 6)
    assert len(reads._blocks) == 2  # the oldest went


def test_a_shared_check_is_asked_again_after_its_age_and_keeps_a_true_answer() -> None:
    clock = [0.0]
    answers = iter([False, True])
    asked: list[int] = []
    check = SharedCheck(max_age_s=1.0)

    def ask() -> bool:
        return check.ask("r", lambda: asked.append(1) or next(answers), now=lambda: clock[0])

    assert ask() is False
    clock[0] = 0.5
    assert ask() is False and len(asked) == 1
    clock[0] = 1.5
    assert ask() is True and len(asked) == 2
    clock[0] = 100.0
    assert ask() is True and len(asked) == 2
