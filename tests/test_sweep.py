"""The sweep for real: `ray job submit` to a loopback cluster, a real MLflow server, a failing trial,
and `--resume` after the driver is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from mcu_dist import sweep as sweep_cli
from mcu_dist.config import EvalConfig
from mcu_dist.tracking import PARENT_TAG, TRIAL_TAG, t_step
from tests.ray_cluster import free_ports

pytestmark = pytest.mark.slow

SMALL = {
    "reference.epochs": 2,
    "mcu.epochs": 1,
    "eval.t_points": 5,
    "eval.mia_cap": 200,
    "eval.bn_set_size": 256,
    "baselines.methods": ["ft"],
}


def _space(tmp_path: Path, search: dict, num_samples: int, **sweep) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "fixed": {"data.dataset": "digits", "forget.spec": "classes:1", **SMALL},
                "search": search,
                "sweep": {"num_samples": num_samples, **sweep},
            }
        )
    )
    return path


def _runs(uri: str, experiment: str):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if PARENT_TAG not in r.data.tags]
    children = [r for r in runs if PARENT_TAG in r.data.tags]
    return client, parents, children


def _sweep_flags(space: Path, tmp_path: Path, uri: str, name: str) -> list[str]:
    return [
        "--space",
        str(space),
        "--storage",
        str(tmp_path / "storage"),
        "--tracking-uri",
        uri,
        "--name",
        name,
    ]


def _check_child(client: MlflowClient, run, t_points: int = 5) -> None:
    assert run.info.status == "FINISHED"
    grid = EvalConfig(t_points=t_points).grid()
    assert [m.step for m in client.get_metric_history(run.info.run_id, "path/UA")] == [
        t_step(t) for t in grid
    ]
    assert {"avg_gap", "gap_cal", "t_star", "UA", "RA", "TA", "MIA", "rte_min"} <= set(run.data.metrics)
    assert "mcu.k" in run.data.params and "data.dataset" in run.data.params
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    inner = {a.path for a in client.list_artifacts(run.info.run_id, "path")}
    assert {"config.yaml", "forget_manifest.parquet", "path", "path.png"} <= top
    assert {
        "path/path_table.parquet",
        "path/path.png",
        "path/mask.json",
        "path/unlearned_t_star.pt",
        "path/steps.parquet",
    } <= inner


def test_ray_job_submit_runs_the_smoke_sweep_into_mlflow(ray_cluster, tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "job",
        "submit",
        "--address",
        ray_cluster.dashboard,
        "--",
        sys.executable,
        "-m",
        "mcu_dist.sweep",
        "--smoke-test",
        "--storage",
        str(tmp_path / "storage"),
        "--tracking-uri",
        uri,
    ]
    proc = subprocess.run(cmd, env=ray_cluster.env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    # a quiet console: one line per trial, a labelled table, the URL; no Tune boxes, no library warnings
    out = proc.stdout + proc.stderr
    assert "[1/2]" in out and "[2/2]" in out and "Top 2 of 2 trials by avg_gap" in out
    assert "MLflow runs, best first: http://127.0.0.1:5000/#/experiments/" in out
    for noise in ("Trial status", "╭", "TensorBoard", "ExperimentalWarning", "View run"):
        assert noise not in out, noise
    client, parents, children = _runs(uri, "mcu-default")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2
    assert {c.data.tags[PARENT_TAG] for c in children} == {parents[0].info.run_id}
    for child in children:
        _check_child(client, child)
    assert "trials.parquet" in {a.path for a in client.list_artifacts(parents[0].info.run_id)}
    # artifacts live beside the database, not in the job's throw-away working directory
    assert any((tmp_path / "mlartifacts").rglob("path_table.parquet"))


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(ray_cluster, tmp_path, capsys):
    # "json:loads" imports fine but is no model factory: such a trial fails at run time, after its run started
    space = _space(
        tmp_path,
        {
            "model.name": {"type": "categorical", "choices": ["small_cnn", "json:loads"]},
            "mcu.k": {"type": "float", "low": 0.2, "high": 1.0},
        },
        4,
        max_concurrent=2,
    )
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = sweep_cli.main(_sweep_flags(space, tmp_path, uri, "failing"))
    assert code == 1  # the sweep finishes, and its exit code says that trials failed
    # the final table names each failed trial and its cause, not Ray's wrapper (actor, pid, colour codes)
    table = [line for line in capsys.readouterr().out.splitlines() if " failed: " in line]
    assert table and all(line.split(" failed: ")[1].startswith("TypeError: ") for line in table), table
    assert not any("\x1b[" in line or "ray::" in line for line in table), table
    client, parents, children = _runs(uri, "failing")
    assert parents[0].info.status == "FINISHED" and len(children) == 4
    failed = [c for c in children if c.info.status == "FAILED"]
    finished = [c for c in children if c.info.status == "FINISHED"]
    assert failed and finished, [(c.data.params.get("model.name"), c.info.status) for c in children]
    assert all(c.data.params["model.name"] == "json:loads" for c in failed)
    assert all("TypeError" in c.data.tags["mcu.error"] for c in failed)
    for child in finished:
        _check_child(client, child)
    assert parents[0].data.metrics["failed"] == len(failed)


def test_resume_after_the_driver_is_killed_does_not_duplicate_trials(ray_cluster, tmp_path):
    space = _space(tmp_path, {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}}, 3, max_concurrent=1)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    args = [sys.executable, "-m", "mcu_dist.sweep", *_sweep_flags(space, tmp_path, uri, "resumable")]
    driver = subprocess.Popen(
        args, env={**os.environ}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 600
    first_done = None
    while time.time() < deadline and first_done is None and driver.poll() is None:
        time.sleep(1)
        done_in_tune = _terminated_in_tune_state(tmp_path / "storage" / "resumable")
        if done_in_tune and (tmp_path / "mlflow.db").exists():
            _, _, children = _runs(uri, "resumable")
            first_done = next(
                (
                    c
                    for c in children
                    if c.data.tags[TRIAL_TAG] in done_in_tune and c.info.status == "FINISHED"
                ),
                None,
            )
    assert first_done is not None and driver.poll() is None, "no trial finished while the driver ran"
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    proc = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    client, parents, children = _runs(uri, "resumable")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    trial_ids = [c.data.tags[TRIAL_TAG] for c in children]
    assert len(trial_ids) == len(set(trial_ids)) == 3, trial_ids
    assert all(c.info.status == "FINISHED" for c in children)
    again = next(c for c in children if c.info.run_id == first_done.info.run_id)
    assert again.info.end_time == first_done.info.end_time  # the finished trial was not run again


def _terminated_in_tune_state(experiment_dir: Path) -> set[str]:
    """Trial ids that Tune's saved experiment state records as TERMINATED (what --resume will not re-run)."""
    import json

    done = set()
    for state in experiment_dir.glob("experiment_state-*.json"):
        try:
            trials = json.loads(state.read_text())["trial_data"]
        except (ValueError, KeyError, OSError):  # being written
            continue
        for entry in trials:
            trial = json.loads(entry[0])
            if trial.get("status") == "TERMINATED":
                done.add(trial["trial_id"])
    return done


