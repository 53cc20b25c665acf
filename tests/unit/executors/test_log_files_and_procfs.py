"""Log file reading (all, tail, follow) and process identity from /proc."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from gpupool.executors import logfiles, procfs


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "replica-0.log"
    path.write_bytes(b"one\ntwo\nthree\n")
    return path


def test_read_lines_strips_newlines_and_keeps_a_partial_last_line(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"a\n\nb\xffc\npartial")
    assert list(logfiles.read_lines(path)) == ["a", "", "b\ufffdc", "partial"]


def test_missing_file_reads_as_empty(tmp_path: Path) -> None:
    assert list(logfiles.read_lines(tmp_path / "none")) == []
    assert logfiles.tail_start(tmp_path / "none", 3, 0) == 0


@pytest.mark.parametrize(("count", "expected"), [
    (0, []), (1, ["three"]), (2, ["two", "three"]), (3, ["one", "two", "three"]), (10, ["one", "two", "three"]),
])
def test_tail(log: Path, count: int, expected: list[str]) -> None:
    end = logfiles.file_size(log)
    assert list(logfiles.read_lines(log, logfiles.tail_start(log, count, end), end)) == expected


def test_tail_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_bytes(b"one\ntwo\nthree")
    end = logfiles.file_size(path)
    assert list(logfiles.read_lines(path, logfiles.tail_start(path, 2, end), end)) == ["two", "three"]


def test_tail_across_read_blocks(tmp_path: Path) -> None:
    path = tmp_path / "log"
    lines = [f"line {i:06d} " + "x" * 100 for i in range(3000)]  # ~330 KB: several 64 KiB blocks
    path.write_text("\n".join(lines) + "\n")
    end = logfiles.file_size(path)
    assert list(logfiles.read_lines(path, logfiles.tail_start(path, 1500, end), end)) == lines[1500:]


def test_follow_yields_new_lines_until_finished(log: Path) -> None:
    writes = [b"four\nfi", b"ve\n", b"six"]

    def finished() -> bool:  # the replica ends right after its last write
        return not writes

    def sleep(_: float) -> None:  # instead of waiting, the "replica" writes its next chunk
        with log.open("ab") as out:
            out.write(writes.pop(0))

    start = logfiles.file_size(log)
    assert list(logfiles.follow_lines(log, start, finished, sleep=sleep)) == ["four", "five", "six"]


def test_identity_of_a_live_process_and_of_a_finished_one() -> None:
    me = procfs.identify(os.getpid())
    assert me is not None and procfs.is_running(me)
    child = subprocess.Popen(["true"])
    identity = procfs.identify(child.pid)
    child.wait()
    assert identity is not None and not procfs.is_running(identity)
    assert procfs.identify(child.pid) is None or procfs.identify(child.pid) != identity


def test_a_zombie_is_not_running() -> None:
    child = subprocess.Popen(["true"])
    identity = procfs.identify(child.pid)
    assert identity is not None
    # Wait for the exit without reaping: the process stays a zombie until child.wait().
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
    assert procfs.read_stat(child.pid) is not None  # still in /proc ...
    assert not procfs.is_running(identity)  # ... but ended
    child.wait()


def test_signal_group_refuses_process_group_one_and_zero() -> None:
    for pgid in (0, 1):
        with pytest.raises(ValueError, match="refusing"):
            procfs.signal_group(pgid, 0)
    assert procfs.group_exists(os.getpgid(os.getpid()))
