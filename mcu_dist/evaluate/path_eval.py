"""Path evaluation: at each t of the grid, BN recalibration at θ(t), then every metric in one pass.

The t points are independent: by default they are evaluated in chunks of ``accel.eval_chunk``
points (0: the whole grid) that share each pass over the data (evaluate/batched.py); chunk 1 is the
per-point evaluation below. With ``eval.workers`` > 1 (0: one per core) they are evaluated by a
pool of processes, each holding the experiment's data once and receiving θ(t) as a state dict. The
path table (one row per t) is the main artifact of a run; it is written as Parquet.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor

import torch

from mcu_dist.evaluate.bn import bn_set_positions, recalibrate_bn
from mcu_dist.evaluate.inference import in_eval_layout
from mcu_dist.evaluate.metrics import avg_gap
from mcu_dist.evaluate.point import evaluate_model
from mcu_dist.evaluate.selection import gap_cal
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.bezier import BezierCurve


def model_at(curve: BezierCurve, t: float, lab: Lab, calib: torch.Tensor):
    """θ(t) as a plain model with BN statistics re-estimated at θ(t)."""
    return recalibrate_bn(curve.materialize(t), lab, calib, lab.cfg.eval.batch_size)


def evaluate_point(model, lab: Lab, t: float, calib: torch.Tensor) -> dict:
    """One row of the path table; ``model`` (θ(t), a fresh module) is re-estimated in the evaluation
    layout, as the batched evaluation does it."""
    start = time.perf_counter()
    model = recalibrate_bn(in_eval_layout(model, lab), lab, calib, lab.cfg.eval.batch_size)
    return {"t": float(t), **evaluate_model(model, lab), "seconds": time.perf_counter() - start}


def eval_workers(lab: Lab, points: int) -> int:
    """Processes for the grid: 1 for data only this process holds (the Python API), else eval.workers."""
    if lab.model_factory is not None or lab.bundle.name == "user":
        return 1
    wanted = lab.cfg.eval.workers or (os.cpu_count() or 1)
    return max(1, min(wanted, points))


def evaluate_path(
    curve: BezierCurve, lab: Lab, grid: list[float], cal: CalTargets, retrain_row: dict[str, float] | None
) -> list[dict]:
    calib = bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    workers = eval_workers(lab, len(grid))
    if workers == 1 and lab.cfg.accel.eval_chunk != 1:  # several t per pass over the data
        from mcu_dist.evaluate.batched import evaluate_grid

        rows = evaluate_grid(curve, lab, grid, calib)
    elif workers == 1:
        rows = [evaluate_point(curve.materialize(t), lab, t, calib) for t in grid]
    else:
        threads = max(1, torch.get_num_threads() // workers)
        with ProcessPoolExecutor(
            workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(dataclasses.asdict(lab.cfg), threads),
        ) as pool:
            states = [{k: v.cpu() for k, v in curve.materialize(t).state_dict().items()} for t in grid]
            rows = list(pool.map(_evaluate_in_worker, grid, states))
    for row in rows:
        row["gap_cal"] = gap_cal(row["RA"], row["FA"], cal)
        if retrain_row is not None:
            row["avg_gap"] = avg_gap(row, retrain_row)
    return rows


_WORKER: dict = {}


def _init_worker(cfg: dict, threads: int) -> None:
    from mcu_dist.config import ExperimentConfig, from_dict

    torch.set_num_threads(threads)
    lab = Lab.build(from_dict(ExperimentConfig, cfg))
    _WORKER.update(lab=lab, calib=bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval))


def _evaluate_in_worker(t: float, state: dict) -> dict:
    lab = _WORKER["lab"]
    model = lab.new_model()
    model.load_state_dict(state)
    return evaluate_point(model, lab, t, _WORKER["calib"])
