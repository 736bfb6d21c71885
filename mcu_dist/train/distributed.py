"""Curve training on Ray Train (DDP): the same ``train_curve`` loop as in-process, one process per worker.

- The driver obtains θ_o and θ_p (through the model cache) before workers start and writes them once
  under the run's storage; workers only load them.
- Sharding follows the global batch (``mcu_dist.data.loader``); the same t on every rank per step;
  β from all-reduced global counts; gradients summed across ranks with losses normalised by the
  global forget/retain counts, so N workers with global batch B equal one worker with batch B.
- Rank 0 reports a checkpoint every epoch (control points, optimiser state, epoch, step log, RNG
  state); after a worker dies, Ray Train restarts the group and ``ray.train.get_checkpoint()``
  resumes from the latest one.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from mcu_dist import fs
from mcu_dist.config import ConfigError, ExperimentConfig, from_dict
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.bezier import BezierCurve, curve_between, has_batchnorm
from mcu_dist.path.checkpoint import check_endpoints, curve_meta
from mcu_dist.store import load_checkpoint, load_model, save_checkpoint, save_model
from mcu_dist.train.mcu import CurveState, TorchDistComm, make_optimizer, train_curve

STATE_FILE = "curve_state.pt"


def save_state(path: Path, curve: BezierCurve, optimizer: torch.optim.Optimizer, state: CurveState) -> None:
    """The curve-training checkpoint: control points, optimiser and RNG state, epoch, step log, restarts,
    and the endpoints' digests (a checkpoint of other endpoints is refused on restore)."""
    save_checkpoint(
        path,
        "curve_training",
        curve.control_state(),
        {
            **curve_meta(curve),
            "epoch": state.epoch,
            "steps": json.dumps(state.steps),
            "seconds": state.seconds,
            "attempts": state.attempts,
        },
        {"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()},
    )


def restore(curve: BezierCurve, optimizer: torch.optim.Optimizer | None, path: Path) -> CurveState:
    ckpt = load_checkpoint(path, "curve checkpoint", kind="curve_training")
    check_endpoints(curve, ckpt.header, str(path))
    curve.load_control_state(ckpt.state)
    if optimizer is not None:
        optimizer.load_state_dict(ckpt.extra["optimizer"])
    torch.set_rng_state(ckpt.extra["rng"])
    h = ckpt.header
    return CurveState(int(h["epoch"]), json.loads(h["steps"]), float(h["seconds"]), list(h["attempts"]))


def worker_loop(config: dict) -> None:
    """The body of every Ray Train worker."""
    import ray.train
    import ray.train.torch

    cfg = from_dict(ExperimentConfig, config["experiment"])
    device = ray.train.torch.get_device() if cfg.scale.gpu else torch.device("cpu")
    cfg.device = str(device)
    lab = Lab.build(cfg)
    models = []
    for key in ("original", "endpoint"):
        model, _ = load_model(lab.new_model(), config[key], key)
        models.append(model.to(device).eval())
    curve = curve_between(*models, cfg.mcu.curve_order, config["selected"]).to(device)
    comm = TorchDistComm()
    if cfg.scale.gpu and comm.world_size > 1 and has_batchnorm(curve.base):
        curve.base = nn.SyncBatchNorm.convert_sync_batchnorm(curve.base)
    optimizer = make_optimizer(curve, cfg.mcu)
    state = CurveState()
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state = restore(curve, optimizer, Path(d) / STATE_FILE)
    state.attempts.append(state.epoch)

    def on_epoch_end(st: CurveState, opt: torch.optim.Optimizer) -> None:
        last = st.steps[-1] if st.steps else {}
        metrics = {
            "epoch": st.epoch,
            "resumed_from": st.attempts[-1],
            "attempts": len(st.attempts),
            "loss_r": last.get("loss_r"),
            "loss_f": last.get("loss_f"),
            "beta": last.get("beta"),
        }
        if comm.rank == 0:
            with tempfile.TemporaryDirectory() as d:
                save_state(Path(d) / STATE_FILE, curve, opt, st)
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))
        else:
            ray.train.report(metrics)

    cal = CalTargets(**config["targets"])
    train_curve(
        curve,
        lab,
        cfg.mcu,
        config["schedule"],
        cal,
        cfg.seeds.unlearn,
        comm=comm,
        optimizer=optimizer,
        state=state,
        per_rank_t=cfg.scale.per_rank_t,
        on_epoch_end=on_epoch_end,
    )


def connect(cfg: ExperimentConfig) -> None:
    """Join the configured (or RAY_ADDRESS) cluster, or start a local instance; then check placement."""
    import ray

    if not ray.is_initialized():
        address = cfg.scale.address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, log_to_driver=False) if address else ray.init(log_to_driver=False)
    check_resources(cfg, ray.cluster_resources())


def check_resources(cfg: ExperimentConfig, available: dict) -> None:
    """Fail fast instead of waiting forever for workers that cannot be placed."""
    s = cfg.scale
    need_cpu = s.workers * s.cpus_per_worker
    if need_cpu > available.get("CPU", 0):
        raise ConfigError(
            f"scale.workers: {s.workers} workers x {s.cpus_per_worker} CPU need {need_cpu} CPUs, the "
            f"cluster has {available.get('CPU', 0)}; allowed: workers x cpus_per_worker <= cluster CPUs"
        )
    if s.gpu and s.workers > available.get("GPU", 0):
        raise ConfigError(
            f"scale.gpu: {s.workers} GPU workers need {s.workers} GPUs, the cluster has "
            f"{int(available.get('GPU', 0))}; allowed: workers <= cluster GPUs, or no --gpu"
        )


def fit_distributed(
    lab: Lab,
    original: nn.Module,
    endpoint: nn.Module,
    curve: BezierCurve,
    schedule: str,
    cal: CalTargets,
    name: str,
) -> CurveState:
    """Train ``curve`` with ``lab.cfg.scale.workers`` Ray Train workers; loads the result into ``curve``."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = lab.cfg
    if lab.model_factory is not None or lab.bundle.name in ("user", "synthetic"):
        raise ConfigError(
            "scale.workers: data or a model given in-process (Python API, synthetic benchmark data) "
            "cannot reach Ray Train workers; allowed: 1 worker, or a registered dataset and model"
        )
    connect(cfg)
    storage = cfg.scale.storage or fs.join(
        cfg.cache_dir if fs.is_remote(cfg.cache_dir) else Path(cfg.cache_dir).resolve(), "ray_storage"
    )
    paths = {}
    for key, model in (("original", original), ("endpoint", endpoint)):
        paths[key] = fs.join(storage, name, f"{key}.pt")
        if not fs.exists(paths[key]):
            save_model(model, paths[key])
    experiment = asdict(cfg)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "experiment": experiment,
            **paths,
            "selected": sorted(curve.selected),
            "schedule": schedule,
            "targets": asdict(cal),
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.scale.workers,
            use_gpu=cfg.scale.gpu,
            resources_per_worker={"CPU": cfg.scale.cpus_per_worker},
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scale.gpu else "gloo"),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage,
            failure_config=ray.train.FailureConfig(max_failures=cfg.scale.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"curve training {name} finished without a checkpoint: {result.error}")
    with result.checkpoint.as_directory() as d:
        return restore(curve, None, Path(d) / STATE_FILE)
