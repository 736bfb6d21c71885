"""Multi-node for real: a head and a second node (two `ray start` processes on loopback), shared storage
or an S3 bucket (no shared path), an MLflow server; ablations whose trials run on both nodes, then a node
lost mid-grid.

The module runs its own two-node cluster (not the session one) and kills a node: keep it last.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcu_dist import fs
from tests.ray_cluster import start_head, start_worker, stop_group
from tests.s3_server import make_bucket
from tests.test_sweep import _mlflow_server

pytestmark = pytest.mark.slow

SMALL = {
    "data.dataset": "digits",
    "reference.epochs": 3,
    "mcu.epochs": 2,
    "mcu.batch_size": 32,
    "eval.t_points": 5,
    "eval.mia_cap": 200,
    "eval.bn_set_size": 256,
}


@pytest.fixture(scope="module")
def two_nodes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    head = start_head(num_cpus=1, token=os.environ["RAY_AUTH_TOKEN"])
    worker = start_worker(head, num_cpus=1)
    server, url = _mlflow_server(tmp)
    try:
        yield head, worker, url, tmp
    finally:
        stop_group(server)
        worker.stop()
        head.stop()


def _grid(tmp, name: str, grid: dict, **sweep) -> str:
    path = tmp / f"{name}.yaml"
    path.write_text(
        yaml.safe_dump({"fixed": SMALL, "grid": grid, "sweep": {"name": name, "max_concurrent": 2, **sweep}})
    )
    return str(path)


def _ablate(head, url: str, tmp, grid: str, storage: str | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mcu_dist.ablate",
            "--grid",
            grid,
            "--storage",
            storage or str(tmp / "shared"),
            "--tracking-uri",
            url,
        ],
        env={**head.env, "RAY_ADDRESS": head.address},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _children(url: str, experiment: str):
    client = MlflowClient(url)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    return [r for r in client.search_runs([exp.experiment_id]) if "mlflow.parentRunId" in r.data.tags]


def test_ablation_runs_trials_on_both_nodes_and_reports(two_nodes):
    head, _, url, tmp = two_nodes
    grid = _grid(tmp, "spread", {"baseline": ["ga", "rl"], "seed": [0, 1]})
    proc = _ablate(head, url, tmp, grid)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    children = _children(url, "spread")
    assert len(children) == 4 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["mcu.node_id"] for c in children}) == 2  # both nodes ran trials
    assert len(list((tmp / "shared" / "cache" / "models").glob("original-*.pt"))) == 2  # one per seed, shared
    rep = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcu_dist.report",
            "--experiment",
            "spread",
            "--tracking-uri",
            url,
            "--out",
            str(tmp / "report"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stderr[-2000:]
    text = (tmp / "report" / "report.md").read_text()
    for row in ("| Retrain |", "| ga |", "| ga+mcu_beta |", "| rl |", "| rl+mcu_beta |"):
        assert row in text
    assert "| 2 |" in text  # mean ± std over the two seeds


def test_no_shared_path_the_grid_on_s3_spreads_and_trains_the_cache_once(two_nodes, s3):
    head, _, url, tmp = two_nodes
    bucket = make_bucket(f"mcu-{uuid.uuid4().hex[:12]}")
    grid = _grid(tmp, "s3spread", {"baseline": ["ga", "rl"], "seed": [0]})
    proc = _ablate(head, url, tmp, grid, storage=f"{bucket}/ablate")
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    children = _children(url, "s3spread")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert len({c.data.tags["mcu.node_id"] for c in children}) == 2  # both nodes ran trials
    models = fs.list_names(f"{bucket}/ablate/cache/models")
    assert len([m for m in models if m.startswith("original-")]) == 1  # trained once, read by both nodes
    assert not [m for m in models if m.endswith(".lease")]


def test_losing_the_worker_node_mid_grid_reschedules_its_trials(two_nodes, s3):
    """On object storage, as on a cloud cluster: the lost node leaves nothing behind that others need."""
    head, worker, url, tmp = two_nodes
    grid = _grid(tmp, "lossy", {"baseline": ["ga", "rl", "ft"], "seed": [0, 1]}, max_failures=2)
    proc = _ablate(head, url, tmp, grid, storage=f"{make_bucket(f'mcu-{uuid.uuid4().hex[:12]}')}/ablate")
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        runs = _children(url, "lossy")
        if (
            sum(r.info.status == "FINISHED" for r in runs) >= 1
            and sum(r.info.status == "RUNNING" for r in runs) >= 1
        ):
            break
        time.sleep(1)
    assert proc.poll() is None, "the grid finished before the node could be lost"
    os.killpg(worker.process.pid, signal.SIGKILL)
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-3000:]
    children = _children(url, "lossy")
    trial_ids = [c.data.tags["mcu.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 6
    assert all(c.info.status == "FINISHED" for c in children), [
        (c.data.tags["mcu.trial_id"], c.info.status) for c in children
    ]
