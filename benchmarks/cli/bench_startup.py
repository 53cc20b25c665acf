"""Start-up time of `gpupool` commands: Python's import time (`python -X importtime`), CPU time and wall time.

CPU time (user + system of the command's process) is the figure to compare on a shared machine: wall time
and import time also count the time the process waited for a CPU.

Starts a throw-away server (`gpupool up` on a free port, its own GPUPOOL_HOME), submits one workload so
that `show` and `logs` have something to print, one small sweep for `sweep show` and `sweep best` and a
pipeline for `pipeline runs`, then runs each command (those `--only` names, else all) `--runs` times and
prints a Markdown table of the medians. `--compare DIR` also measures another checkout's `src/` (e.g. an
older commit, exported with `git archive`) with the same Python environment and server, each of its runs
right after one of this checkout's, so that both see the same machine load.

    .venv/bin/python benchmarks/cli/bench_startup.py --runs 7
    .venv/bin/python benchmarks/cli/bench_startup.py --only notebook service pipeline version
    git archive OLD src | tar -x -C /tmp/old && .venv/bin/python benchmarks/cli/bench_startup.py --compare /tmp/old/src
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COMMANDS = [["version"], ["whoami"], ["ls"], ["show", "1"], ["logs", "1"], ["queues"], ["nodes"],
            ["submit", "examples/hello.yaml"], ["top", "--once"], ["plan", "gpus"],
            ["plan", "mig", "A100-40GB", "--sm", "28"], ["sim", "--help"], ["up", "--help"],
            ["sweep", "show", "bench"], ["sweep", "best", "bench"], ["envs", "ls"], ["notebook", "ls"],
            ["service", "ls"], ["pipeline", "runs", "bench"]]
# a sweep of two quick trials, so that `sweep show` and `sweep best` have something to print
SWEEP = """kind: sweep
name: bench
objective: {{metric: loss, direction: minimize}}
search:
  x: {{uniform: [-5, 5]}}
trials: 2
parallel: 2
trial:
  command: {python} -c "import gpupool,sys; gpupool.report(1, loss=float(sys.argv[1])**2)" {{{{params.x}}}}
  resources: {{cpu: 0.5, memory: 128MiB}}
"""
# a pipeline stored without a run, so that `pipeline runs` has one to read
PIPELINE = "kind: pipeline\nname: bench\nsteps:\n  a:\n    command: 'true'\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def import_ms(stderr: str) -> float:
    """Total import time in ms: the sum of the cumulative times of the top-level imports."""
    total_us = 0
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            _, cumulative, name = line.split("|", 2)
            if not name.startswith("  ") and cumulative.strip().isdigit():  # nested ones are inside these
                total_us += int(cumulative)
    return total_us / 1000


Sample = tuple[float, float, float]  # import ms, CPU ms, wall ms


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(args: list[str], env: dict[str, str], strict: bool = True) -> Sample | None:
    """Import time, CPU time and wall time (ms) of one `python -X importtime -m gpupool ARGS`; None when the
    command does not exist (an older checkout) or, unless `strict`, fails (an older client may not read
    this server's answers)."""
    cpu, start = _cpu_s(), time.perf_counter()
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "gpupool", *args], env=env, cwd=REPO,
                            capture_output=True, text=True, check=False)
    wall, cpu = (time.perf_counter() - start) * 1000, (_cpu_s() - cpu) * 1000
    if "No such command" in result.stderr or (result.returncode != 0 and not strict):
        return None
    if result.returncode != 0:
        raise SystemExit(f"gpupool {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return import_ms(result.stderr), cpu, wall


def _median(samples: list[Sample | None]) -> str:
    found = [s for s in samples if s is not None]
    if not found:
        return "- | - | -"
    return " | ".join(f"{statistics.median(s[i] for s in found):.0f}" for i in range(3))


def main() -> None:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per command (the median is reported)")
    parser.add_argument("--compare", type=Path, help="another checkout's src/ directory to measure as well")
    parser.add_argument("--only", nargs="+", metavar="WORD", help="measure only the commands starting with these "
                        "words (e.g. notebook service)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("GPUPOOL_")}
        env.update({"GPUPOOL_HOME": tmp, "GPUPOOL_URL": f"http://127.0.0.1:{port}", "COLUMNS": "200"})
        other = {**env, "PYTHONPATH": str(options.compare.resolve())} if options.compare else None
        # replicas run as this user, so that the sweep's trials can start this checkout's Python
        server_env = {**env, "GPUPOOL_MULTI_USER": "false"}
        server = subprocess.Popen([sys.executable, "-m", "gpupool", "up", "--port", str(port)], env=server_env,
                                  cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _wait_healthy(port)
            subprocess.run([sys.executable, "-m", "gpupool", "submit", "examples/hello.yaml", "--wait"], env=env,
                           cwd=REPO, check=True, capture_output=True)
            _run_sweep(Path(tmp), env)
            header = "| command | imports (ms) | CPU (ms) | wall (ms) |"
            if other is not None:
                header += " imports, compared | CPU, compared | wall, compared |"
            print(header + "\n|---|" + "---:|" * (header.count("|") - 2))
            for args in [c for c in COMMANDS if not options.only or c[0] in options.only]:
                ours: list[Sample | None] = []
                theirs: list[Sample | None] = []
                for _ in range(options.runs):
                    ours.append(run_once(args, env))
                    if other is not None:
                        theirs.append(run_once(args, other, strict=False))
                row = f"| `gpupool {' '.join(args)}` | {_median(ours)} |"
                print(row + (f" {_median(theirs)} |" if other is not None else ""), flush=True)
        finally:
            server.terminate()
            server.wait(30)


def _run_sweep(tmp: Path, env: dict[str, str]) -> None:
    """Submit the benchmark's sweep and wait until it has ended; store its pipeline."""
    spec = tmp / "sweep.yaml"
    spec.write_text(SWEEP.format(python=sys.executable))
    pipeline = tmp / "pipeline.yaml"
    pipeline.write_text(PIPELINE)
    for args in (["sweep", "submit", str(spec)], ["wait", "bench", "--timeout", "300"],
                 ["pipeline", "submit", str(pipeline), "--no-run"]):
        result = subprocess.run([sys.executable, "-m", "gpupool", *args], env=env, cwd=REPO, capture_output=True,
                                text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"gpupool {' '.join(args)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


def _wait_healthy(port: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not start within 60 s")


if __name__ == "__main__":
    main()
