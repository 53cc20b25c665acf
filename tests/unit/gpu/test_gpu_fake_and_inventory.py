"""The scripted fake (descriptions, traces, events, YAML) and the conversion to the scheduler's Gpu objects."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gpupool.domain.errors import ValidationError
from gpupool.domain.resources import SharingMode
from gpupool.gpu.fake import FakeBackend, default_description, load_description, read_description
from gpupool.gpu.inventory import mig_profile_name, nvlink_groups, to_domain_gpus
from gpupool.gpu.types import GpuInfo, GpuInventory, MigDevice

A100 = "NVIDIA A100-SXM4-80GB"


def test_to_domain_gpus_carries_mode_topology_mig_and_health(backend: FakeBackend) -> None:
    inventory = backend.discover()
    gpus = to_domain_gpus(inventory, modes={1: SharingMode.SHARED, 2: SharingMode.MPS, 3: SharingMode.SHARED},
                          unhealthy={2})
    assert [(g.index, g.model, g.mode, g.nvlink_group, g.healthy) for g in gpus] == [
        (0, "A100-SXM4-80GB", SharingMode.EXCLUSIVE, 0, True),
        (1, "A100-SXM4-80GB", SharingMode.SHARED, 0, True),
        (2, "A100-SXM4-80GB", SharingMode.MPS, None, False),
        (3, "A100-SXM4-80GB", SharingMode.MIG, None, True),  # MIG on the card wins over the admin's setting
    ]
    assert [g.uuid for g in gpus] == [g.uuid for g in inventory.gpus]
    mig = gpus[3]
    assert [(i.profile, i.uuid) for i in mig.mig_instances] == [
        (d.profile, d.uuid) for d in inventory.gpus[3].mig_devices]
    # 3 of 7 compute slices: floor(3000 / 7) = 428 milli; the scheduler's accounting works on the result
    assert mig.mig_milli(mig.mig_instances[3]) == 428


def test_a_card_set_to_mig_by_the_admin_but_not_partitioned_offers_nothing() -> None:
    inventory = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB"}]}).discover()
    (gpu,) = to_domain_gpus(inventory, modes={0: SharingMode.MIG})
    assert gpu.mode == SharingMode.MIG and gpu.mig_instances == ()


def test_the_a30_has_four_compute_slices() -> None:
    inventory = FakeBackend({"gpus": [{"model": "NVIDIA A30", "memory": "24GiB", "mig": ["2g.12gb", "1g.6gb"]}]}
                            ).discover()
    (gpu,) = to_domain_gpus(inventory)
    # 2 of 4 compute slices: 500 milli
    assert gpu.compute_slices == 4 and gpu.mig_milli(gpu.mig_instances[0]) == 500


@pytest.mark.parametrize(("peers", "groups"), [
    # two NVLink pairs
    ({0: (1,), 1: (0,), 2: (3,), 3: (2,)}, {0: 0, 1: 0, 2: 2, 3: 2}),
    # an NVSwitch board: everyone with everyone
    ({i: tuple(j for j in range(4) if j != i) for i in range(4)}, {0: 0, 1: 0, 2: 0, 3: 0}),
    # a chain 0-1-2 is one group; 3 has no NVLink
    ({0: (1,), 1: (0, 2), 2: (1,), 3: ()}, {0: 0, 1: 0, 2: 0, 3: None}),
    # a peer that is not on the node (or itself) is ignored
    ({0: (0, 9), 1: ()}, {0: None, 1: None}),
])
def test_nvlink_groups_are_connected_components(peers: dict[int, tuple[int, ...]],
                                                groups: dict[int, int | None]) -> None:
    infos = [GpuInfo(i, f"GPU-{i}", A100, 1, nvlink_peers=p) for i, p in peers.items()]
    assert nvlink_groups(infos) == groups


@pytest.mark.parametrize(("reported", "profile"), [
    ("NVIDIA A100-SXM4-40GB MIG 1g.5gb", "1g.5gb"), ("3g.40gb", "3g.40gb"), ("1g.10gb+me", "1g.10gb"),
    ("NVIDIA H100 80GB HBM3 MIG 1c.3g.40gb", "3g.40gb"), ("something else", None),
])
def test_mig_profile_names_are_read_from_nvml_names(reported: str, profile: str | None) -> None:
    assert mig_profile_name(reported) == profile


def test_mig_devices_without_a_schedulable_profile_are_left_out(caplog: pytest.LogCaptureFixture) -> None:
    info = GpuInfo(0, "GPU-0", A100, 81920, mig_enabled=True,
                   mig_devices=(MigDevice("MIG-a", "1g.10gb"), MigDevice("MIG-b", "unknown profile")))
    (gpu,) = to_domain_gpus(GpuInventory((info,)))
    assert [i.uuid for i in gpu.mig_instances] == ["MIG-a"]
    assert "MIG-b" in caplog.text


def test_the_inventory_survives_a_json_round_trip(backend: FakeBackend) -> None:
    inventory = backend.discover()
    assert GpuInventory.from_dict(inventory.to_dict()) == inventory


def test_yaml_descriptions_are_read(tmp_path: Path) -> None:
    path = tmp_path / "gpus.yaml"
    path.write_text("""
