"""End to end: the CLI on digits, its artifacts, its errors, and the Python API."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from mcu_dist.experiment import run_experiment
from tests.conftest import digits_config


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mcu_dist.run", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_smoke_run_prints_the_table_and_writes_every_artifact(tmp_path):
    proc = _cli(
        "--smoke-test",
        "--methods",
        "ft,ga",
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    for model in ("Original", "Retrain", "ft", "ft+BN", "ft+line", "ft+mcu", "ft+mcu_beta", "ga+mcu_beta"):
        assert f"\n{model} " in proc.stdout
    (run,) = (tmp_path / "runs").iterdir()
    results = pq.read_table(run / "results.parquet").to_pylist()
    assert [r["model"] for r in results] == [
        "Original",
        "Retrain",
        "ft",
        "ft+BN",
        "ft+line",
        "ft+budget",
        "ft+mcu",
        "ft+mcu_beta",
        "ga",
        "ga+BN",
        "ga+line",
        "ga+budget",
        "ga+mcu",
        "ga+mcu_beta",
    ]
    assert results[1]["avg_gap"] == 0.0
    # the original's accuracy on all of D, printed with the recipe that trained it
    assert results[0]["recipe"] == "standard" and 0 <= results[0]["train_acc"] <= 100
    assert "Original (reference recipe standard): training accuracy" in proc.stdout
    for r in results:  # every row carries intervals, the +BN control's included
        for m in ("UA", "RA", "TA", "MIA"):
            assert r[f"{m}_lo"] - 1e-9 <= r[m] <= r[f"{m}_hi"] + 1e-9, (r["model"], m)
        assert r["avg_gap_lo"] <= r["avg_gap_hi"]
        if "+mcu" in r["model"]:
            assert 0 < r["mask_fraction"] <= 1 and r["beta_mean"] >= 0
            assert r["RTE"] == pytest.approx(r["RTE_base"] + r["RTE_curve"] + r["RTE_eval"])
        if "+mcu" in r["model"] or "+line" in r["model"]:
            assert 0.75 <= r["t_star"] <= 1.0
    assert (run / "config.yaml").is_file() and (run / "forget_manifest.parquet").is_file()
    path = run / "paths" / "ga+mcu_beta"
    for name in (
        "path_table.parquet",
        "steps.parquet",
        "path.png",
        "mask.json",
        "unlearned_t_star.pt",
        "curve.pt",
    ):
        assert (path / name).is_file(), name
    table = pq.read_table(path / "path_table.parquet").to_pylist()
    assert [r["t"] for r in table] == [0.0, 0.25, 0.5, 0.75, 1.0]
    ckpt = torch.load(path / "unlearned_t_star.pt", weights_only=True)
    assert ckpt["header"]["t"] == results[-1]["t_star"] and ckpt["header"]["kind"] == "model"
    curve = torch.load(path / "curve.pt", weights_only=True)
    assert curve["header"]["kind"] == "curve" and curve["header"]["order"] == 2


@pytest.mark.parametrize(
    "args,field",
    [
        (["--dataset", "mnist"], "data.dataset"),
        (["--model", "resnet9000"], "model.name"),
        (["--methods", "ft,unknown"], "baselines.methods"),
        (["--forget", "random:1.5"], "forget.spec"),
        (["--k", "2"], "mcu.k"),
        (["--dataset", "cifar100", "--data-root", "/nonexistent"], "data.data_root"),
        (["--curve-order", "1"], "mcu.curve_order"),
    ],
)
def test_bad_input_stops_with_one_line_before_any_compute(tmp_path, args, field):
    proc = _cli(*args, "--cache-dir", str(tmp_path / "c"), "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and field in lines[0] and "allowed" in lines[0]
    assert not (tmp_path / "runs").exists()
    assert not any((tmp_path / "c").rglob("*.pt")) if (tmp_path / "c").exists() else True


def test_class_not_in_dataset_fails_before_training(tmp_path):
    proc = _cli(
        "--forget",
        "class:10",
        "--cache-dir",
        str(tmp_path / "c"),
        "--out",
        str(tmp_path / "runs"),
        cwd=tmp_path,
    )
    assert proc.returncode == 2 and "forget.spec" in proc.stderr
    assert not any((tmp_path / "c").rglob("*.pt")) if (tmp_path / "c").exists() else True


def test_user_endpoint_checkpoint_is_wrapped(tmp_path, digits_lab, digits_original):
    from mcu_dist.store import save_model

    ckpt = tmp_path / "mine.pt"
    save_model(digits_original, ckpt)
    cfg = digits_config(
        tmp_path,
        **{
            "baselines.methods": [],
            "baselines.endpoint": str(ckpt),
            "mcu.beta_schedule": ["fixed"],
            "cache_dir": digits_lab.cfg.cache_dir,
        },
    )
    result = run_experiment(cfg, tmp_path / "run", log=lambda *_: None)
    assert [r["model"] for r in result.rows] == [
        "Original",
        "Retrain",
        "endpoint",
        "endpoint+BN",
        "endpoint+line",
        "endpoint+mcu",
    ]


def test_python_api_on_tensors(digits_lab, digits_original, tmp_path):
    import copy

    import mcu_dist

    lab = digits_lab
    norm = lab.normalize

    def pair(data, pos):
        return norm(data.images[pos]), data.labels[pos]

    endpoint = copy.deepcopy(digits_original)
    with torch.no_grad():
        for p in endpoint.parameters():
            p.mul_(0.9)
    result = mcu_dist.unlearn(
        digits_original,
        endpoint,
        pair(lab.bundle.train, lab.splits.forget),
        pair(lab.bundle.train, lab.splits.retain),
        pair(lab.bundle.test, lab.splits.test_eval),
        classwise=True,
        **{"mcu.epochs": 1, "eval.t_points": 5, "eval.mia_cap": 100},
    )
    assert 0.75 <= result.t_star <= 1.0
    assert len(result.path_table) == 5 and {"RA", "UA", "TA", "MIA", "gap_cal"} <= set(result.path_table[0])
    assert isinstance(result.model, type(digits_original))
    # any point of the path can be taken away; exporting t* gives back θ(t*), BN statistics included
    exported = result.export(result.t_star, tmp_path / "t_star.pt")
    want = result.model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in exported.state_dict().items())
    ckpt = torch.load(tmp_path / "t_star.pt", weights_only=True)
    assert ckpt["header"]["t"] == result.t_star
    assert all(torch.equal(v, want[k].cpu()) for k, v in ckpt["state"].items())
