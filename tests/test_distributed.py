"""Ray Train DDP curve training: N workers equal one worker; a killed worker resumes from its checkpoint.

Two TorchTrainer start-ups in all (each ~50 s on a 2-core machine); everything else is in-process.
"""

from __future__ import annotations

import copy
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from mcu_dist.config import ConfigError, with_overrides
from mcu_dist.experiment import run_experiment
from mcu_dist.lab import Lab
from mcu_dist.path.bezier import curve_between
from mcu_dist.path.mask import compute_mask
from mcu_dist.train.distributed import check_resources, fit_distributed
from mcu_dist.train.mcu import calibration_targets, train_curve
from mcu_dist.train.reference import original_model
from tests.conftest import digits_config

pytestmark = pytest.mark.slow

NOBN = {
    "model.name": "small_cnn_nobn",
    "reference.epochs": 4,
    "mcu.batch_size": 64,
    "mcu.k": 0.3,
    "scale.cpus_per_worker": 0.5,
    "eval.t_points": 3,
}


def _cache_files(cfg) -> set[str]:
    return {p.name for p in (Path(cfg.cache_dir) / "models").glob("*.pt")}


def test_two_workers_equal_one_worker_and_reference_models_train_once(ray_cluster, tmp_path):
    one_cfg = digits_config(
        tmp_path,
        **NOBN,
        **{"baselines.methods": ["ft"], "mcu.beta_schedule": ["adaptive_step"], "mcu.epochs": 2},
    )
    one = run_experiment(one_cfg, tmp_path / "one", log=lambda *_: None)
    cached = _cache_files(one_cfg)
    # original, retrain, ft and ft's compute-matched control: trained once, by the first run
    assert sorted(name.split("-")[0] for name in cached) == ["baseline", "budget", "original", "retrain"]
    two_cfg = with_overrides(one_cfg, {"scale.workers": 2, "scale.storage": str(tmp_path / "ray")})
    two = run_experiment(two_cfg, tmp_path / "two", log=lambda *_: None)
    assert _cache_files(two_cfg) == cached  # the distributed run trained no reference model again
    a, b = one.paths["ft+mcu_beta"], two.paths["ft+mcu_beta"]
    assert len(a.steps) == len(b.steps) > 0
    assert [s["beta"] for s in a.steps] == [s["beta"] for s in b.steps]
    assert any(s["beta"] > 0 for s in a.steps)
    assert [(s["n_f"], s["n_r"]) for s in a.steps] == [(s["n_f"], s["n_r"]) for s in b.steps]
    control_a, control_b = a.curve.control_state(), b.curve.control_state()
    for key, value in control_a.items():
        assert torch.allclose(value, control_b[key], atol=1e-5, rtol=0), key
    assert b.t_star == a.t_star


def _kill_a_worker_after_a_checkpoint(storage: Path, done: threading.Event, killed: list) -> None:
    """SIGKILL one Ray Train worker once the controller has registered a checkpoint (its snapshot file)."""
    from ray.util.state import list_actors

    pids: list[int] = []
    while not done.is_set() and not pids:  # find the workers first, so the kill itself is immediate
        pids = sorted(
            a.pid
            for a in list_actors(filters=[("state", "=", "ALIVE")], detail=True)
            if "TrainWorker" in a.class_name
        )
        time.sleep(0.2)
    while not done.is_set():
        if (storage / "checkpoint_manager_snapshot.json").exists():
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])
            return
        time.sleep(0.02)


def test_killed_worker_resumes_from_its_checkpoint(ray_cluster, tmp_path):
    cfg = digits_config(
        tmp_path,
        **{
            **NOBN,
            "mcu.epochs": 12,
            "mcu.batch_size": 16,
            "scale.workers": 2,
            "scale.max_failures": 1,
            "scale.storage": str(tmp_path / "ray"),
        },
    )
    lab = Lab.build(cfg)
    original, _ = original_model(lab, lab.cache)
    endpoint = copy.deepcopy(original)
    with torch.no_grad():
        for p in endpoint.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(0)))
    cal = calibration_targets(original, lab, classwise=True)
    selected = compute_mask(original, lab, cfg.mcu.k, cfg.mcu.k_r).selected
    uninterrupted = curve_between(original, endpoint, 2, selected)
    reference = train_curve(uninterrupted, lab, cfg.mcu, "adaptive_step", cal, cfg.seeds.unlearn)

    done, killed = threading.Event(), []
    watcher = threading.Thread(
        target=_kill_a_worker_after_a_checkpoint,
        args=(tmp_path / "ray" / "killed", done, killed),
        daemon=True,
    )
    watcher.start()
    curve = curve_between(original, endpoint, 2, selected)
    try:
        state = fit_distributed(lab, original, endpoint, curve, "adaptive_step", cal, "killed")
    finally:
        done.set()
    assert killed, "the run finished before a worker could be killed"
    assert len(state.attempts) == 2 and state.attempts[0] == 0
    assert 0 < state.attempts[1] < cfg.mcu.epochs  # resumed from a checkpoint, not from scratch
    assert state.epoch == cfg.mcu.epochs
    assert [s["step"] for s in state.steps] == list(range(len(reference.steps)))
    assert [s["beta"] for s in state.steps] == [s["beta"] for s in reference.steps]
    for key, value in uninterrupted.control_state().items():
        assert torch.allclose(value, curve.control_state()[key], atol=1e-5, rtol=0), key


def test_placement_is_checked_before_any_worker_starts(tmp_path):
    cfg = digits_config(tmp_path, **{"scale.workers": 8, "scale.cpus_per_worker": 1.0})
    with pytest.raises(ConfigError, match=r"scale\.workers"):
        check_resources(cfg, {"CPU": 4.0})
    gpu = copy.deepcopy(cfg)
    gpu.scale.workers, gpu.scale.gpu = 2, True
    with pytest.raises(ConfigError, match=r"scale\.gpu"):
        check_resources(gpu, {"CPU": 4.0})
    check_resources(with_overrides(cfg, {"scale.workers": 2}), {"CPU": 4.0})


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without GPUs")
def test_gpu_flag_without_a_gpu_fails_fast(ray_cluster, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mcu_dist.run",
            "--workers",
            "2",
            "--gpu",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(tmp_path / "runs"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "scale.gpu" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "c" / "models").exists() or not any((tmp_path / "c" / "models").glob("*.pt"))