node: lab
cuda_version: "12.2"
repeat: 1m
gpus:
  - {model: NVIDIA H100 80GB HBM3, memory: 80GiB, count: 2, nvlink: nvswitch, utilization: [[0, 10], [30s, 70]]}
processes:
  - {pid: 99, gpu: 1, memory: [[0, 1GiB], [10s, 5GiB]], end: 50s}
""")
    backend = FakeBackend(read_description(path), epoch=100.0)
    inventory = backend.discover()
    assert inventory.cuda_version == "12.2" and [g.nvlink_peers for g in inventory.gpus] == [(1,), (0,)]
    # fake time = now - epoch, folded into the 60 s repeat period: 135 -> 35 s, 165 -> 5 s
    assert [r.utilization_pct for r in backend.sample(135.0).gpus] == [70.0, 70.0]
    assert backend.sample(165.0).gpus[0].utilization_pct == 10.0
    assert [p.memory_bytes for p in backend.sample(175.0).processes] == [5 * 1024**3]
    assert backend.sample(152.0).processes == ()  # ended at 50 s


def test_error_events_are_delivered_once_and_ecc_counts_accumulate() -> None:
    backend = FakeBackend({"gpus": [{"model": A100, "memory": "80GiB",
                                     "events": [{"at": "1m", "xid": 79}, {"at": "2m", "ecc": 3}]}]}, epoch=0.0)
    backend.discover()
    assert backend.sample(30.0).errors == ()
    assert [(e.kind, e.code) for e in backend.sample(61.0).errors] == [("xid", 79)]
    assert backend.sample(62.0).errors == ()
    late = backend.sample(150.0)
    assert [(e.kind, e.code) for e in late.errors] == [("ecc", 1)] and late.gpus[0].ecc_uncorrected == 3


def test_processes_can_be_scripted_while_running() -> None:
    backend = FakeBackend(default_description(1))
    backend.sample(1000.0)  # the first sample sets the epoch: fake time 0
    backend.add_process(321, 0, "6GiB")
    assert [(p.pid, p.memory_bytes) for p in backend.sample(1005.0).processes] == [(321, 6 * 1024**3)]
    backend.end_process(321)
    assert backend.sample(1010.0).processes == ()


@pytest.mark.parametrize(("description", "message"), [
    ({"gpus": [{"model": A100}]}, "needs at least `model` and `memory`"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "colour": "green"}]}, "fake.gpus[0].colour: unknown field"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "count": 0}]}, "count must be"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "count": 2, "uuid": "GPU-x"}]}, "a fixed uuid needs count 1"),
    ({"gpus": [{"model": "Tesla T4", "memory": "16GiB", "mig": ["1g.5gb"]}]}, "does not support MIG"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "mig": ["4g.40gb", "4g.40gb"]}]}, "at most 1 x 4g.40gb"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "utilization": [[0]]}]}, "list of [time, value] pairs"),
    ({"gpus": [{"model": A100, "memory": "80GiB", "events": [{"at": 5}]}]}, "{at: TIME, xid: CODE}"),
    ({"gpus": [{"model": A100, "memory": "80GiB"}], "processes": [{"pid": 1, "gpu": 3, "memory": "1GiB"}]},
     "gpu must be an index below 1"),
    ({"gpus": [], "cuda_version": "twelve"}, "write the CUDA version as 12.4"),
    ({"gpus": "four"}, "expected a list of GPUs"),
    ({"gpu": []}, "unknown field"),
])
def test_bad_descriptions_say_what_to_write(description: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        load_description(description)
    assert message in str(error.value)


def test_an_unreadable_description_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read"):
        read_description(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ValidationError, match="is a mapping"):
        read_description(tmp_path / "list.yaml")
