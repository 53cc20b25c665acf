"""A started server has moved its start-up objects out of the garbage collector's reach (they live as long
as the server; full collections would scan them again and again), and gives them back when it stops."""

from __future__ import annotations

import gc
from pathlib import Path

from tests.support.servers import server_settings, start_server


def test_the_start_up_objects_are_frozen_while_the_server_runs_and_released_after(tmp_path: Path) -> None:
    gc.unfreeze()  # whatever an earlier test left: this one counts its own server's objects
    server = start_server(server_settings(tmp_path / "home", f"sqlite:///{tmp_path / 'gpupool.db'}"))
    try:
        frozen = gc.get_freeze_count()
        tracked = len(gc.get_objects())
    finally:
        server.stop()
    assert frozen > 50_000, frozen  # the imports, the app and its workers: hundreds of thousands of objects
    assert tracked < frozen, (tracked, frozen)  # a full collection scans what came after, far fewer
    assert gc.get_freeze_count() == 0
