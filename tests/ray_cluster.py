"""A real loopback Ray cluster for the tests: `ray start --head --block` on free ports, token auth on.

Only the processes this module starts are stopped (never `ray stop`, which would end every Ray
process on the machine).
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


@dataclass
class RayNode:
    process: subprocess.Popen
    temp_dir: str
    address: str
    dashboard: str | None
    env: dict = field(default_factory=dict)

    def stop(self) -> None:
        stop_group(self.process, grace=10)


def stop_group(proc: subprocess.Popen, grace: float = 30) -> None:
    """Ends a process started in its own session: SIGTERM to the group, SIGKILL if it outlives ``grace``
    seconds (a loaded machine can take longer than that to shut an MLflow server down cleanly)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)


LOOPBACK = {
    # Ray resolves 127.0.0.1 to the machine's routable address unless cluster mode is off; off keeps every
    # process of the test cluster (head, drivers, jobs) on loopback.
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
}


def ray_env(token: str) -> dict:
    return {**os.environ, **LOOPBACK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


WORKER_PORTS = 400
_blocks = itertools.count()


def _worker_port_block() -> int:
    """A block of worker ports below the kernel's ephemeral range (where free_ports draws the nodes' other
    ports), distinct for every node this process starts and, by the pid, for other test runs."""
    start = 10000 + (os.getpid() % 20) * 1000
    for _ in range(50):
        low = 10000 + (start - 10000 + next(_blocks) * WORKER_PORTS) % 22000
        if _block_free(low):
            return low
    raise RuntimeError("no free block of worker ports below 32768")


def _block_free(low: int) -> bool:
    for port in range(
        low, low + WORKER_PORTS, 50
    ):  # a sample: a block in use by another cluster shows up here
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _node_args(num_cpus: int, resources: str | None) -> list[str]:
    gcs, manager, objects, client, agent, agent_grpc, runtime_env, metrics = free_ports(8)
    low = _worker_port_block()
    args = [
        "--block",
        "--node-ip-address",
        "127.0.0.1",
        "--num-cpus",
        str(num_cpus),
        "--node-manager-port",
        str(manager),
        "--object-manager-port",
        str(objects),
        "--dashboard-agent-listen-port",
        str(agent),
        "--dashboard-agent-grpc-port",
        str(agent_grpc),
        "--runtime-env-agent-port",
        str(runtime_env),
        "--metrics-export-port",
        str(metrics),
        "--min-worker-port",
        str(low),
        "--max-worker-port",
        str(low + WORKER_PORTS - 1),
    ]
    if resources:
        args += ["--resources", resources]
    return args, gcs, client


def start_head(
    num_cpus: int = 4, token: str | None = None, resources: str | None = None, timeout: float = 120
) -> RayNode:
    token = token or secrets.token_hex(24)
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    args, gcs, client = _node_args(num_cpus, resources)
    dashboard = free_ports(1)[0]
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--head",
        "--port",
        str(gcs),
        "--ray-client-server-port",
        str(client),
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(dashboard),
        "--temp-dir",
        temp_dir,
        *args,
    ]
    env = ray_env(token)
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(proc, temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dashboard}", env)
    _wait_ready(node, timeout)
    return node


# `ray start --address` refuses to join when cluster mode is off (LOOPBACK); the worker's own CLI check is
# switched back on here while address resolution stays on loopback.
_JOIN = (
    "import sys, types, ray._private.ray_constants as rc, ray.scripts.scripts as s;"
    "s.ray_constants = types.SimpleNamespace(**{**vars(rc), 'ENABLE_RAY_CLUSTER': True});"
    "sys.argv = ['ray', *sys.argv[1:]]; s.main()"
)


def start_worker(
    head: RayNode, num_cpus: int = 2, resources: str | None = None, timeout: float = 120
) -> RayNode:
    """A second node joining ``head``; returns once the cluster sees it."""
    temp_dir = tempfile.mkdtemp(prefix="rayw", dir="/tmp")
    args, _, _ = _node_args(num_cpus, resources)
    cmd = [sys.executable, "-c", _JOIN, "start", "--address", head.address, *args]
    log = open(Path(temp_dir) / "ray_start.log", "w")
    proc = subprocess.Popen(cmd, env=head.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = RayNode(proc, temp_dir, head.address, None, head.env)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"worker ray start exited: {(Path(temp_dir) / 'ray_start.log').read_text()[-2000:]}"
            )
        if "Ray runtime started" in (Path(temp_dir) / "ray_start.log").read_text():
            return node
        time.sleep(1)
    node.stop()
    raise TimeoutError(f"worker node not up after {timeout} s")


def _wait_ready(node: RayNode, timeout: float) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if node.process.poll() is not None:
            raise RuntimeError(
                f"ray start exited: {(Path(node.temp_dir) / 'ray_start.log').read_text()[-2000:]}"
            )
        try:
            req = urllib.request.Request(
                f"{node.dashboard}/api/version",
                headers={"Authorization": f"Bearer {node.env['RAY_AUTH_TOKEN']}"},
            )
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    node.stop()
    raise TimeoutError(f"Ray head not ready after {timeout} s")
