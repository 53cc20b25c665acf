"""Fake GPU memory for real processes found by their environment: which process of a replica counts, on
which card, from when, and until when."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pytest
import yaml

from gpupool.domain.errors import ValidationError
from gpupool.domain.specs import parse_spec
from gpupool.gpu.fake import FakeBackend, load_description, read_description
from gpupool.gpu.fake_processes import SeenProcess, scan_proc

A100 = "NVIDIA A100-SXM4-80GB"
GIB = 1024**3


class Machine:
    """The processes an injected scan sees; tests change them between samples."""

    def __init__(self) -> None:
        self.processes: list[SeenProcess] = []

    def __call__(self) -> Iterable[SeenProcess]:
        return list(self.processes)


def backend(machine: Machine, processes: list[dict[str, object]], **extra: object) -> FakeBackend:
    description = {"node": "n", "gpus": [{"model": A100, "memory": "80GiB", "count": 2},
                                         {"model": A100, "memory": "80GiB", "mig": ["3g.40gb", "3g.40gb"]}],
                   "processes": processes, **extra}
    return FakeBackend(description, epoch=0.0, scan=machine)


def usage(fake: FakeBackend, t: float) -> dict[int, tuple[int, int | None, str | None]]:
    return {p.pid: (p.gpu_index, p.memory_bytes, p.mig_uuid) for p in fake.sample(t).processes}


def test_one_process_per_session_the_program_not_its_shell_or_supervisor() -> None:
    machine = Machine()
    fake = backend(machine, [{"env": "TAG=hog", "memory": [[0, "2GiB"], ["10s", "14GiB"]]}])
    uuid = fake.discover().gpus[1].uuid
    env = {"TAG": "hog", "CUDA_VISIBLE_DEVICES": uuid}
    machine.processes = [
        SeenProcess(100, 100, env, ppid=1),  # the supervisor, in a session of its own
        SeenProcess(101, 101, env, ppid=100),  # bash, leader of the replica's session
        SeenProcess(102, 101, env, ppid=101),  # the program
        SeenProcess(103, 101, env, ppid=101),  # a worker it started
        SeenProcess(200, 200, {"TAG": "other"}, ppid=1),
    ]
    # the lowest leaf pid of the replica's session holds the memory, on the card its CUDA_VISIBLE_DEVICES names;
    # the trace starts when it is first seen (t = 5 s): 2 GiB, then 14 GiB from 15 s
    assert usage(fake, 5.0) == {102: (1, 2 * GIB, None)}
    assert usage(fake, 14.9) == {102: (1, 2 * GIB, None)}
    assert usage(fake, 15.0) == {102: (1, 14 * GIB, None)}
    machine.processes = machine.processes[:2] + machine.processes[4:]  # the program ended, its shell waits
    assert usage(fake, 16.0) == {101: (1, 2 * GIB, None)}  # the shell is the replica's last process now
    machine.processes = [machine.processes[0], machine.processes[2]]  # the replica ended; its supervisor lingers
    assert usage(fake, 17.0) == {}
    assert fake.state.processes == []


@pytest.mark.parametrize(("env", "expected"), [
    ({"GPUPOOL_GPU_INDICES": "0", "CUDA_VISIBLE_DEVICES": "0"}, 0),  # an MPS client: device 0 of its daemon
    ({"GPUPOOL_GPU_INDICES": "1", "CUDA_VISIBLE_DEVICES": ""}, 1),  # a simulated card: no device, the index
    ({"CUDA_VISIBLE_DEVICES": "1"}, 1),  # a plain index
    ({"CUDA_VISIBLE_DEVICES": ""}, None),  # sees no GPU: uses none
    ({"GPUPOOL_GPU_INDICES": "9"}, None),  # not a card of this node
])
def test_the_card_comes_from_the_process_environment(env: dict[str, str], expected: int | None) -> None:
    machine = Machine()
    machine.processes = [SeenProcess(50, 50, {"TAG": "x", **env})]
    fake = backend(machine, [{"env": "TAG=x", "memory": "1GiB"}])
    assert usage(fake, 0.0) == ({} if expected is None else {50: (expected, GIB, None)})


def test_a_mig_device_uuid_selects_the_instance_and_gpu_pins_the_card() -> None:
    machine = Machine()
    fake = backend(machine, [{"env": "TAG=mig", "memory": "4GiB"}, {"env": "TAG=pinned", "gpu": 0, "memory": "1GiB"}])
    second = fake.discover().gpus[2].mig_devices[1].uuid
    machine.processes = [SeenProcess(60, 60, {"TAG": "mig", "CUDA_VISIBLE_DEVICES": second}),
                         SeenProcess(70, 70, {"TAG": "pinned", "CUDA_VISIBLE_DEVICES": ""})]
    assert usage(fake, 0.0) == {60: (2, 4 * GIB, second), 70: (0, GIB, None)}


def test_descriptions_say_whether_their_cards_are_simulated_and_check_env_entries() -> None:
    assert FakeBackend({"gpus": []}).simulated is False
    assert FakeBackend({"simulated": True, "gpus": []}).simulated is True
    with pytest.raises(ValidationError, match="NAME=VALUE"):
        FakeBackend({"gpus": [], "processes": [{"env": "TAG", "memory": "1GiB"}]})
    with pytest.raises(ValidationError, match="needs memory"):
        FakeBackend({"gpus": [], "processes": [{"env": "TAG=x"}]})
    with pytest.raises(ValidationError, match="gpu must be an index below 0"):
        FakeBackend({"gpus": [], "processes": [{"env": "TAG=x", "gpu": 0, "memory": "1GiB"}]})
    assert load_description({"gpus": [], "processes": [{"env": "TAG=x", "memory": "1GiB"}]}).processes == []


def test_the_real_scan_finds_this_process_and_its_environment() -> None:
    me = next(p for p in scan_proc() if p.pid == os.getpid())
    assert me.sid == os.getsid(0) and me.ppid == os.getppid() and me.env.get("PATH") == os.environ["PATH"]


def test_the_demo_node_and_its_example_specs_load() -> None:
    examples = Path(__file__).resolve().parents[3] / "examples" / "gpus"
    demo = FakeBackend(read_description(examples / "demo.yaml"), scan=Machine())
    cards = demo.discover().gpus
    assert len(cards) == 4 and not demo.simulated and len(cards[3].mig_devices) == 4
    assert sorted((m.variable, m.value) for m in demo.matchers) == [("DEMO_GPU_USE", "greedy"),
                                                                    ("DEMO_GPU_USE", "modest")]
    specs = {p.stem: parse_spec(yaml.safe_load(p.read_text())) for p in examples.glob("*.yaml") if p.stem != "demo"}
    assert sorted(specs) == ["infer-mig", "notebook", "train"]
    assert specs["notebook"].roles[0].resources.gpu is not None
