"""Summarise a py-spy `--format raw` recording (collapsed stacks, one `frames count` per line) of the server.

    python benchmarks/control_plane/profile_top.py PROFILE.txt [--top 25] [--match gpupool/]

Prints, over all samples where a thread was busy (py-spy `--nonblocking` without `--idle` records only
those): the share of each thread (by name, numbers stripped), then the functions with the largest
inclusive share (a function counts once per sample however deep it recurses), and the largest self share.
Shares are of all busy samples of all threads, so on a server bound to one core they read as "of that core".
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

THREAD = re.compile(r"^thread \(\d+\): ?")
WORKER_NUMBER = re.compile(r"[-_ ]?\d+(?:_\d+)?\b")  # "AnyIO worker thread 12" and friends -> one name


def read_stacks(path: Path) -> list[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, sample count) per line of a raw py-spy profile."""
    stacks = []
    for line in path.read_text().splitlines():
        head, _, count = line.rpartition(" ")
        if not head or not count.isdigit():
            continue
        frames = head.split(";")
        thread = THREAD.sub("", frames[0]) if frames[0].startswith("thread") else "?"
        stacks.append((WORKER_NUMBER.sub("", thread).strip() or "main", frames[1:], int(count)))
    return stacks


def _short(frame: str) -> str:
    """`func (path/to/module.py:123)` -> `func (module.py)`: one entry per function, not per line."""
    name, _, where = frame.partition(" (")
    file = where.split(":")[0].rsplit("/", 1)[-1] if where else ""
    return f"{name} ({file})" if file else name


def summarise(stacks: list[tuple[str, list[str], int]], top: int, match: str = "") -> str:
    """The three tables as text (markdown); the inclusive one only of frames whose text contains `match`."""
    total = sum(c for _, _, c in stacks) or 1
    threads: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    for thread, frames, count in stacks:
        threads[thread] += count
        for name in {_short(f) for f in frames if match in f}:
            inclusive[name] += count
        if frames:
            own[_short(frames[-1])] += count
    lines = [f"busy samples: {total}", "", "| thread | share |", "|---|---|"]
    lines += [f"| {name} | {100 * c / total:.1f} % |" for name, c in threads.most_common(top)]
    lines += ["", "| function (inclusive) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * c / total:.1f} % |" for name, c in inclusive.most_common(top)]
    lines += ["", "| function (self) | share |", "|---|---|"]
    lines += [f"| `{name}` | {100 * c / total:.1f} % |" for name, c in own.most_common(top)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--match", default="", help="inclusive table: only frames containing this, e.g. gpupool/")
    args = parser.parse_args()
    print(summarise(read_stacks(args.profile), args.top, args.match))


if __name__ == "__main__":
    main()
