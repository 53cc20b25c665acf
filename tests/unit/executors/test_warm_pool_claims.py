"""The warm pool's bookkeeping with real processes standing in for parked interpreters (`sleep`): a slot is
claimed once however many starts race for it, a dead slot is never handed out, a claim survives for the
start that resumes it, and fill keeps K live unclaimed slots per Python."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gpupool.executors import procfs
from gpupool.executors.warm_pool import CLAIM_FILE, SLOT_FILE, WarmPool, python_key

PYTHON = "/opt/env/bin/python"


@pytest.fixture
def sleepers() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def make_pool(tmp: Path, sleepers: list[subprocess.Popen[bytes]], size: int = 1,
              pythons: tuple[str, ...] = (PYTHON,)) -> WarmPool:
    def start_slot(slot: Path, argv: list[str]) -> dict[str, Any]:
        process = subprocess.Popen(["sleep", "60"])
        sleepers.append(process)
        identity = procfs.identify(process.pid)
        assert identity is not None and argv[-2] == str(slot)
        Path(argv[-1]).write_text(slot.name)  # what the parked process writes once its imports are done
        return {"pid": process.pid, "start_time": identity.start_time, "boot_id": procfs.boot_id()}

    return WarmPool(tmp, size, lambda: pythons, start_slot)


def replica_dir(tmp: Path, name: str) -> Path:
    path = tmp / "replicas" / name
    path.mkdir(parents=True)
    return path


def test_racing_starts_claim_each_slot_once(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    pool = make_pool(tmp_path, sleepers, size=3)
    assert pool.fill() == 3 and pool.fill() == 0
    claimed: list[Path | None] = []
    barrier = threading.Barrier(8)

    def start(number: int) -> None:
        directory = replica_dir(tmp_path, f"r{number}")
        barrier.wait()
        claimed.append(pool.claim(PYTHON, directory))

    threads = [threading.Thread(target=start, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    slots = [c for c in claimed if c is not None]
    assert len(slots) == 3 and len(set(slots)) == 3 and claimed.count(None) == 5
    assert pool.claim(PYTHON, replica_dir(tmp_path, "late")) is None
    assert pool.claim("/other/python", replica_dir(tmp_path, "other")) is None  # slots are per Python


def test_a_dead_slot_is_skipped_and_a_claim_resumes(tmp_path: Path, sleepers: list[subprocess.Popen[bytes]]) -> None:
    pool = make_pool(tmp_path, sleepers, size=2)
    pool.fill()
    sleepers[0].kill()
    sleepers[0].wait()
    first = replica_dir(tmp_path, "a")
    slot = pool.claim(PYTHON, first)
    assert slot is not None and int(pool.slot_handle(slot)["pid"]) == sleepers[1].pid  # type: ignore[index]
    assert pool.claimed_slot(first) == slot  # a start interrupted after its claim finds it again
    assert pool.claim(PYTHON, replica_dir(tmp_path, "b")) is None  # the dead one was dropped, not handed out
    sleepers[1].kill()
    sleepers[1].wait()
    assert pool.claimed_slot(first) is None and not (first / CLAIM_FILE).exists()  # died: the start goes cold


def test_fill_replaces_dead_and_claimed_slots_per_python(tmp_path: Path,
                                                         sleepers: list[subprocess.Popen[bytes]]) -> None:
    pool = make_pool(tmp_path, sleepers, size=2, pythons=(PYTHON, "/opt/other/bin/python"))
    assert pool.fill() == 4
    for python in (PYTHON, "/opt/other/bin/python"):
        assert len(list((tmp_path / "warm" / "ready" / python_key(python)).iterdir())) == 2
    slot = pool.claim(PYTHON, replica_dir(tmp_path, "a"))
    assert slot is not None
    (slot / "assign.json").write_text("{}")  # a notebook's now
    sleepers[1].kill()
    sleepers[1].wait()
    assert pool.fill() >= 1  # the claimed one is replaced; a dead one too once it is over 5 s old
    assert slot.exists() and (slot / SLOT_FILE).exists()  # a claimed slot belongs to its replica: kept
    pool.close()
    assert pool.fill() == 0  # a closed pool starts nothing


def test_an_assigned_slot_stays_its_replicas_after_it_ended(tmp_path: Path,
                                                            sleepers: list[subprocess.Popen[bytes]]) -> None:
    pool = make_pool(tmp_path, sleepers)
    pool.fill()
    replica = replica_dir(tmp_path, "a")
    slot = pool.claim(PYTHON, replica)
    assert slot is not None
    (slot / "assign.json").write_text("{}")
    sleepers[0].kill()
    sleepers[0].wait()
    assert pool.claimed_slot(replica) == slot  # a resumed start adopts the run that ended, never starts a second
