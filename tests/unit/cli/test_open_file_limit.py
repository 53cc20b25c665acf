"""`gpupool up` raises its soft limit of open files (one per connection: 1,000 `logs -f` followers need about
1,100) to the hard limit, so a distribution's default soft limit of 1,024 does not refuse connections."""

from __future__ import annotations

import resource
import subprocess
import sys

PROBE = "from gpupool.cli.server import raise_open_file_limit; print(raise_open_file_limit({wanted}))"


def _run_with_limits(soft: int, hard: int, wanted: int = 65_536) -> tuple[int, int]:
    """Run the raise in a child started with these limits; (what it returned, the soft limit it then has)."""
    code = PROBE.format(wanted=wanted) + "; import resource; print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))).stdout.split()
    return int(out[0]), int(out[1])


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    hard = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 4096)
    assert _run_with_limits(256, hard) == (hard, hard)


def test_it_stops_at_the_wanted_number_and_never_lowers() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard >= 2048, "the test needs a hard limit of at least 2,048"
    assert _run_with_limits(256, hard, wanted=1500) == (1500, 1500)
    assert _run_with_limits(2048, hard, wanted=1500) == (2048, 2048)
