"""The node agent and the fencing watchdog of cluster mode, without Ray: they are plain Python over the
local executor (the Ray tests in tests/integration/cluster run them inside a real cluster)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import httpx
import pytest
from tests.support.jupyter import execute, start_kernel
from tests.support.servers import free_port, wait_until

from gpupool.domain.notebooks import JUPYTER_COMMAND
from gpupool.executors.base import ExecutorError, ReplicaLaunch, ReplicaState
from gpupool.executors.local import LocalExecutor
from gpupool.executors.ray_agent import NodeAgent, reachable
from gpupool.executors.ray_fence import ORDER_SUFFIX, carry_out_orders, running_handles, watch, write_order
from gpupool.executors.warm_pool import python_key
from gpupool.server.ray_nodes import node_from_description


def _launch(tmp_path: Path, command: str, replica: int = 0) -> ReplicaLaunch:
    return ReplicaLaunch(workload_id="w1", replica=replica, role="worker", command=command,
                         env={"HOME": str(tmp_path)}, cwd=tmp_path, log_dir=tmp_path / "server-logs", node="n2")


def test_the_agent_describes_its_node_runs_replicas_and_reads_their_logs(tmp_path: Path) -> None:
    agent = NodeAgent("10.0.0.2", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent"),
                                                   "GPUPOOL_AGENT_NODE_NAME": "n2", "GPUPOOL_AGENT_GPUS": "2xT4"})
    described = agent.describe()
    assert (described.name, described.address, described.cpus, described.memory_mib, described.gpus) == (
        "n2", "10.0.0.2", 8.0, 4096, "2xT4")
    handle = agent.start(_launch(tmp_path, "printf 'one\\ntwo\\nthree'"))
    assert agent.start(_launch(tmp_path, "printf 'one\\ntwo\\nthree'")) == handle  # idempotent per attempt
    assert str(handle["log_path"]).startswith(str(tmp_path / "agent" / "logs" / "w1"))  # kept on the node
    wait_until(lambda: agent.poll(handle)[0] == "succeeded", 30, 0.05, "the replica ends")
    assert agent.poll(handle) == ("succeeded", 0, "exit code 0")
    text, offset, ended = agent.read_log(handle, 0, max_bytes=6)  # "one\ntw": whole lines only
    assert (text, offset, ended) == ("one\n", 4, False)
    text, offset, ended = agent.read_log(handle, offset)
    assert (text, offset, ended) == ("two\nthree", 13, True)  # the last line has no newline
    assert agent.read_log(handle, offset) == ("", 13, True)
    assert len(agent.free_ports(3)) == 3
    agent.close()


def test_the_agent_starts_no_replica_in_an_environment_its_node_does_not_see(tmp_path: Path) -> None:
    agent = NodeAgent("10.0.0.2", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent"),
                                                   "GPUPOOL_AGENT_NODE_NAME": "n2"})
    build = tmp_path / "environments" / "cache" / "abc123"
    (build / "bin").mkdir(parents=True)
    launch = _launch(tmp_path, "echo in-env")
    launch = dataclasses.replace(launch, env={**launch.env, "GPUPOOL_ENVIRONMENT_DIR": str(build),
                                              "PATH": f"{build / 'bin'}:/usr/bin:/bin"})
    with pytest.raises(ExecutorError, match=f"node n2 does not see the Python environment at {build}: .* shared"):
        agent.start(launch)  # not built (or not on this node's filesystem)
    assert not (tmp_path / "agent" / "executor" / "replicas" / "w1").exists()  # nothing was started
    (build / ".gpupool-complete").write_text("{}")
    handle = agent.start(launch)
    wait_until(lambda: agent.poll(handle)[0] == "succeeded", 30, 0.05, "the replica ends")
    agent.close()


def test_an_agent_keeps_a_warm_pool_of_notebooks_on_its_node(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    agent = NodeAgent("10.0.0.2", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent"),
                                                   "GPUPOOL_AGENT_NOTEBOOK_WARM_POOL": "1"})
    ready = tmp_path / "agent" / "executor" / "warm" / "ready"
    try:
        # a parked JupyterLab imports in 3 s unloaded, 10-25 s on a busy 2-core machine
        wait_until(lambda: len(list(ready.glob("*/*"))) == 1, 120, 0.1, "a parked slot on the node")
        port = free_port()
        launch = ReplicaLaunch(workload_id="7", replica=0, role="main", command=JUPYTER_COMMAND, cwd=tmp_path / "home",
                               log_dir=tmp_path / "server-logs", node="n2", notebook=True,
                               env={"GPUPOOL_NOTEBOOK_IP": "127.0.0.1", "GPUPOOL_PORT": str(port),
                                    "GPUPOOL_WORKLOAD_ID": "7", "JUPYTER_TOKEN": "token-7", "HOME": str(tmp_path)})
        handle = agent.start(launch)
        assert handle["warm"]  # it took the parked slot

        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/notebooks/7/api/status", timeout=5,
                                 headers={"Authorization": "token token-7"}).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 120, 0.1, "the warm notebook ready")
        agent.stop(handle, 2)
        wait_until(lambda: ReplicaState(agent.poll(handle)[0]).is_terminal, 60, 0.1, "stopped")
        # a start that claimed the refilled slot and died, then its notebook was cancelled: the slot goes back
        wait_until(lambda: len(list(ready.glob("*/*"))) == 1, 120, 0.1, "a refill")
        parked = [p.name for p in ready.glob("*/*")]
        state_dir = agent.executor.state_dir("8", 0)
        state_dir.mkdir(parents=True)
        assert agent.executor.warm.claim(str(Path(sys.executable).parent / "python"), state_dir) is not None
        agent.release_unstarted("8", 0, 0, 1.0)
        assert [p.name for p in ready.glob("*/*")] == parked
    finally:
        agent.close()
        agent.executor.warm.stop_unclaimed()
    silly = NodeAgent("10.0.0.2", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent-2"),
                                                   "GPUPOOL_AGENT_NOTEBOOK_WARM_POOL": "lots"})
    assert silly.executor.warm.size == 0  # a bad value keeps none (and is logged)
    silly.close()


def _lab_environment(root: Path) -> Path:
    """An environment build as the server leaves one under its home (a virtual environment with the build
    marker) that holds JupyterLab: a real venv whose site-packages reach this test run's (one .pth line), so no
    package is downloaded. Not finished yet: the test writes the marker."""
    build = root / "environments" / "cache" / "lab1"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(build)], check=True, timeout=120)
    site = next((build / "lib").glob("python3*/site-packages"))
    (site / "test-run.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return build


def test_an_agent_keeps_warm_slots_of_the_environments_the_server_names(tmp_path: Path) -> None:
    (tmp_path / "home").mkdir()
    build = _lab_environment(tmp_path)
    python = str(build / "bin" / "python")
    agent = NodeAgent("10.0.0.2", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent"),
                                                   "GPUPOOL_AGENT_NOTEBOOK_WARM_POOL": "1"})
    ready = tmp_path / "agent" / "executor" / "warm" / "ready"
    try:
        agent.describe([python])  # as a node pass: the server names the environment's Python
        assert python not in agent.warm_pythons()  # its build is not finished: no slot runs it
        (build / ".gpupool-complete").write_text("{}")
        assert agent.warm_pythons()[1:] == [python]  # after the agent's own interpreter
        own = ready / python_key(agent.warm_pythons()[0])
        in_env = ready / python_key(python)
        # the refill picks the build up within REFILL_INTERVAL_S; a parked JupyterLab imports in 3 s unloaded,
        # 10-25 s on a busy 2-core machine
        wait_until(lambda: len(list(in_env.glob("*"))) == 1 and len(list(own.glob("*"))) == 1, 120, 0.1,
                   "a parked slot of each Python on the node")
        parked_own = [p.name for p in own.glob("*")]
        port = free_port()
        launch = ReplicaLaunch(workload_id="9", replica=0, role="main", command=JUPYTER_COMMAND, cwd=tmp_path / "home",
                               log_dir=tmp_path / "server-logs", node="n2", notebook=True,
                               env={"GPUPOOL_NOTEBOOK_IP": "127.0.0.1", "GPUPOOL_PORT": str(port),
                                    "GPUPOOL_WORKLOAD_ID": "9", "JUPYTER_TOKEN": "token-9", "HOME": str(tmp_path),
                                    "PATH": f"{build / 'bin'}:/usr/bin:/bin", "VIRTUAL_ENV": str(build),
                                    "GPUPOOL_ENVIRONMENT_DIR": str(build)})
        handle = agent.start(launch)
        slot = Path(str(handle["state_dir"]))
        assert handle["warm"] and json.loads((slot / "slot.json").read_text())["python"] == python
        assert slot.name not in [p.name for p in in_env.glob("*")]  # claimed: no longer ready for anyone
        assert [p.name for p in own.glob("*")] == parked_own  # the agent's own slot is left for others
        base = f"http://127.0.0.1:{port}/notebooks/9/"
        token = {"Authorization": "token token-9"}

        def answers() -> bool:
            try:
                return httpx.get(f"{base}api/status", timeout=5, headers=token).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(answers, 120, 0.1, "the warm notebook ready")
        ws_url = f"ws://127.0.0.1:{port}/notebooks/9/api/kernels/{start_kernel(base, token)}/channels"
        # the kernel Jupyter starts runs the environment's Python, in the notebook's directory
        assert execute(ws_url, token, "import sys, os; sys.prefix + '|' + os.getcwd()") == (
            repr(f"{build}|{tmp_path / 'home'}"), None)
        agent.stop(handle, 2)
        wait_until(lambda: ReplicaState(agent.poll(handle)[0]).is_terminal, 60, 0.1, "stopped")
        wait_until(lambda: len(list(in_env.glob("*"))) == 1, 120, 0.1, "the environment's slot refilled")
        agent.describe([])  # the server names none any more: only the agent's own interpreter is kept warm
        assert agent.warm_pythons() == [agent.warm_pythons()[0]] and agent.warm_pythons()[0] != python
    finally:
        agent.close()
        agent.executor.warm.stop_unclaimed()


def test_reachable_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        port = listening.getsockname()[1]
        assert reachable(f"127.0.0.1:{port}")
    assert not reachable(f"127.0.0.1:{port}")
    assert not reachable("not an address")


def test_the_watchdog_fences_when_the_raylet_is_gone(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "executor")
    handle = executor.start(_launch(tmp_path, "sleep 300"))
    wait_until(lambda: executor.poll(handle).state is ReplicaState.RUNNING, 30, 0.05, "the replica runs")
    gone = subprocess.Popen(["true"])
    gone.wait()
    with socket.socket() as head:
        head.bind(("127.0.0.1", 0))
        head.listen()
        reason = watch(tmp_path, f"127.0.0.1:{head.getsockname()[1]}", gone.pid, after_s=60)
    assert reason == f"the raylet (pid {gone.pid}) is gone: stopped 1 replica(s)"
    wait_until(lambda: executor.poll(handle).state is ReplicaState.STOPPED, 30, 0.05, "the replica stops")
    assert running_handles(executor) == []
    executor.close()


def test_the_watchdog_fences_after_the_bound_without_the_head(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "executor")
    handles = [executor.start(_launch(tmp_path, "sleep 300", r)) for r in (0, 1)]
    wait_until(lambda: all(executor.poll(h).state is ReplicaState.RUNNING for h in handles), 30, 0.05, "running")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        head = f"127.0.0.1:{closed.getsockname()[1]}"  # bound but not listening: connections are refused
        began = time.monotonic()
        reason = watch(tmp_path, head, os.getpid(), after_s=1.0)
        waited = time.monotonic() - began
    assert reason.startswith(f"the Ray head {head} has been unreachable for ")
    assert reason.endswith(": stopped 2 replica(s)")
    assert 1.0 <= waited < 10.0  # the bound, plus one check interval and a loaded machine's slack
    wait_until(lambda: all(executor.poll(h).state is ReplicaState.STOPPED for h in handles), 30, 0.05, "stopped")
    executor.close()


def test_the_watchdog_carries_out_the_servers_stop_orders_and_only_those(tmp_path: Path) -> None:
    executor = LocalExecutor(tmp_path / "executor")
    ordered, other = (executor.start(_launch(tmp_path, "sleep 300", r)) for r in (0, 1))
    wait_until(lambda: executor.poll(other).state is ReplicaState.RUNNING, 30, 0.05, "the replicas run")
    orders = tmp_path / "storage" / ".gpupool-fence-orders"
    path = write_order(orders, "n2", ordered, grace_s=0)
    assert path.parent == orders / "n2" and (orders.stat().st_mode & 0o777) == 0o700
    assert write_order(orders, "n2", ordered, grace_s=0) == path  # one order per replica attempt
    forged = orders / "n2" / f"w1-9-0{ORDER_SUFFIX}"  # names no replica of this node
    forged.write_text(json.dumps({"workload_id": "../../elsewhere", "replica": 1, "attempt": 0}))
    done = carry_out_orders(executor, orders / "n2")
    assert len(done) == 2 and "asked to stop" in done[0] and "ignored" in done[1], done
    wait_until(lambda: executor.poll(ordered).state.is_terminal, 30, 0.05, "the ordered replica stops")
    assert executor.poll(other).state is ReplicaState.RUNNING  # not named: left running
    assert list((orders / "n2").iterdir()) == []  # every order is taken once
    with pytest.raises(ValueError, match="cannot name an orders directory"):
        write_order(orders, "../n3", other, grace_s=0)
    with socket.socket() as head:  # the watchdog's loop takes orders while the node is healthy
        head.bind(("127.0.0.1", 0))
        head.listen()
        write_order(orders, "n2", other, grace_s=0)
        watching = threading.Thread(target=watch, args=(tmp_path, f"127.0.0.1:{head.getsockname()[1]}",
                                                        os.getpid(), 60.0, orders / "n2"), daemon=True)
        watching.start()
        wait_until(lambda: executor.poll(other).state.is_terminal, 30, 0.05, "the second order carried out")
    executor.close()


def test_the_agent_samples_the_gpus_its_node_declares_as_the_server_knows_them(tmp_path: Path) -> None:
    env = {"GPUPOOL_AGENT_HOME": str(tmp_path / "agent"), "GPUPOOL_AGENT_NODE_NAME": "n2",
           "GPUPOOL_AGENT_GPUS": "2xT4-16GB"}
    agent = NodeAgent("10.0.0.2", 8.0, 4096, env=env)
    sample = agent.sample_gpus(123.0)
    known = node_from_description(agent.describe(), "gpupool-agent-n2")  # the server's view of the node
    assert sample.time == 123.0
    assert [(r.index, r.uuid) for r in sample.gpus] == [(g.index, g.uuid) for g in known.node.gpus]
    assert [r.memory_total_bytes for r in sample.gpus] == [16 * 1024**3] * 2
    bare = NodeAgent("10.0.0.3", 8.0, 4096, env={"GPUPOOL_AGENT_HOME": str(tmp_path / "agent3")})
    assert bare.sample_gpus(5.0).gpus == ()  # no declared GPUs: an empty sample
    agent.close()
    bare.close()
