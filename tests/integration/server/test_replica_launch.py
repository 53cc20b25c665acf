"""What the server hands the executor for each replica: command, environment, directories, attempts."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support.servers import TestServer, wait_until

from gpupool.client.http import Client
from gpupool.executors.base import ReplicaLaunch
from gpupool.executors.fake import FakeExecutor


def launches_of(fake: FakeExecutor, wid: int, count: int) -> list[ReplicaLaunch]:
    wait_until(lambda: len([x for x in fake.launches if x.workload_id == str(wid)]) >= count, what="launches")
    return sorted((x for x in fake.launches if x.workload_id == str(wid)), key=lambda x: (x.attempt, x.replica))


def test_torch_gang_gets_rendezvous_identity_storage_and_gpus(admin: Client, fake: FakeExecutor,
                                                              server: TestServer) -> None:
    wid = admin.submit("name: ddp\nreplicas: 2\ndistributed: torch\ncommand: python train.py\nenv: {A: '1'}\n"
                       "resources: {cpu: 1, memory: 1GiB, gpu: 1}\n").workload.id
    launches = launches_of(fake, wid, 2)
    envs = [dict(x.env) for x in launches]
    assert [e["RANK"] for e in envs] == ["0", "1"] and {e["WORLD_SIZE"] for e in envs} == {"2"}
    assert envs[0]["MASTER_PORT"] == envs[1]["MASTER_PORT"] and envs[0]["MASTER_ADDR"] == "127.0.0.1"
    assert [e["GPUPOOL_REPLICA"] for e in envs] == ["0", "1"] and envs[0]["GPUPOOL_WORKLOAD_ID"] == str(wid)
    assert all(e["A"] == "1" and e["GPUPOOL_ATTEMPT"] == "0" for e in envs)
    # simulated cards: no CUDA device is visible, the indices say which cards the scheduler gave
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["", ""] and envs[0]["GPUPOOL_GPU_SIMULATED"] == "1"
    assert envs[0]["GPUPOOL_GPU_INDICES"] != envs[1]["GPUPOOL_GPU_INDICES"]
    storage = server.settings.home / "storage"
    assert envs[0]["GPUPOOL_USER_DIR"] == str(storage / "users" / "admin")
    assert envs[0]["GPUPOOL_PROJECT_DIR"] == str(storage / "projects" / "default")
    assert launches[0].cwd == storage / "users" / "admin" and launches[0].cwd.is_dir()
    assert launches[0].command == "python train.py" and launches[0].log_dir == server.settings.logs_dir / str(wid)


def test_tensorflow_roles_get_one_tf_config_each(admin: Client, fake: FakeExecutor) -> None:
    wid = admin.submit("name: tf\ndistributed: tensorflow\ncommand: python t.py\nresources: {cpu: 0.5}\n"
                       "roles: {chief: {}, worker: {replicas: 2}, ps: {replicas: 1, command: python ps.py}}\n"
                       ).workload.id
    launches = launches_of(fake, wid, 4)
    configs = [json.loads(x.env["TF_CONFIG"]) for x in launches]
    assert [(c["task"]["type"], c["task"]["index"]) for c in configs] == [("chief", 0), ("worker", 0),
                                                                          ("worker", 1), ("ps", 0)]
    cluster = configs[0]["cluster"]
    assert {k: len(v) for k, v in cluster.items()} == {"chief": 1, "worker": 2, "ps": 1}
    assert len({e for v in cluster.values() for e in v}) == 4 and all(c["cluster"] == cluster for c in configs)
    assert [x.command for x in launches] == ["python t.py"] * 3 + ["python ps.py"]
    assert [x.role for x in launches] == ["chief", "worker", "worker", "ps"]


def test_workdir_and_shares(admin: Client, fake: FakeExecutor, tmp_path: Path) -> None:
    wid = admin.submit(f"command: x\nworkdir: {tmp_path}\nresources: {{gpu: 0.25}}\n").workload.id
    (launch,) = launches_of(fake, wid, 1)
    assert launch.cwd == tmp_path
    assert launch.env["GPUPOOL_GPU_MILLI"] == "250" and launch.env["GPUPOOL_GPU_SHARING_MODE"] == "shared"
    cpu_only = admin.submit("command: x\n").workload.id
    (launch,) = launches_of(fake, cpu_only, 1)
    assert launch.env["CUDA_VISIBLE_DEVICES"] == "" and "GPUPOOL_GPU_INDICES" not in launch.env
