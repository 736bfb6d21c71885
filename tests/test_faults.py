"""Faults, as a flaky cluster and a bad setting bring them: a diverged curve or baseline ends FAILED with the
reason and leaves nothing in the cache; a trial whose process dies is closed FAILED by the driver with the
cause Ray reports, and the sweep's exit code says so; two sweeps started together on a new sqlite store
both finish."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from torch import nn

from mcu_dist.guard import DivergenceError
from mcu_dist.tracking import PARENT_TAG, TRIAL_TAG
from tests.conftest import digits_config
from tests.test_sweep import SMALL as SWEEP_SMALL

# The sweep tests' small trial, on one digits class.
SMALL = {"data.dataset": "digits", "forget.spec": "classes:1", **SWEEP_SMALL}


def _children(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return [r for r in runs if PARENT_TAG in r.data.tags]


def test_a_diverged_curve_ends_its_trial_failed_with_the_reason(tmp_path, digits_lab, digits_original):
    from mcu_dist.trial import TrialContext, run_trial
    from mcu_dist.tune_space import parse_space

    space = parse_space(
        {
            # the session's cached θ_o and θ_r (θ_r is also the endpoint: no baseline to train)
            "fixed": {
                **SMALL,
                "reference.epochs": 8,
                "cache_dir": digits_lab.cfg.cache_dir,
                "baselines.methods": ["retrain"],
                "mcu.lr": 1e6,
            },
            "search": {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}},
        }
    )
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    ctx = TrialContext(space, uri, "diverged", None, "t0001", tmp_path / "trial")
    with pytest.raises(DivergenceError, match=r"^curve training diverged: L_[rf] = "):
        run_trial({"mcu.k": 1.0}, ctx)
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("diverged").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["mcu.error"].startswith("DivergenceError: curve training diverged")
    assert "avg_gap" not in run.data.metrics  # nothing was reported as a result


def test_a_diverged_baseline_never_enters_the_cache(tmp_path, digits_lab, digits_original):
    from mcu_dist.lab import Lab
    from mcu_dist.references import baseline_model
    from mcu_dist.store import ModelCache

    cfg = digits_config(tmp_path, **{"baselines.params": {"ga": {"lr": 1e9}}})
    lab = Lab(cfg, digits_lab.bundle, digits_lab.splits, digits_lab.device, ModelCache(tmp_path / "cache"))
    with pytest.raises(DivergenceError, match=r"^baseline ga diverged: "):
        baseline_model(lab, "ga", digits_original)
    assert not list((tmp_path / "cache").rglob("baseline-ga-*.pt"))


def test_a_diverged_reference_model_stops_the_run_with_one_line(tmp_path, capsys):
    from mcu_dist import run

    code = run.main(
        [
            "--smoke-test",
            "--reference-epochs",
            "1",
            "--config",
            str(_yaml(tmp_path, {"reference": {"lr": 1e9}})),
            "--cache-dir",
            str(tmp_path / "cache"),
            "--out",
            str(tmp_path / "runs"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("error: reference model original diverged: loss = ")
    assert not list((tmp_path / "cache").rglob("*.pt"))  # not cached
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # no run folder yet


def _yaml(tmp: Path, data: dict) -> Path:
    path = tmp / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _start(module: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_sweeps_on_a_new_sqlite_store_while_trials_are_killed_and_diverge(ray_cluster, tmp_path):
    """Two sweeps start together on one new sqlite store. One is a grid where one model's trials die in
    their process (as on OOM or node loss) and one learning rate diverges: only its sound cell finishes,
    every other run is FAILED with its cause, and it exits 1 saying so. The other finishes cleanly."""
    grid, space = tmp_path / "grid.yaml", tmp_path / "space.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "fixed": SMALL,
                "grid": {
                    "model.name": ["small_cnn", "tests.fault_models:dies_in_trial"],
                    "mcu.lr": [0.01, 1e6],
                },
                "sweep": {"max_concurrent": 2},
            }
        )
    )
    space.write_text(
        yaml.safe_dump(
            {
                "fixed": SMALL,
                "search": {"mcu.k": {"type": "float", "low": 0.2, "high": 1.0}},
                "sweep": {"num_samples": 1, "max_concurrent": 1},
            }
        )
    )
    uri = f"sqlite:///{tmp_path / 'fresh' / 'm.db'}"
    common = ["--storage", str(tmp_path / "st"), "--tracking-uri", uri]
    faults = _start("mcu_dist.ablate", "--grid", str(grid), *common, "--name", "faults")
    clean = _start("mcu_dist.sweep", "--space", str(space), *common, "--name", "clean")
    (_, faults_err), (_, clean_err) = faults.communicate(timeout=900), clean.communicate(timeout=900)

    assert clean.returncode == 0, clean_err[-3000:]
    (child,) = _children(uri, "clean")
    assert child.info.status == "FINISHED" and child.data.tags[TRIAL_TAG]

    assert faults.returncode == 1 and "error: 3 of 4 trials failed" in faults_err, faults_err[-3000:]
    children = _children(uri, "faults")
    assert len(children) == 4 and not [c for c in children if c.info.status == "RUNNING"]
    by_cell = {(c.data.params["model.name"], float(c.data.params["mcu.lr"])): c for c in children}
    assert by_cell[("small_cnn", 0.01)].info.status == "FINISHED"
    diverged = by_cell[("small_cnn", 1e6)]
    assert diverged.info.status == "FAILED" and "curve training diverged" in diverged.data.tags["mcu.error"]
    for lr in (0.01, 1e6):
        killed = by_cell[("tests.fault_models:dies_in_trial", lr)]
        assert killed.info.status == "FAILED"
        assert "died" in killed.data.tags["mcu.error"].lower(), killed.data.tags["mcu.error"]


def test_a_truncated_cache_entry_is_moved_aside_and_retrained(tmp_path, capsys):
    from mcu_dist.store import ModelCache

    cache = ModelCache(tmp_path)
    builds = []

    def build() -> nn.Module:
        builds.append(1)
        torch.manual_seed(len(builds))
        return nn.Linear(4, 2)

    first, _ = cache.get("original", {"k": 1}, nn.Linear(4, 2), build)
    entry = cache.path("original", {"k": 1})
    entry.write_bytes(entry.read_bytes()[:100])  # a copy killed half-way, a full disk
    again, _ = cache.get("original", {"k": 1}, nn.Linear(4, 2), build)
    assert len(builds) == 2  # trained again, not an error that blocks every later run
    assert torch.equal(again.weight, build_weight(2)) and not torch.equal(again.weight, first.weight)
    assert len(list(tmp_path.rglob("original-*.corrupt-*.pt"))) == 1  # kept aside for inspection
    assert "moved to" in capsys.readouterr().err
    third, _ = cache.get("original", {"k": 1}, nn.Linear(4, 2), build)  # and now a plain hit
    assert len(builds) == 2 and torch.equal(third.weight, again.weight)


def build_weight(n: int) -> torch.Tensor:
    torch.manual_seed(n)
    return nn.Linear(4, 2).weight.detach()


def test_a_non_finite_model_never_enters_the_cache(tmp_path):
    from mcu_dist.store import ModelCache

    cache = ModelCache(tmp_path)

    def build() -> nn.Module:
        model = nn.Linear(4, 2)
        with torch.no_grad():
            model.bias[0] = float("nan")
        return model

    with pytest.raises(DivergenceError, match=r"^original diverged: tensor bias holds non-finite values"):
        cache.get("original", {"k": 1}, nn.Linear(4, 2), build)
    assert not list(tmp_path.rglob("*.pt"))
