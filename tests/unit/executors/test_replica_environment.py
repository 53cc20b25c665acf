"""The replica environment: base env, GPU env per allocation, user env validation, and merging."""

from __future__ import annotations

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.nodes import Gpu, MigInstance
from gpupool.domain.resources import SharingMode
from gpupool.executors.environment import (
    DEFAULT_PATH,
    check_user_env,
    default_base_env,
    gpu_env,
    identity_env,
    merge_env,
)
from gpupool.scheduler.types import GpuAssignment

CARDS = (
    Gpu(0, "A100", 81920, uuid="GPU-aaaa"),
    Gpu(1, "A100", 81920, uuid="GPU-bbbb"),
    Gpu(2, "A100", 81920, mode=SharingMode.SHARED),  # no UUID known: the index stands in
    Gpu(3, "A100", 81920, mode=SharingMode.MIG, mig_instances=(MigInstance("1g.10gb", "MIG-cccc"),)),
)


def test_base_env_keeps_only_the_listed_variables() -> None:
    server = {"PATH": "/opt/bin:/usr/bin", "HOME": "/home/ann", "USER": "ann", "SECRET_TOKEN": "x",
              "GPUPOOL_DATABASE_URL": "postgresql://...", "LANG": ""}
    assert default_base_env(server) == {"PATH": "/opt/bin:/usr/bin", "HOME": "/home/ann", "USER": "ann",
                                        "LANG": "C.UTF-8"}


def test_base_env_puts_the_interpreter_first_and_has_a_default_path() -> None:
    assert default_base_env({"PATH": "/usr/bin"}, "/venv/bin")["PATH"] == "/venv/bin:/usr/bin"
    assert default_base_env({"PATH": "/venv/bin:/usr/bin"}, "/venv/bin")["PATH"] == "/venv/bin:/usr/bin"
    assert default_base_env({})["PATH"] == DEFAULT_PATH


def test_whole_gpus_are_listed_by_uuid_in_assignment_order() -> None:
    env = gpu_env([GpuAssignment(1, 1000), GpuAssignment(0, 1000)], CARDS)
    assert env == {"CUDA_VISIBLE_DEVICES": "GPU-bbbb,GPU-aaaa", "GPUPOOL_GPU_INDICES": "1,0"}


def test_a_share_adds_its_milli_and_memory_limit() -> None:
    env = gpu_env([GpuAssignment(2, 250, memory_mib=10240)], CARDS)
    assert env == {"CUDA_VISIBLE_DEVICES": "2", "GPUPOOL_GPU_INDICES": "2", "GPUPOOL_GPU_MILLI": "250",
                   "GPUPOOL_GPU_MEMORY_LIMIT_MIB": "10240"}


def test_a_share_sized_by_compute_only_has_no_memory_limit() -> None:
    assert "GPUPOOL_GPU_MEMORY_LIMIT_MIB" not in gpu_env([GpuAssignment(2, 500)], CARDS)


def test_a_mig_instance_is_listed_by_its_uuid() -> None:
    env = gpu_env([GpuAssignment(3, 143, mig_instance=0)], CARDS)
    assert env == {"CUDA_VISIBLE_DEVICES": "MIG-cccc", "GPUPOOL_GPU_INDICES": "3"}


def test_no_gpu_hides_every_gpu() -> None:
    assert gpu_env([], CARDS) == {"CUDA_VISIBLE_DEVICES": "", "GPUPOOL_GPU_INDICES": ""}


def test_simulated_gpus_are_not_real_devices() -> None:
    simulated = (Gpu(0, "H100", 81920, simulated=True),)
    assert gpu_env([GpuAssignment(0, 1000)], simulated) == {
        "CUDA_VISIBLE_DEVICES": "", "GPUPOOL_GPU_INDICES": "0", "GPUPOOL_GPU_SIMULATED": "1"}


def test_an_assignment_to_a_card_the_node_lacks_is_an_error() -> None:
    with pytest.raises(ValidationError, match="GPU 9 is not a card of this node"):
        gpu_env([GpuAssignment(9, 1000)], CARDS)


def test_identity_env() -> None:
    assert identity_env("wl-7", 3, "worker", attempt=1, node="n1") == {
        "GPUPOOL_WORKLOAD_ID": "wl-7", "GPUPOOL_REPLICA": "3", "GPUPOOL_ROLE": "worker", "GPUPOOL_ATTEMPT": "1",
        "GPUPOOL_NODE": "n1"}


def test_user_env_is_checked_and_stringified() -> None:
    assert check_user_env({"NCCL_DEBUG": "WARN", "EPOCHS": 10, "LR": 0.5}) == {
        "NCCL_DEBUG": "WARN", "EPOCHS": "10", "LR": "0.5"}


@pytest.mark.parametrize(("env", "message"), [
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, "env.CUDA_VISIBLE_DEVICES: gpupool sets this variable itself"),
    ({"GPUPOOL_USER_DIR": "/"}, "gpupool sets this variable itself"),
    ({"1BAD": "x"}, "a variable name is letters"),
    ({"A-B": "x"}, "a variable name is letters"),
    ({"FLAG": True}, "must be a string or a number"),
    ({"LIST": [1]}, "must be a string or a number"),
    ({"NUL": "a\0b"}, "no NUL byte"),
])
def test_bad_user_env_is_refused_with_a_reason(env: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        check_user_env(env)


def test_user_env_must_be_a_mapping() -> None:
    with pytest.raises(ValidationError, match="must be a mapping"):
        check_user_env(["A=1"])  # type: ignore[arg-type]


def test_injected_variables_win_over_the_users() -> None:
    merged = merge_env({"A": "user", "B": "user"}, {"B": "gpu"}, {"C": "rendezvous"})
    assert merged == {"A": "user", "B": "gpu", "C": "rendezvous"}
