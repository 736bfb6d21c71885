"""Batched path evaluation: a chunk of t points evaluated in one pass over each data set.

For a chunk {t_1..t_m} of the grid, θ(t_i) is materialised as m plain models. BN recalibration at
every θ(t_i) — each model its own statistics, reset and re-estimated with a cumulative average as
in bn.py — takes one pass over the calibration set: each batch is gathered and normalised once and
run through all m models in train mode. Then one pass over D_r, D_f, D_test (and the forgotten
classes' test set) runs each batch through all m models in eval mode; softmax outputs stay on the
device until the pass ends. Every metric is then computed from those outputs by the same function
as the per-point evaluation (point.row_from_outputs): the MIA uses the same shadow sets and the
same classifier. The SVC fits (libsvm releases the GIL) run on host threads, one per torch thread,
while the next chunk's forward passes run.

Speed: data preparation is shared by the m points; after recalibration each model runs as every
evaluated model does (evaluate/inference.py: BatchNorm folded into the convolutions, channels_last),
on CUDA under the lab's bf16 autocast, on a CPU ``accel.cpu_forward_batch`` samples per forward call.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from mcu_dist.data.loader import iterate
from mcu_dist.data.registry import ImageData
from mcu_dist.evaluate.inference import eval_copy, in_eval_layout
from mcu_dist.evaluate.metrics import Outputs, forward_in_pieces
from mcu_dist.evaluate.point import row_from_outputs
from mcu_dist.lab import Lab
from mcu_dist.path.bezier import BezierCurve, has_batchnorm


@torch.no_grad()
def recalibrate_many(models: list[nn.Module], lab: Lab, positions: torch.Tensor, batch_size: int) -> None:
    """bn.recalibrate_bn for every model, from one pass over the calibration batches."""
    models = [m for m in models if has_batchnorm(m)]
    if not models:
        return
    saved = []
    for m in models:
        norms = [b for b in m.modules() if isinstance(b, nn.modules.batchnorm._BatchNorm)]
        saved.append([(b, b.momentum) for b in norms])
        for b in norms:
            b.reset_running_stats()
            b.momentum = None
        m.train()
    with lab.autocast():
        for batch in iterate(lab.bundle.train, positions, batch_size, lab.normalize, device=lab.device):
            for m in models:
                m(batch.x)
    for m, norms in zip(models, saved, strict=True):
        for b, momentum in norms:
            b.momentum = momentum
        m.eval()


@torch.no_grad()
def predict_many(
    models: list[nn.Module], lab: Lab, data: ImageData, positions: torch.Tensor, batch_size: int
) -> list[Outputs]:
    """metrics.predict for every model, from one pass over the batches."""
    probs: list[list[torch.Tensor]] = [[] for _ in models]
    labels = []
    with lab.autocast():
        for batch in iterate(data, positions, batch_size, lab.normalize, device=lab.device, merge_tail=False):
            for i, m in enumerate(models):
                probs[i].append(
                    torch.softmax(forward_in_pieces(m, batch.x, lab.forward_piece).float(), dim=1)
                )
            labels.append(batch.y)
    if not labels:
        empty = torch.empty(0)
        return [Outputs(empty.bool(), empty, empty, empty.long()) for _ in models]
    y = torch.cat(labels).cpu()
    out = []
    for p in probs:
        p = torch.cat(p).cpu()
        out.append(Outputs(p.argmax(1) == y, p.gather(1, y.view(-1, 1)).flatten(), p, y))
    return out


def models_at(curve: BezierCurve, lab: Lab, ts: list[float], calib: torch.Tensor) -> list[nn.Module]:
    """θ(t) for each t, BN re-estimated at each (one pass over the calibration batches), as evaluated."""
    models = [in_eval_layout(curve.materialize(t), lab) for t in ts]
    recalibrate_many(models, lab, calib, lab.cfg.eval.batch_size)
    return [eval_copy(m, lab) for m in models]


def chunks(grid: list[float], size: int) -> list[list[float]]:
    size = size or len(grid)
    return [grid[i : i + size] for i in range(0, len(grid), size)]


def evaluate_grid(
    curve: BezierCurve, lab: Lab, grid: list[float], calib: torch.Tensor, chunk: int | None = None
) -> list[dict]:
    """One row per t, as path_eval.evaluate_point gives it (``seconds``: the point's share of its chunk)."""
    cfg, s, b = lab.cfg.eval, lab.splits, lab.bundle
    chunk = lab.cfg.accel.eval_chunk if chunk is None else chunk
    threads = max(1, min(len(grid), torch.get_num_threads()))
    rows: list = []
    with ThreadPoolExecutor(threads) as pool:
        for ts in chunks(grid, chunk):
            start = time.perf_counter()
            models = models_at(curve, lab, ts, calib)
            retain = predict_many(models, lab, b.train, s.retain, cfg.batch_size)
            forget = predict_many(models, lab, b.train, s.forget, cfg.batch_size)
            test = predict_many(models, lab, b.test, s.test_eval, cfg.batch_size)
            forgotten = (
                predict_many(models, lab, b.test, s.test_forgotten, cfg.batch_size)
                if s.classwise
                else [None] * len(ts)
            )
            share = (time.perf_counter() - start) / len(ts)
            for i, t in enumerate(ts):
                rows.append(pool.submit(_row, t, retain[i], forget[i], test[i], forgotten[i], lab, share))
        return [r.result() for r in rows]


def _row(t, retain, forget, test, forgotten, lab: Lab, share: float) -> dict:
    start = time.perf_counter()
    row = row_from_outputs(retain, forget, test, forgotten, lab)
    return {"t": float(t), **row, "seconds": share + time.perf_counter() - start}
