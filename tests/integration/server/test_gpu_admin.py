"""Administrators' GPU changes over HTTP on a scripted fake node: sharing modes (and what running work
allows), MPS daemons (a stand-in control program, real processes), MIG layouts, and health marks from XID
errors that keep the scheduler off a card until an admin clears them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.orm import Session
from tests.integration.server.conftest import ServerFactory
from tests.support.gpus import a100s, kill_mps_daemons, mps_stand_in, write_description
from tests.support.servers import ManualClock, TestServer, wait_until

from gpupool.client.http import Client
from gpupool.domain.errors import ConflictError, NotFoundError, PermissionDeniedError, ValidationError
from gpupool.executors.base import ReplicaLaunch
from gpupool.executors.fake import FakeExecutor
from gpupool.executors.local import pick_free_ports
from gpupool.gpu.mps import mps_paths
from gpupool.scheduler.profile import SchedulerProfile
from gpupool.server.api.schemas import GpuInfo
from gpupool.server.workers.scheduling import ClusterState, SchedulingLoop

NODE = "node"


def job(name: str, gpu: object) -> str:
    return f"name: {name}\ncommand: python x.py\nresources: {{cpu: 0.5, memory: 1GiB, gpu: {gpu}}}\n"


def card(client: Client, index: int) -> GpuInfo:
    return next(g for g in client.node(NODE).gpus if g.index == index)


def launch_of(fake: FakeExecutor, workload_id: int) -> ReplicaLaunch:
    return wait_until(lambda: next((x for x in fake.launches if x.workload_id == str(workload_id)), None),
                      what=f"launch of {workload_id}")


def running(client: Client, workload_id: int) -> bool:
    return client.get_workload(workload_id).status == "running"


@pytest.fixture
def gpu_server(server_factory: ServerFactory, fake: FakeExecutor, tmp_path: Path) -> Iterator[TestServer]:
    """A node of two A100-80GB (fake NVML, cards that act like real ones), MPS played by a stand-in."""
    description = write_description(tmp_path, {"node": "t", "gpus": [a100s(2)]})
    server = server_factory(executor=fake, gpu_description=description, sample_interval_s=0.05,
                            mps_control=str(mps_stand_in(tmp_path / "bin")))
    yield server
    kill_mps_daemons(server.settings.home)


@pytest.fixture
def admin(gpu_server: TestServer) -> Iterator[Client]:
    with gpu_server.client() as client:
        yield client


def test_sharing_modes_follow_the_admin_and_what_runs(admin: Client, fake: FakeExecutor) -> None:
    node = admin.node(NODE)
    assert node.gpu_backend == "fake" and node.driver_version == "550.54.15" and not node.simulated_gpus
    assert [(g.mode, g.healthy, g.uuid.startswith("GPU-")) for g in node.gpus] == [("exclusive", True, True)] * 2
    change = admin.set_sharing(NODE, 0, "shared")
    assert (change.status, change.gpu.mode) == ("changed", "shared")
    assert admin.set_sharing(NODE, 0, "shared").status == "unchanged"
    share = admin.submit(job("nb", "{share: 0.25, memory: 10GiB}")).workload.id
    env = launch_of(fake, share).env
    # the only card that takes shares; its UUID, the memory cap and the PyTorch hook
    assert env["GPUPOOL_GPU_INDICES"] == "0" and env["CUDA_VISIBLE_DEVICES"] == card(admin, 0).uuid
    assert env["GPUPOOL_GPU_MEMORY_LIMIT_MIB"] == "10240" and env["PYTHONPATH"].endswith("gpu/pythonpath")
    whole = admin.submit(job("train", 1)).workload.id
    assert launch_of(fake, whole).env["GPUPOOL_GPU_INDICES"] == "1"
    wait_until(lambda: running(admin, share) and running(admin, whole), what="both running")
    with pytest.raises(ConflictError, match="holding shares of it; exclusive mode takes whole cards only"):
        admin.set_sharing(NODE, 0, "exclusive")
    with pytest.raises(ConflictError, match="MPS clients"):
        admin.set_sharing(NODE, 0, "mps")
    assert admin.set_sharing(NODE, 1, "shared").gpu.mode == "shared"  # a whole card stays whole
    assert card(admin, 1).allocated_milli == 1000
    admin.cancel(share)
    wait_until(lambda: card(admin, 0).allocated_milli == 0, what="share released")
    assert admin.set_sharing(NODE, 0, "exclusive").gpu.mode == "exclusive"


def test_gpu_changes_are_for_administrators_and_name_real_cards(admin: Client, gpu_server: TestServer) -> None:
    token = admin.create_user("bob", project="default").token
    with gpu_server.client(token) as bob:
        with pytest.raises(PermissionDeniedError, match="only administrators"):
            bob.set_sharing(NODE, 0, "shared")
        with pytest.raises(PermissionDeniedError):
            bob.clear_unhealthy(NODE, 0)
        assert [g.index for g in bob.node(NODE).gpus] == [0, 1]  # anyone may look
    with pytest.raises(NotFoundError, match="node 'nope' not found"):
        admin.set_sharing("nope", 0, "shared")
    with pytest.raises(NotFoundError, match=r"has no GPU 7 \(its GPUs: 0, 1\)"):
        admin.set_sharing(NODE, 7, "shared")
    with pytest.raises(ValidationError, match="mode"):
        admin.set_sharing(NODE, 0, "timeslice")


def test_mps_daemons_start_and_stop_with_the_mode(admin: Client, fake: FakeExecutor, gpu_server: TestServer) -> None:
    change = admin.set_sharing(NODE, 1, "mps")
    assert change.mps is not None and change.mps.state == "running" and change.mps.pid
    paths = mps_paths(gpu_server.settings.home, card(admin, 1).uuid)  # keyed by the card's UUID
    assert (paths.log_dir / "control.log").read_text() == f"started for {card(admin, 1).uuid}\n"  # only its card
    wid = admin.submit(job("client", "{share: 0.5, memory: 20GiB}")).workload.id
    env = launch_of(fake, wid).env
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == str(paths.pipe_dir)
    assert (env["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"], env["CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"]) == ("50", "0=20480M")
    admin.cancel(wid)
    wait_until(lambda: card(admin, 1).allocated_milli == 0, what="client gone")
    stopped = admin.set_sharing(NODE, 1, "exclusive")
    assert stopped.mps is None and card(admin, 1).mps is None


def test_mig_layouts_are_checked_applied_and_refused_on_busy_cards(admin: Client, fake: FakeExecutor) -> None:
    with pytest.raises(ValidationError, match=r"holds at most 3 x 2g\.20gb"):
        admin.set_mig(NODE, 0, "2g.20gb,2g.20gb,2g.20gb,2g.20gb")
    with pytest.raises(ValidationError, match="needs 7 compute and 9 memory slices"):
        admin.set_mig(NODE, 0, "3g.40gb,3g.40gb,1g.10gb")  # 3+3+1 compute, 4+4+1 memory slices
    change = admin.set_mig(NODE, 0, "3g.40gb,2g.20gb,1g.10gb,1g.10gb")
    assert (change.status, change.gpu.mode, change.pending_reset) == ("applied", "mig", False)
    instances = change.gpu.mig_instances
    assert sorted(m.profile for m in instances) == ["1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb"]
    assert all(m.uuid.startswith("MIG-") for m in instances)
    wid = admin.submit(job("infer", "{mig: 2g.20gb}")).workload.id
    env = launch_of(fake, wid).env
    two_g = next(m for m in instances if m.profile == "2g.20gb")
    assert env["CUDA_VISIBLE_DEVICES"] == two_g.uuid and env["GPUPOOL_GPU_SHARING_MODE"] == "mig"
    wait_until(lambda: any(m.allocated for m in card(admin, 0).mig_instances), what="instance in use")
    with pytest.raises(ConflictError, match="running replica"):
        admin.set_mig(NODE, 0, "7g.80gb")
    with pytest.raises(ConflictError, match="set-mig node 0 none"):
        admin.set_sharing(NODE, 0, "exclusive")
    admin.cancel(wid)
    wait_until(lambda: card(admin, 0).allocated_milli == 0, what="instance released")
    off = admin.set_mig(NODE, 0, "none")
    assert (off.status, off.gpu.mode, off.gpu.mig_instances) == ("disabled", "exclusive", [])


def test_a_mig_change_that_needs_a_reset_says_so(server_factory: ServerFactory, fake: FakeExecutor,
                                                 tmp_path: Path) -> None:
    description = write_description(tmp_path, {"gpus": [a100s(1, mig_needs_reset=True), {"model": "Tesla T4",
                                                                                       "memory": "16GiB"}]})
    with server_factory(executor=fake, gpu_description=description).client() as client:
        change = client.set_mig(NODE, 0, "1g.10gb")
        assert change.pending_reset and "nvidia-smi -r -i 0" in change.message
        assert (change.gpu.mode, change.gpu.mig_instances) == ("mig", [])  # nothing placed until it is reset
        with pytest.raises(ValidationError, match=r"\(T4\) does not support MIG"):
            client.set_mig(NODE, 1, "1g.10gb")
        with pytest.raises(ValidationError, match=r"\(T4\) does not support MIG"):
            client.set_sharing(NODE, 1, "mig")


def test_an_xid_marks_a_gpu_unhealthy_until_an_admin_clears_it(server_factory: ServerFactory, fake: FakeExecutor,
                                                               tmp_path: Path) -> None:
    # fake time follows the server's (manual) clock: XID 79 (fell off the bus) on GPU 0 at 10 s, XID 13 (an
    # application's graphics engine exception) on GPU 1 at 20 s
    description = write_description(tmp_path, {"gpus": [a100s(1, events=[{"at": "10s", "xid": 79}]),
                                                        a100s(1, events=[{"at": "20s", "xid": 13}])]})
    clock = ManualClock()
    server = server_factory(executor=fake, clock=clock, gpu_description=description, sample_interval_s=0.05)
    with server.client() as admin:
        wait_until(lambda: server.services.gpu_runtime().nodes[NODE].last_report, what="first sample")
        clock.advance(10)
        wait_until(lambda: not card(admin, 0).healthy, what="GPU 0 unhealthy")
        assert card(admin, 0).health == "XID 79"
        first = admin.submit(job("a", 1)).workload.id
        second = admin.submit(job("b", 1)).workload.id
        assert launch_of(fake, first).env["GPUPOOL_GPU_INDICES"] == "1"  # never the unhealthy card
        wait_until(lambda: admin.get_workload(second).pending_reason, what="second waits")
        clock.advance(10)
        wait_until(lambda: any("XID 13" in e.reason for e in admin.get_workload(first).events), what="XID 13 told")
        assert card(admin, 1).healthy and "gpupool_gpu_healthy" in admin.prometheus_metrics()
        assert admin.get_workload(second).status == "pending"
        cleared = admin.clear_unhealthy(NODE, 0)
        assert cleared.status == "cleared" and cleared.gpu.healthy
        assert launch_of(fake, second).env["GPUPOOL_GPU_INDICES"] == "0"
        assert admin.clear_unhealthy(NODE, 0).status == "unchanged"


def test_a_bind_planned_on_cards_that_changed_meanwhile_is_dropped(server_factory: ServerFactory,
                                                                   fake: FakeExecutor, tmp_path: Path) -> None:
    description = write_description(tmp_path, {"gpus": [a100s(1)]})
    server = server_factory(executor=fake, gpu_description=description, workers=False)
    services = server.services

    class ChangeAfterReading(SchedulingLoop):
        """A cycle during which an admin puts the only card in mig mode (after the snapshot was read)."""

        changes = 0

        def _load(self, session: Session) -> ClusterState:
            state = super()._load(session)
            if not self.changes:
                self.changes += 1
                with server.client() as client:
                    client.set_sharing(NODE, 0, "mig")
            return state

    loop = ChangeAfterReading(services.db, services.clock, SchedulerProfile(min_runtime_s=0),
                              lambda _node, n: pick_free_ports(n))
    with server.client() as client:
        wid = client.submit(job("train", 1)).workload.id
        decisions = loop.step()
        assert [b.workload_id for b in decisions.binds] == [str(wid)]  # planned on the exclusive card ...
        assert client.get_workload(wid).replica_list == []  # ... and not written: the card changed
        loop.step()
        waiting = client.get_workload(wid)
        assert waiting.status == "pending" and waiting.pending_reason
