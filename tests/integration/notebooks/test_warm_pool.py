"""The notebook warm pool of the local executor, with real parked JupyterLab processes: a warm notebook is
ready and its own (directory, token, environment), a slot is handed out once also to concurrent starts and
across a restarted executor, a start interrupted after its claim finishes with the same slot, and the pool
is refilled. Then through a real server and its proxy."""

from __future__ import annotations

import grp
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.support.jupyter import execute, start_kernel
from tests.support.processes import ServerProcess
from tests.support.servers import server_settings, start_server, wait_until

from gpupool.domain.notebooks import JUPYTER_COMMAND
from gpupool.executors.base import Handle, ReplicaLaunch, ReplicaState
from gpupool.executors.local import LocalExecutor
from gpupool.executors.warm_pool import CLAIM_FILE

pytestmark = pytest.mark.slow
READY_S = 120  # a parked JupyterLab imports in 3 s unloaded, 10-25 s on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def base_env(tmp: Path) -> dict[str, str]:
    (tmp / "home").mkdir(exist_ok=True)
    return {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "HOME": str(tmp / "home"), "LANG": "C.UTF-8"}


def ready_tokens(root: Path) -> list[Path]:
    return sorted((root / "warm" / "ready").glob("*/*"))


@pytest.fixture
def executors(tmp_path: Path) -> Iterator[list[LocalExecutor]]:
    """The executors a test makes; every warm slot under their roots is stopped at the end."""
    made: list[LocalExecutor] = []
    yield made
    for executor in made:
        executor.close()
        executor.warm.stop_unclaimed()


def new_executor(tmp: Path, made: list[LocalExecutor], size: int = 1, log_cap: int = 1024**3) -> LocalExecutor:
    executor = LocalExecutor(tmp / "executor", base_env=base_env(tmp), warm_notebooks=size, log_cap_bytes=log_cap)
    made.append(executor)
    return executor


def notebook(tmp: Path, wid: str, **env: str) -> ReplicaLaunch:
    user_dir = tmp / f"user-{wid}"
    user_dir.mkdir(exist_ok=True)
    (user_dir / f"only-{wid}.txt").write_text(wid)
    return ReplicaLaunch(workload_id=wid, replica=0, role="main", command=JUPYTER_COMMAND, cwd=user_dir,
                         log_dir=tmp / "logs" / wid, notebook=True,
                         env={"GPUPOOL_NOTEBOOK_IP": "127.0.0.1", "GPUPOOL_PORT": str(free_port()),
                              "GPUPOOL_WORKLOAD_ID": wid, "JUPYTER_TOKEN": f"token-of-{wid}", **env})


def base_url(launch: ReplicaLaunch) -> str:
    return f"http://127.0.0.1:{launch.env['GPUPOOL_PORT']}/notebooks/{launch.workload_id}/"


def wait_ready(launch: ReplicaLaunch) -> float:
    started = time.monotonic()

    def answers() -> bool:
        try:
            return httpx.get(f"{base_url(launch)}api/status", timeout=5,
                             headers={"Authorization": f"token {launch.env['JUPYTER_TOKEN']}"}).status_code == 200
        except httpx.TransportError:
            return False

    wait_until(answers, READY_S, 0.05, f"notebook {launch.workload_id} ready")
    return time.monotonic() - started


def kernel_says(launch: ReplicaLaunch, code: str) -> str:
    headers = {"Authorization": f"token {launch.env['JUPYTER_TOKEN']}"}
    kernel = start_kernel(base_url(launch), headers)
    ws = base_url(launch).replace("http://", "ws://") + f"api/kernels/{kernel}/channels"
    return execute(ws, headers, code, timeout_s=READY_S)[0]


def stop(executor: LocalExecutor, handle: Handle) -> None:
    executor.stop(handle, 2)
    wait_until(lambda: executor.poll(handle).state.is_terminal, 60, 0.1, "the notebook stopped")


