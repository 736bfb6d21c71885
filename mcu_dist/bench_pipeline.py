"""Where a path's time goes: seconds, samples/s and peak device memory per stage of the pipeline.

``python -m mcu_dist.bench --pipeline`` (CPU: the CIFAR-10 subset, small CNN; ``--gpu``: full
CIFAR-10, ResNet-18, the paper's evaluation settings) adds these rows:

- ``stage``: the original and the retrained model (``--ref-epochs`` epochs of the reference recipe;
  seconds per epoch given, so a longer recipe can be extrapolated and labelled as such), one
  baseline (FT at its defaults), the mask, and one MCU-β path: curve training (``mcu.epochs``) and
  path evaluation (the t grid with BN recalibration and MIA, batched, plus θ(t*) with every feature).
  On CUDA, the GPU utilisation sampled by nvidia-smi during curve training.
- ``epoch``: an FT epoch against curve epochs over the same sample stream: fixed β unmasked,
  adaptive β unmasked, fixed β with the k-mask (each after one warm-up epoch).
- ``eval``: per-point against batched evaluation of the trained curve on the same grid, and the
  largest difference of any metric between the two; on a CPU, the grid's D_test pass in whole
  evaluation batches against forward pieces of ``accel.cpu_forward_batch`` samples.
"""

from __future__ import annotations

import copy
import subprocess
import threading
import time

import torch

from mcu_dist.baselines import BASELINES
from mcu_dist.config import ExperimentConfig, with_overrides
from mcu_dist.evaluate.batched import evaluate_grid, models_at, predict_many
from mcu_dist.evaluate.bn import bn_set_positions
from mcu_dist.evaluate.path_eval import evaluate_point
from mcu_dist.lab import Lab
from mcu_dist.path.bezier import curve_between
from mcu_dist.path.mask import compute_mask
from mcu_dist.pipeline import run_path
from mcu_dist.train.fit import cross_entropy, fit, sgd
from mcu_dist.train.mcu import calibration_targets, retain_sample, train_curve
from mcu_dist.train.reference import train_supervised

GAP_KEYS = ("RA", "UA", "TA", "MIA")


def pipeline_lab(
    device: str, subset: int | None, model: str, ref_epochs: int, t_points: int, cache: str
) -> Lab:
    over = {
        "data.dataset": "cifar10",
        "data.subset": subset,
        "model.name": model,
        "forget.spec": "random:0.1",
        "device": device,
        "cache_dir": cache,
        "reference.epochs": ref_epochs,
        "eval.t_points": t_points,
    }
    if device != "cpu":  # the paper's setting (tune_spaces/cifar10_resnet18.yaml)
        over.update({"reference.lr": 0.1, "eval.bn_set": "train", "eval.batch_size": 1024})
    cfg = with_overrides(ExperimentConfig(), over)
    cfg.validate()
    return Lab.build(cfg)


def _sync(lab: Lab) -> None:
    if lab.device.type == "cuda":
        torch.cuda.synchronize(lab.device)


class Stage:
    """Times one stage (device synchronised) and records its peak device memory."""

    def __init__(self, lab: Lab, rows: list[dict], name: str, samples: int | None, **extra):
        self.lab, self.rows, self.name, self.samples, self.extra = lab, rows, name, samples, extra

    def __enter__(self):
        _sync(self.lab)
        if self.lab.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.lab.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        _sync(self.lab)
        seconds = time.perf_counter() - self.start
        if exc[0] is not None:
            return False
        peak = (
            torch.cuda.max_memory_allocated(self.lab.device) / 2**30
            if self.lab.device.type == "cuda"
            else None
        )
        row = {"bench": "stage", "stage": self.name, "model": self.lab.cfg.model.name, "seconds": seconds}
        row.update({"samples_per_s": self.samples / seconds if self.samples else None, "peak_gib": peak})
        row.update(self.extra)
        if "epochs" in self.extra:
            row["per_epoch_s"] = seconds / self.extra["epochs"]
        self.rows.append(row)
        print(format_row(row), flush=True)
        return False


class GpuSampler:
    """nvidia-smi's utilisation.gpu every 100 ms in a background thread: (time, percent) pairs."""

    def __init__(self):
        self.samples: list[tuple[float, float]] = []
        self.proc = None

    def __enter__(self):
        try:
            self.proc = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "100"],
                stdout=subprocess.PIPE,
                text=True,
            )
        except OSError:
            return self
        threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self):
        for line in self.proc.stdout:
            if line.strip().isdigit():
                self.samples.append((time.perf_counter(), float(line)))

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait()
        return False

    def mean(self, lo: float, hi: float) -> float | None:
        inside = [u for s, u in self.samples if lo <= s <= hi]
        return sum(inside) / len(inside) if inside else None