def _mlflow_server(tmp_path: Path, artifacts: str | None = None) -> tuple[subprocess.Popen, str]:
    """A tracking server on loopback; its artifact store is ``artifacts`` (a folder or s3://...)."""
    (port,) = free_ports(1)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            artifacts or str(tmp_path / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("mlflow server did not come up")


def test_trial_logs_to_a_real_mlflow_server(tmp_path):
    from mcu_dist.tracking import KIND_TAG, Tracker
    from mcu_dist.trial import TrialContext, run_trial
    from mcu_dist.tune_space import load_space

    proc, url = _mlflow_server(tmp_path)
    try:
        space = load_space(_space(tmp_path, {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}}, 1))
        space.fixed["cache_dir"] = str(tmp_path / "cache")
        tracker = Tracker(url, "served")
        parent = tracker.start_run("sweep", {KIND_TAG: "sweep"})
        ctx = TrialContext(space, url, "served", parent, "t0001", tmp_path / "trial")
        metrics = run_trial({"mcu.k": 0.5}, ctx)
        tracker.end_run(parent)
        client, parents, children = _runs(url, "served")
        assert len(children) == 1 and children[0].data.metrics["avg_gap"] == pytest.approx(metrics["avg_gap"])
        _check_child(client, children[0])
        assert any((tmp_path / "artifacts").rglob("path_table.parquet"))  # stored by the server
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def test_trials_logging_one_dataset_at_once_all_keep_it(tmp_path):
    """Concurrent trials log the same datasets as run inputs; the server creates each dataset row once and
    the trials that lose that race must still end up with it (found failing in CI: a FAILED trial)."""
    import threading

    from mcu_dist.tracking import Tracker

    proc, url = _mlflow_server(tmp_path)
    try:
        tracker, width, rounds = Tracker(url, "race"), 6, 8
        new_run = tracker.start_run
        runs = [[new_run(f"r{i}-{j}", {}, reuse=False) for j in range(width)] for i in range(rounds)]
        errors: list[BaseException] = []
        for i, row in enumerate(runs):
            gate = threading.Barrier(width)

            def log(run_id: str, i: int = i, gate: threading.Barrier = gate) -> None:
                gate.wait()
                try:
                    data = {"name": f"data{i}", "digest": f"{i:012d}", "source": "x", "context": "train"}
                    tracker.log_datasets(run_id, [data, {**data, "name": f"forget{i}", "context": "forget"}])
                except BaseException as e:  # noqa: BLE001 - collected, asserted below
                    errors.append(e)

            threads = [threading.Thread(target=log, args=(r,)) for r in row]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        assert not errors, errors[0]
        client = MlflowClient(url)
        for row in runs:
            for run_id in row:
                assert len(client.get_run(run_id).inputs.dataset_inputs) == 2
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)


def _refused_smoke_sweep(tmp_path: Path, *flags: str, env: dict | None = None, timeout: int = 300):
    """A smoke sweep that must be refused: (the process, seconds it took)."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "mcu_dist.sweep", "--smoke-test", "--storage", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    return proc, time.time() - start


def test_unreachable_tracking_server_fails_fast(tmp_path):
    (port,) = free_ports(1)
    proc, took = _refused_smoke_sweep(
        tmp_path,
        "--tracking-uri",
        f"http://127.0.0.1:{port}",
    )
    assert "--tracking-uri" in proc.stderr.strip().splitlines()[-1]
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert took < 60  # MLflow's own retries alone would take minutes


def test_unreachable_ray_cluster_fails_fast(tmp_path):
    (port,) = free_ports(1)
    proc, took = _refused_smoke_sweep(
        tmp_path,
        "--tracking-uri",
        f"sqlite:///{tmp_path / 'm.db'}",
        "--address",
        f"127.0.0.1:{port}",
        timeout=120,
    )
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --address")
    assert took < 60
