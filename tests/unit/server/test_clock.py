"""The server's clock reads as wall time but never steps with it."""

from __future__ import annotations

from gpupool.server.clock import SteadyClock


class Dial:
    """A hand-set time source."""

    def __init__(self, value: float) -> None:
        self.value = value

    def __call__(self) -> float:
        return self.value


def test_a_wall_clock_step_does_not_move_the_servers_clock() -> None:
    wall, monotonic = Dial(1_700_000_000.0), Dial(50.0)
    clock = SteadyClock(wall, monotonic)
    assert clock() == 1_700_000_000.0  # wall time at start
    monotonic.value += 30  # 30 s pass ...
    wall.value += 30 + 3600  # ... and NTP steps the wall clock an hour forward
    assert clock() == 1_700_000_030.0  # a job started at start has run 30 s, not 3630 s
    wall.value -= 7200  # and back
    monotonic.value += 10
    assert clock() == 1_700_000_040.0