def stage_rows(lab: Lab, rows: list[dict]) -> tuple:
    """Original, retrain, FT baseline, mask, one MCU-β path; returns (original, curve) for the other rows."""
    cfg, s = lab.cfg, lab.splits
    n_ref = lab.recipe.epochs
    with Stage(lab, rows, "original", n_ref * len(lab.all_train), epochs=n_ref):
        original = train_supervised(lab, lab.all_train, cfg.seeds.model)
    with Stage(lab, rows, "retrain", n_ref * len(s.retain), epochs=n_ref):
        train_supervised(lab, s.retain, cfg.seeds.model)
    ft = BASELINES["ft"]
    hp = ft.resolve()
    with Stage(lab, rows, "baseline ft", hp["epochs"] * len(s.retain), epochs=hp["epochs"]):
        endpoint = ft.run(copy.deepcopy(original), lab, hp, cfg.seeds.unlearn)
    with Stage(
        lab, rows, "mask + calibration targets", len(s.forget) + len(lab.all_train) + len(s.test_eval)
    ):
        mask = compute_mask(original, lab, cfg.mcu.k, cfg.mcu.k_r)
        cal = calibration_targets(original, lab, s.classwise)
    stream = len(s.forget) + max(1, round(cfg.mcu.retain_fraction * len(s.retain)))
    calib = len(bn_set_positions(lab, cfg.eval, cfg.seeds.eval))
    per_t = calib + len(s.retain) + len(s.forget) + len(s.test_eval)
    _sync(lab)
    if lab.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(lab.device)
    with GpuSampler() as gpu:
        start = time.perf_counter()
        result = run_path(lab, original, endpoint, "adaptive_step", mask, cal, None)
    curve_s, eval_s = result.seconds["curve"], result.seconds["path_eval"]
    peak = torch.cuda.max_memory_allocated(lab.device) / 2**30 if lab.device.type == "cuda" else None
    util = gpu.mean(start + 0.5, start + curve_s) if lab.device.type == "cuda" else None
    for name, seconds, samples, extra in (
        (
            "MCU-β curve training",
            curve_s,
            cfg.mcu.epochs * stream,
            {"epochs": cfg.mcu.epochs, "gpu_util": util},
        ),
        (
            "path evaluation (grid + θ(t*))",
            eval_s,
            len(cfg.eval.grid()) * per_t,
            {"t_points": len(cfg.eval.grid())},
        ),
    ):
        row = {"bench": "stage", "stage": name, "model": cfg.model.name, "seconds": seconds}
        row.update({"samples_per_s": samples / seconds, "peak_gib": peak, **extra})
        if name.startswith("MCU"):
            row["per_epoch_s"] = seconds / cfg.mcu.epochs
        rows.append(row)
        print(format_row(row), flush=True)
    rows.append(
        {
            "bench": "stage",
            "stage": "one MCU path (curve + evaluation)",
            "model": cfg.model.name,
            "seconds": curve_s + eval_s,
        }
    )
    print(format_row(rows[-1]), flush=True)
    return original, endpoint, result.curve


def epoch_rows(lab: Lab, original, endpoint, rows: list[dict], k: float = 0.1) -> None:
    """FT epoch vs curve epochs on the same sample stream (fixed/adaptive β, unmasked/masked)."""
    cfg = copy.deepcopy(lab.cfg.mcu)
    cfg.epochs = 1
    s = lab.splits
    stream = torch.cat([s.forget, retain_sample(s.retain, cfg.retain_fraction, 0)])
    cal = calibration_targets(original, lab, s.classwise)
    model = copy.deepcopy(original)
    opt = sgd(model.parameters(), 0.01, 0.9, 0.0)

    def ft_epoch(seed):
        fit(
            model,
            1,
            lambda e: lab.batches(stream, cfg.batch_size, seed=seed, epoch=e),
            cross_entropy,
            opt,
            cosine=False,
            autocast=lab.autocast,
        )

    def curve_epoch(selected, schedule):
        curve = curve_between(original, endpoint, 2, selected).to(lab.device)
        return lambda seed: train_curve(curve, lab, cfg, schedule, cal, seed)

    names = [n for n, _ in original.named_parameters()]
    masked = compute_mask(original, lab, k, 0.0).selected
    variants = [
        ("FT epoch", ft_epoch),
        ("curve epoch, fixed β", curve_epoch(names, "fixed")),
        ("curve epoch, adaptive β", curve_epoch(names, "adaptive_step")),
        (f"curve epoch, fixed β, k={k} mask", curve_epoch(masked, "fixed")),
    ]
    base = None
    for name, run in variants:
        run(100)  # warm-up: cuDNN autotuning, allocator
        with Stage(lab, rows, name, len(stream)) as st:
            run(101)
        row = st.rows[-1]
        row["bench"] = "epoch"
        base = base or row["seconds"]
        row["ratio_to_ft"] = row["seconds"] / base
        print(f"  ratio to FT epoch: {row['ratio_to_ft']:.3f}", flush=True)


