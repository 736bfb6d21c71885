"""Where the heavy stages of a sweep run: reference and baseline training as Ray tasks, trial resources.

With ``sweep.reference_gpus`` > 0 the sweep/ablate driver trains no model itself. Per reference cell
it submits the original and the retrained model as two independent tasks, and each offered baseline
(at its default settings) as a task that waits for its cell's original; every cell's tasks go out
at once, so Ray runs as many side by side as the cluster's resources allow. A task asks
``sweep.reference_cpus`` CPUs and ``sweep.reference_gpus`` of ``sweep.gpu_resource`` ("GPU"; on a
machine without one a custom resource stands in) and trains on CUDA when that resource is a real
GPU. It writes into the shared model cache exactly as the driver would — the same keys, the same
file lock or lease — so the cache must be on storage every node reaches (a shared mount or a bucket).

A trial asks ``sweep.cpus_per_trial`` CPUs and ``sweep.gpus_per_trial`` of ``sweep.gpu_resource``;
fractions pack trials (0.25: four trials share a GPU). A trial whose curve runs on Ray Train DDP
keeps ``scale.workers`` GPUs in its Train workers; its own ``gpus_per_trial`` share (0: none) is where
its path evaluation runs.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from mcu_dist.config import ConfigError, ExperimentConfig


def uses_gpu(gpus: float, resource: str) -> bool:
    return gpus > 0 and resource == "GPU"


def trial_resources(sweep) -> dict[str, float]:
    """Tune's resource request for one trial."""
    out = {"CPU": float(sweep.cpus_per_trial)}
    if sweep.gpus_per_trial > 0:
        out[sweep.gpu_resource] = float(sweep.gpus_per_trial)
    return out


def task_options(cpus: float, gpus: float, resource: str) -> dict[str, Any]:
    """``ray.remote(...).options`` for a task asking ``cpus`` CPUs and ``gpus`` of ``resource``."""
    opts: dict[str, Any] = {"num_cpus": cpus, "max_retries": 1}
    if gpus > 0:
        if resource == "GPU":
            opts["num_gpus"] = gpus
        else:
            opts["resources"] = {resource: gpus}
    return opts


def check_sweep_resources(sweep, base: ExperimentConfig) -> None:
    """Checks that need the base config, before Ray starts (one error line naming the field)."""
    if base.device.startswith("cuda") and sweep.reference_gpus == 0:
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"sweep.reference_gpus: got 0 with device {base.device!r} on a driver without a GPU; "
                "allowed: > 0 to train the reference models on the cluster's GPUs, or device: cpu"
            )


def check_cluster(sweep, available: dict[str, float]) -> None:
    """Fail fast instead of waiting forever for tasks or trials that cannot be placed."""
    for field, amount in (("reference_gpus", sweep.reference_gpus), ("gpus_per_trial", sweep.gpus_per_trial)):
        have = available.get(sweep.gpu_resource, 0)
        if amount > have:
            raise ConfigError(
                f"sweep.{field}: got {amount!r}, the cluster has {have:g} {sweep.gpu_resource}; allowed: "
                f"at most the cluster's {sweep.gpu_resource} (or 0)"
            )


def reference_config(cfg: ExperimentConfig, sweep) -> dict:
    """The cell's config as a task trains it: on CUDA when the task holds a real GPU."""
    cfg = dataclasses.replace(cfg)
    if uses_gpu(sweep.reference_gpus, sweep.gpu_resource):
        cfg.device = "cuda"
    return dataclasses.asdict(cfg)


def train_reference(cfg: dict, what: str, after: dict | None = None) -> dict:
    """One Ray task: ``original``, ``retrain`` or ``baseline:<method>`` of one cell, into the shared cache."""
    import ray

    from mcu_dist.config import from_dict
    from mcu_dist.lab import Lab
    from mcu_dist.references import baseline_model
    from mcu_dist.train.reference import original_model, retrained_model

    start = time.time()
    lab = Lab.build(from_dict(ExperimentConfig, cfg))
    if what == "original":
        original_model(lab, lab.cache)
    elif what == "retrain":
        retrained_model(lab, lab.cache)
    else:
        original, _ = original_model(lab, lab.cache)  # a cache hit: the task ran after its original
        baseline_model(lab, what.partition(":")[2], original)
    return {
        "what": what,
        "trained": list(lab.cache.trained),
        "start": start,
        "end": time.time(),
        "resources": dict(ray.get_runtime_context().get_assigned_resources()),
        "pid": os.getpid(),
        "device": str(lab.device),
        "after": after["what"] if after else None,
    }


def prepare_remote(space, cells: list[dict], log=print) -> list[dict]:
    """Every cell's reference and default baseline models as Ray tasks; returns one record per task."""
    import ray

    sweep = space.sweep
    check_cluster(sweep, ray.cluster_resources())
    task = ray.remote(train_reference).options(
        **task_options(sweep.reference_cpus, sweep.reference_gpus, sweep.gpu_resource)
    )
    refs = []
    for cell in cells:
        cfg = reference_config(space.trial_config(cell), sweep)
        original = task.remote(cfg, "original")
        refs += [original, task.remote(cfg, "retrain")]
        refs += [task.remote(cfg, f"baseline:{m}", original) for m in space.methods()]
    records = ray.get(refs)
    trained = sum(len(r["trained"]) for r in records)
    log(
        f"shared models ready: {len(records)} Ray tasks ({sweep.reference_cpus:g} CPU, "
        f"{sweep.reference_gpus:g} {sweep.gpu_resource} each), {trained} trained now, the rest from the cache"
    )
    return records