def test_a_warm_notebook_is_ready_its_own_and_the_slot_is_refilled(tmp_path: Path,
                                                                   executors: list[LocalExecutor]) -> None:
    executor = new_executor(tmp_path, executors)
    root = executor.root
    wait_until(lambda: len(ready_tokens(root)) == 1, READY_S, 0.1, "a parked slot")
    parked = ready_tokens(root)[0].name
    launch = notebook(tmp_path, "11", CUDA_VISIBLE_DEVICES="GPU-11", GPUPOOL_GPU_MEMORY_LIMIT_MIB="4096", MINE="m")
    handle = executor.start(launch)
    assert handle["warm"] and Path(handle["state_dir"]).name == parked
    assert executor.start(launch) == handle  # idempotent, as any start
    wait_ready(launch)
    assert executor.poll(handle).state == ReplicaState.RUNNING
    other_token = {"Authorization": "token token-of-12"}
    assert httpx.get(f"{base_url(launch)}api/status", headers=other_token, timeout=10).status_code == 403
    listing = httpx.get(f"{base_url(launch)}api/contents", timeout=10,
                        headers={"Authorization": "token token-of-11"}).json()
    assert [c["name"] for c in listing["content"]] == ["only-11.txt"]
    said = kernel_says(launch, "import os; print(os.getcwd(), os.environ.get('CUDA_VISIBLE_DEVICES'), "
                               "os.environ.get('GPUPOOL_GPU_MEMORY_LIMIT_MIB'), os.environ.get('MINE'), "
                               "os.environ.get('JUPYTER_TOKEN'), os.environ.get('HOME'))")
    assert said.split() == [str(tmp_path / "user-11"), "GPU-11", "4096", "m", "token-of-11", str(tmp_path / "home")]
    assert "Jupyter Server" in Path(handle["log_path"]).read_text()  # its output is the notebook's log
    assert "Jupyter Server" not in (Path(handle["state_dir"]) / "replica-0.log").read_text()
    # the slot is refilled with a new one; the used one is never ready again
    wait_until(lambda: [t.name for t in ready_tokens(root)] not in ([], [parked]), READY_S, 0.1, "a refill")
    assert parked not in [t.name for t in ready_tokens(root)]
    stop(executor, handle)
    assert executor.poll(handle).state == ReplicaState.STOPPED