def eval_rows(lab: Lab, curve, rows: list[dict]) -> None:
    """Per-point against batched evaluation of one curve on the same grid."""
    grid = lab.cfg.eval.grid()
    calib = bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    with Stage(lab, rows, "path evaluation per point", None, t_points=len(grid)) as st:
        one = [evaluate_point(curve.materialize(t), lab, t, calib) for t in grid]
    per_point = st.rows[-1]
    with Stage(lab, rows, "path evaluation batched", None, t_points=len(grid)) as st:
        many = evaluate_grid(curve, lab, grid, calib)
    batched = st.rows[-1]
    gap = max(abs(a[k] - b[k]) for a, b in zip(one, many, strict=True) for k in GAP_KEYS)
    for row in (per_point, batched):
        row["bench"] = "eval"
    batched["speedup"] = per_point["seconds"] / batched["seconds"]
    batched["max_metric_gap"] = gap
    print(
        f"  batched speed-up {batched['speedup']:.2f}x; largest metric difference {gap:.3f} points",
        flush=True,
    )
    if lab.forward_piece:
        piece_rows(lab, curve, grid, calib, rows)


def piece_rows(lab: Lab, curve, grid: list[float], calib: torch.Tensor, rows: list[dict]) -> None:
    """The grid's D_test pass (BN re-estimated, folded models) in whole evaluation batches against
    forward pieces of ``accel.cpu_forward_batch`` samples (CPU only)."""
    models = models_at(curve, lab, grid, calib)
    accel, piece, test = lab.cfg.accel, lab.forward_piece, lab.splits.test_eval
    timed = []
    for name, size in (("whole batches", 0), (f"pieces of {piece}", piece)):
        accel.cpu_forward_batch = size
        try:
            with Stage(lab, rows, f"D_test pass of {len(grid)} models, {name}", len(grid) * len(test)) as st:
                outputs = predict_many(models, lab, lab.bundle.test, test, lab.cfg.eval.batch_size)
        finally:
            accel.cpu_forward_batch = piece
        st.rows[-1]["bench"] = "eval"
        timed.append((st.rows[-1], outputs))
    (whole, a), (pieces, b) = timed
    pieces["speedup"] = whole["seconds"] / pieces["seconds"]
    pieces["max_metric_gap"] = max(abs(x.accuracy - y.accuracy) for x, y in zip(a, b, strict=True))
    print(f"  pieces {pieces['speedup']:.2f}x faster; largest TA difference {pieces['max_metric_gap']:.3f}")


def format_row(r: dict) -> str:
    parts = [
        f"{r['bench']:<6}",
        f"{r.get('stage', ''):<38}",
        f"{r.get('model', ''):<10}",
        f"{r['seconds']:>9.2f} s",
    ]
    for key, fmt in (
        ("per_epoch_s", "{:.2f} s/epoch"),
        ("samples_per_s", "{:,.0f} samples/s"),
        ("peak_gib", "peak {:.2f} GiB"),
        ("gpu_util", "GPU util {:.0f}%"),
        ("ratio_to_ft", "{:.3f}x FT"),
        ("speedup", "{:.2f}x faster"),
    ):
        if r.get(key) is not None:
            parts.append(fmt.format(r[key]))
    return "  ".join(parts)


def markdown(rows: list[dict], device: str, header: str) -> str:
    lines = [
        header,
        "",
        "| row | stage | seconds | s/epoch | samples/s | peak GiB | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        note = []
        if r.get("gpu_util") is not None:
            note.append(f"GPU util {r['gpu_util']:.0f}%")
        if r.get("ratio_to_ft") is not None:
            note.append(f"{r['ratio_to_ft']:.3f}× FT epoch")
        if r.get("speedup") is not None:
            note.append(f"{r['speedup']:.2f}× faster; max metric gap {r['max_metric_gap']:.3f}")
        if r.get("epochs") is not None:
            note.append(f"{r['epochs']} epochs")
        cells = [r["bench"], r.get("stage", ""), f"{r['seconds']:.2f}"]
        cells.append(f"{r['per_epoch_s']:.2f}" if r.get("per_epoch_s") is not None else "–")
        cells.append(f"{r['samples_per_s']:,.0f}" if r.get("samples_per_s") is not None else "–")
        cells.append(f"{r['peak_gib']:.2f}" if r.get("peak_gib") is not None else "–")
        cells.append("; ".join(note))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"device: {device}")
    return "\n".join(lines)
