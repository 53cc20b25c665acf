"""The whole GPU path with real processes: `gpupool up` on a scripted fake GPU node -> the admin makes card 0
time-sliced -> a share job's real replica sees its GPU environment (device UUID, memory limit, the PyTorch
memory-cap hook imported from PYTHONPATH) -> the fake GPU reports memory for that process (found by its
environment) -> the sampler maps it to the replica through its session -> an over-use event on `gpupool
show`, in `gpupool top` and in /metrics -> restarted with the kill policy, the server stops the replica."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families
from tests.e2e.conftest import StartServer
from tests.support.gpus import a100s, write_description
from tests.support.processes import run_cli, run_json
from tests.support.servers import wait_until

GIB = 1024**3
SAMPLING = {"GPUPOOL_SAMPLE_INTERVAL_S": "0.1", "GPUPOOL_OVERUSE_GRACE_S": "0.3"}
SPEC = """name: notebook
command: |
  python -c "
  import json, os, sys, time
  import sitecustomize
  names = ('CUDA_VISIBLE_DEVICES', 'GPUPOOL_GPU_MEMORY_LIMIT_MIB', 'GPUPOOL_GPU_SHARING_MODE', 'PYTHONPATH')
  print(json.dumps({'env': {n: os.environ.get(n) for n in names}, 'hook': sitecustomize.__file__,
                    'state': sitecustomize.gpupool_state()}), flush=True)
  time.sleep(120)"
env: {E2E_GPU_USE: greedy}
resources: {cpu: 0.5, memory: 512MiB, gpu: {share: 0.25, memory: 10GiB}}
"""


def test_a_share_job_is_given_its_gpu_watched_reported_and_stopped(start_server: StartServer,
                                                                   tmp_path: Path) -> None:
    # 2 GiB from when the process appears, 14 GiB two seconds later: over the 10 GiB the job asks for
    description = write_description(tmp_path, {"node": "e2e", "gpus": [a100s(2, utilization=60)], "processes": [
        {"env": "E2E_GPU_USE=greedy", "memory": [[0, "2GiB"], ["2s", "14GiB"]]}]})
    server = start_server("--gpu-description", str(description), env=SAMPLING)
    env = server.env
    changed = run_cli(["nodes", "set-sharing", "node", "0", "shared"], env).stdout
    assert "GPU 0 of node is now in shared mode" in changed
    uuid = next(g["uuid"] for g in run_json(["nodes", "show", "node"], env)["gpus"]  # type: ignore[index]
                if g["index"] == 0)
    spec = tmp_path / "notebook.yaml"
    spec.write_text(SPEC)
    wid = run_json(["submit", str(spec)], env)["workload"]["id"]  # type: ignore[index]

    # the replica's own view of its GPU environment
    def output() -> str:
        return run_cli(["logs", str(wid)], env, check=False).stdout.strip()

    line = wait_until(output, timeout_s=30, what="the replica's output")
    seen = json.loads(line.splitlines()[0])
    hook_dir = str(server.home / "gpu" / "pythonpath")
    assert seen["env"] == {"CUDA_VISIBLE_DEVICES": uuid, "GPUPOOL_GPU_MEMORY_LIMIT_MIB": "10240",
                           "GPUPOOL_GPU_SHARING_MODE": "shared", "PYTHONPATH": hook_dir}
    assert seen["hook"].startswith(hook_dir + "/sitecustomize.py") and seen["state"]["installed"]

    # the sampler attributes the scripted memory to the replica and reports the over-use
    shown = wait_until(lambda: (out := run_cli(["show", str(wid)], env).stdout) and "over-use" in out and out,
                       timeout_s=30, what="over-use event")
    assert "uses 14336 MiB on GPU 0, more than the 10240 MiB it asked for" in " ".join(shown.split())
    top: Any = run_json(["top"], env)
    (user,) = next(g for g in top if g["index"] == 0)["users"]
    assert (user["workload_id"], user["memory_used_bytes"], user["memory_mib"]) == (wid, 14 * GIB, 10240)
    assert "over" in run_cli(["top", "--once"], {**env, "COLUMNS": "200"}).stdout
    with server.client() as client:
        exported = {(s.name, s.labels.get("workload")): s.value for f in
                    text_string_to_metric_families(client.prometheus_metrics()) for s in f.samples}
    assert exported[("gpupool_gpu_overuse_events_total", str(wid))] == 1
    assert exported[("gpupool_workload_gpu_memory_used_bytes", str(wid))] == 14 * GIB
    assert "no idle allocations" in run_cli(["report", "idle"], env).stdout

    # a restart with the kill policy: the replica keeps running across it, then is stopped for over-use
    server.stop()
    server.extra_env["GPUPOOL_OVERUSE_KILL"] = "true"
    server.start()
    failed = wait_until(lambda: (w := run_json(["show", str(wid)], env))["status"] == "failed" and w,  # type: ignore[index]
                        timeout_s=30, what="killed for over-use")
    assert failed["message"].startswith("GPU memory over-use: replica 0 uses 14336 MiB on GPU 0")
    replica = wait_until(lambda: (r := run_json(["show", str(wid)], env)["replica_list"][0])["state"]  # type: ignore[index]
                         == "stopped" and r, what="replica stopped")
    assert replica["exit_code"] in (143, 137)