def test_two_concurrent_starts_share_no_slot(tmp_path: Path, executors: list[LocalExecutor]) -> None:
    executor = new_executor(tmp_path, executors)
    wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a parked slot")
    launches = [notebook(tmp_path, wid) for wid in ("21", "22")]
    handles: dict[str, Handle] = {}
    barrier = threading.Barrier(2)

    def start(launch: ReplicaLaunch) -> None:
        barrier.wait()
        handles[launch.workload_id] = executor.start(launch)

    threads = [threading.Thread(target=start, args=(launch,)) for launch in launches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(bool(h.get("warm")) for h in handles.values()) == [False, True]  # one warm, one cold
    assert handles["21"]["state_dir"] != handles["22"]["state_dir"]
    for launch in launches:
        wait_ready(launch)
        listing = httpx.get(f"{base_url(launch)}api/contents", timeout=10,
                            headers={"Authorization": f"token token-of-{launch.workload_id}"}).json()
        assert [c["name"] for c in listing["content"]] == [f"only-{launch.workload_id}.txt"]
    for handle in handles.values():
        stop(executor, handle)


def test_slots_survive_a_restart_and_an_interrupted_start_keeps_its_claim(tmp_path: Path,
                                                                          executors: list[LocalExecutor]) -> None:
    first = new_executor(tmp_path, executors, log_cap=1024)  # a slot keeps the cap it was started with
    wait_until(lambda: len(ready_tokens(first.root)) == 1, READY_S, 0.1, "a parked slot")
    first.close()  # the server stops; the parked process stays
    restarted = new_executor(tmp_path, executors, log_cap=1024)
    assert restarted.warm.fill() == 0  # it finds the live slot and starts no second one
    launch = notebook(tmp_path, "31")
    state_dir = restarted.state_dir("31", 0)
    state_dir.mkdir(parents=True)
    python = str(Path(sys.executable).parent / "python")
    slot = restarted.warm.claim(python, state_dir)  # a start that died right after its claim
    assert slot is not None and (state_dir / CLAIM_FILE).exists()
    assert first.warm.claim(python, tmp_path) is None  # the token is gone: no one else can take it
    handle = restarted.start(launch)  # the retried start finishes the same claim
    assert handle["warm"] and handle["state_dir"] == str(slot)
    wait_ready(launch)
    log = Path(handle["log_path"])  # Jupyter's start logs more than 1 KiB: the cap applies to a warm notebook
    wait_until(lambda: "reached its limit of 1024 bytes" in log.read_text(), 60, 0.1, "the log capped")
    assert log.stat().st_size < 1024 + 200
    stop(restarted, handle)


def test_a_warm_notebook_through_the_server_and_its_proxy(tmp_path: Path, executors: list[LocalExecutor]) -> None:
    server = start_server(server_settings(tmp_path / "server", f"sqlite:///{tmp_path / 'gpupool.db'}",
                                          notebook_warm_pool=1))
    executor = server.services.executor
    assert isinstance(executor, LocalExecutor)
    executors.append(executor)
    wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a parked slot")
    try:
        with server.client() as admin:
            nid = admin.submit({"kind": "notebook", "name": "warm", "idle_timeout": "off",
                                "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
            auth = {"Authorization": f"Bearer {server.admin_token}"}

            def through_proxy() -> bool:
                response = httpx.get(f"{server.url}/notebooks/{nid}/api/status", headers=auth, timeout=10)
                return response.status_code == 200

            wait_until(through_proxy, READY_S, 0.05, "the notebook ready through the proxy")
            workload = admin.get_workload(nid)
            assert workload.status == "running"
            slots = [p.name for p in (executor.root / "warm" / "slots").iterdir() if (p / "assign.json").exists()]
            assert len(slots) == 1  # it runs in the parked slot
            admin.cancel(nid)
            wait_until(lambda: admin.get_workload(nid).status == "cancelled", 60, 0.2, "cancelled")
    finally:
        server.stop()


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("useradd") is None, reason="needs root and useradd")
def test_in_a_multi_user_pool_a_warm_notebook_runs_as_its_user(executors: list[LocalExecutor]) -> None:
    tag = uuid.uuid4().hex[:6]
    base = Path(tempfile.mkdtemp(prefix="gpupool-warm-", dir="/tmp"))
    base.chmod(0o711)  # every OS user traverses it (pytest's tmp is 0700)
    home = base / "home"
    server = start_server(server_settings(home, f"sqlite:///{home / 'gpupool.db'}", multi_user=True,
                                          os_user_prefix=f"w{tag}u-", os_group_prefix=f"w{tag}g-",
                                          notebook_warm_pool=1, stop_grace_s=0.5))
    executor = server.services.executor
    assert isinstance(executor, LocalExecutor)
    executors.append(executor)
    try:
        wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a parked slot")
        admin = server.client()
        admin.create_project("alpha")
        alice = server.client(admin.create_user("alice", project="alpha", role="member").token)
        nid = alice.submit({"kind": "notebook", "project": "alpha", "idle_timeout": "off",
                            "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
        auth = {"Authorization": f"Bearer {alice.token}"}
        lab = f"{server.url}/notebooks/{nid}/"
        wait_until(lambda: httpx.get(f"{lab}api/status", headers=auth, timeout=10).status_code == 200, READY_S,
                   0.05, "the notebook ready through the proxy")
        (slot,) = [p for p in (executor.root / "warm" / "slots").iterdir() if (p / "assign.json").exists()]
        # it writes files as alice, in her directory, and its process is hers alone (kernels are not tried: on
        # this machine the interpreter lives under /root, which other users cannot execute, warm or cold)
        put = httpx.put(f"{lab}api/contents/probe.txt", headers=auth, timeout=30,
                        json={"type": "file", "format": "text", "content": "hello"})
        assert put.status_code == 201, put.text
        alice_os = pwd.getpwnam(f"w{tag}u-alice")
        alice_dir = server.settings.storage_dir / "users" / "alice"
        assert (alice_dir / "probe.txt").stat().st_uid == alice_os.pw_uid
        pid = json.loads((slot / "command.json").read_text())["pid"]
        ids = {line.split(":")[0]: line.split()[1:] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith(("Uid:", "Gid:"))}
        assert ids["Uid"] == [str(alice_os.pw_uid)] * 4
        assert ids["Gid"] == [str(grp.getgrnam(f"w{tag}g-alpha").gr_gid)] * 4
        assert os.readlink(f"/proc/{pid}/cwd") == str(alice_dir)
        alice.cancel(nid)
    finally:
        server.stop()
        executor.warm.stop_unclaimed()
        for entry in pwd.getpwall():
            if entry.pw_name.startswith(f"w{tag}u-"):
                subprocess.run(["userdel", entry.pw_name], check=False, capture_output=True)
        for group in grp.getgrall():
            if group.gr_name.startswith(f"w{tag}g-"):
                subprocess.run(["groupdel", group.gr_name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_a_server_killed_after_a_warm_start_finds_the_notebook_again_and_refills(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "home", extra_env={"GPUPOOL_NOTEBOOK_WARM_POOL": "1"}).start()
    root = server.home / "executor"
    try:
        wait_until(lambda: len(ready_tokens(root)) == 1, READY_S, 0.1, "a parked slot")
        with server.client() as client:
            nid = client.submit({"kind": "notebook", "name": "k", "idle_timeout": "off",
                                 "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
            auth = {"Authorization": f"Bearer {client.token}"}
        status_url = f"{server.url}/notebooks/{nid}/api/status"

        def jupyter_started() -> str | None:
            try:
                response = httpx.get(status_url, headers=auth, timeout=10)
            except httpx.TransportError:
                return None
            return str(response.json()["started"]) if response.status_code == 200 else None

        started = wait_until(jupyter_started, READY_S, 0.05, "the notebook ready through the proxy")
        (used,) = [p.name for p in (root / "warm" / "slots").iterdir() if (p / "assign.json").exists()]
        server.kill()  # a crash: nothing of the shutdown runs
        server.start()
        assert wait_until(jupyter_started, 60, 0.1, "the notebook reached again") == started  # the same Jupyter
        with server.client() as client:
            assert client.get_workload(nid).status == "running"
        wait_until(lambda: len(ready_tokens(root)) == 1, READY_S, 0.1, "a parked slot again")
        assert used not in [t.name for t in ready_tokens(root)]  # the used slot is never ready again
        assert [p.name for p in (root / "warm" / "slots").iterdir() if (p / "assign.json").exists()] == [used]
    finally:
        server.stop()
        server.stop_replicas()
        LocalExecutor(root).warm.stop_unclaimed()


def test_what_a_start_that_died_left_is_released_when_its_replica_is_cancelled(
        tmp_path: Path, executors: list[LocalExecutor]) -> None:
    """A slot claimed by a start that died goes back to the pool at once (not after STALE_SLOT_S); a notebook
    already assigned to its slot, or a cold start's supervisor, is stopped."""
    executor = new_executor(tmp_path, executors)
    wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a parked slot")
    parked = ready_tokens(executor.root)[0].name
    state_dir = executor.state_dir("51", 0)
    state_dir.mkdir(parents=True)
    assert executor.warm.claim(str(Path(sys.executable).parent / "python"), state_dir) is not None  # then it died
    assert ready_tokens(executor.root) == []
    executor.release_unstarted("51", 0, 0)
    assert [t.name for t in ready_tokens(executor.root)] == [parked] and not (state_dir / CLAIM_FILE).exists()
    executor.release_unstarted("51", 0, 0)  # again: nothing more
    assert [t.name for t in ready_tokens(executor.root)] == [parked]
    taken = executor.start(notebook(tmp_path, "52"))  # the next notebook takes the same slot at once
    assert taken["warm"] and Path(taken["state_dir"]).name == parked
    stop(executor, taken)
    # assigned to its slot, then the start died before its handle was written: the notebook is stopped
    wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a refill")
    assigned = executor.start(notebook(tmp_path, "53"))
    assert assigned["warm"]
    (executor.state_dir("53", 0) / "handle.json").unlink()
    executor.release_unstarted("53", 0, 0, grace_s=1)
    wait_until(lambda: executor.poll(assigned).state.is_terminal, 60, 0.1, "the assigned notebook stopped")
    assert executor.poll(assigned).state == ReplicaState.STOPPED
    # a cold start whose handle was never written: its supervisor and command are stopped
    cold = executor.start(ReplicaLaunch(workload_id="54", replica=0, role="main", command="sleep 600", env={},
                                        cwd=tmp_path, log_dir=tmp_path / "logs" / "54"))
    wait_until(lambda: executor.poll(cold).state == ReplicaState.RUNNING, 60, 0.1, "the job running")
    (executor.state_dir("54", 0) / "handle.json").unlink()
    executor.release_unstarted("54", 0, 0, grace_s=1)
    wait_until(lambda: executor.poll(cold).state.is_terminal, 60, 0.1, "the job stopped")
    assert executor.poll(cold).state == ReplicaState.STOPPED
    executor.release_unstarted("55", 0, 0)  # a replica no start ever began: nothing to do


def test_the_reconciler_gives_back_the_slot_of_a_cancelled_notebook_whose_start_died(
        tmp_path: Path, executors: list[LocalExecutor]) -> None:
    server = start_server(server_settings(tmp_path / "server", f"sqlite:///{tmp_path / 'gpupool.db'}",
                                          notebook_warm_pool=1))
    executor = server.services.executor
    assert isinstance(executor, LocalExecutor) and server.services.reconciler is not None
    executors.append(executor)
    loop = server.services.reconciler_loop
    assert loop is not None
    server.services.reconciler.stop()  # this test drives the passes itself
    try:
        wait_until(lambda: len(ready_tokens(executor.root)) == 1, READY_S, 0.1, "a parked slot")
        parked = ready_tokens(executor.root)[0].name
        with server.client() as admin:
            nid = admin.submit({"kind": "notebook", "name": "died", "idle_timeout": "off",
                                "resources": {"cpu": 0.5, "memory": "512MiB"}}).workload.id
            wait_until(lambda: admin.get_workload(nid).status == "scheduled", 60, 0.1, "placed")
            state_dir = executor.state_dir(str(nid), 0)
            state_dir.mkdir(parents=True)
            assert executor.warm.claim(str(Path(sys.executable).parent / "python"), state_dir) is not None
            admin.cancel(nid)  # the start died after its claim; the notebook is cancelled before a retry
            loop.send_stops()
            assert [t.name for t in ready_tokens(executor.root)] == [parked]  # at once, not after 5 minutes
            assert not (state_dir / CLAIM_FILE).exists()
            (replica,) = admin.get_workload(nid).replica_list
            assert (replica.state, replica.message) == ("stopped", "stopped before it started")
    finally:
        server.stop()
