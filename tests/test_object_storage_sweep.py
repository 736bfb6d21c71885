"""A sweep with no shared filesystem: ``--storage s3://bucket/prefix`` on the loopback Ray cluster, an MLflow
server whose artifact store is the same bucket, and no credential in anything logged."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from mlflow.tracking import MlflowClient

from mcu_dist.tracking import PARENT_TAG
from tests.s3_server import make_bucket
from tests.test_sweep import _check_child, _mlflow_server

pytestmark = pytest.mark.slow


def bucket_objects(bucket: str) -> dict[str, bytes]:
    import boto3

    s3, name = boto3.client("s3"), bucket[len("s3://") :]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=name)
    keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
    return {k: s3.get_object(Bucket=name, Key=k)["Body"].read() for k in keys}


def assert_no_credentials(client: MlflowClient, experiment: str, objects: dict, *texts: str) -> None:
    """Neither the key id nor the secret in any param, tag, metric name, object in the bucket, or output."""
    secrets = [os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"]]
    exp = client.get_experiment_by_name(experiment)
    for run in client.search_runs([exp.experiment_id], max_results=1000):
        logged = repr(run.data.params) + repr(run.data.tags) + repr(sorted(run.data.metrics))
        assert not any(s in logged for s in secrets), run.info.run_id
    for key, body in objects.items():
        assert not any(s.encode() in body for s in secrets), key
    for text in texts:
        assert not any(s in text for s in secrets)


def test_smoke_sweep_on_s3_with_mlflow_artifacts_in_the_bucket(ray_cluster, s3, tmp_path):
    bucket = make_bucket(f"mcu-{uuid.uuid4().hex[:12]}")
    server, url = _mlflow_server(tmp_path, artifacts=f"{bucket}/mlartifacts")
    cwd = tmp_path / "job"
    cwd.mkdir()
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mcu_dist.sweep",
                "--smoke-test",
                "--storage",
                f"{bucket}/sweeps",
                "--tracking-uri",
                url,
                "--name",
                "s3smoke",
            ],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=cwd,
            env={**os.environ},
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        client = MlflowClient(url)
        exp = client.get_experiment_by_name("s3smoke")
        runs = client.search_runs([exp.experiment_id])
        children = [r for r in runs if PARENT_TAG in r.data.tags]
        assert len(children) == 2
        for child in children:
            _check_child(client, child)
        objects = bucket_objects(bucket)
        keys = sorted(objects)
        assert len([k for k in keys if k.startswith("sweeps/cache/models/original-")]) == 1
        assert len([k for k in keys if k.startswith("sweeps/cache/models/retrain-")]) == 1
        assert not [k for k in keys if k.endswith(".lease")]
        assert any(k.startswith("sweeps/s3smoke/experiment_state-") for k in keys)  # Tune's state
        assert {"sweeps/s3smoke/trials.parquet", "sweeps/s3smoke/summary.json"} <= set(keys)
        tables = [k for k in keys if k.endswith("path/path_table.parquet")]
        assert len([k for k in tables if k.startswith("sweeps/s3smoke/trials/")]) == 2  # trial folders
        assert len([k for k in tables if k.startswith("mlartifacts/")]) == 2  # MLflow's artifact store
        assert list(cwd.iterdir()) == []  # nothing written on the driver's local disk
        assert_no_credentials(client, "s3smoke", objects, proc.stdout, proc.stderr)
    finally:
        from tests.ray_cluster import stop_group

        stop_group(server)


def _terminated(experiment_dir: str) -> set[str]:
    """Trial ids that Tune's experiment state in the bucket records as TERMINATED."""
    import json

    from mcu_dist import fs

    done = set()
    for name in fs.list_names(experiment_dir):
        if name.startswith("experiment_state-") and name.endswith(".json"):
            try:
                trials = json.loads(fs.read_bytes(f"{experiment_dir}/{name}"))["trial_data"]
            except (ValueError, KeyError, OSError):
                continue
            states = [json.loads(entry[0]) for entry in trials]
            done |= {t["trial_id"] for t in states if t.get("status") == "TERMINATED"}
    return done


def test_resume_on_s3_after_the_driver_is_killed(ray_cluster, s3, tmp_path):
    import signal
    import time

    from tests.test_sweep import _runs, _space, _sweep_flags

    bucket = make_bucket(f"mcu-{uuid.uuid4().hex[:12]}")
    space = _space(tmp_path, {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}}, 3, max_concurrent=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = _sweep_flags(space, tmp_path, uri, "s3resume")
    flags[flags.index("--storage") + 1] = f"{bucket}/sweeps"
    args = [sys.executable, "-m", "mcu_dist.sweep", *flags]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    driver = subprocess.Popen(args, start_new_session=True, **quiet)
    deadline = time.time() + 600
    while time.time() < deadline and driver.poll() is None and not _terminated(f"{bucket}/sweeps/s3resume"):
        time.sleep(1)
    assert driver.poll() is None, "the sweep ended before the driver could be killed"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    done = _terminated(f"{bucket}/sweeps/s3resume")
    proc = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, parents, children = _runs(uri, "s3resume")
    trial_ids = [c.data.tags["mcu.trial_id"] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert done <= set(trial_ids) and not (tmp_path / "storage").exists()
