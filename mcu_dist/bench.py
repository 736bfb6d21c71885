"""``python -m mcu_dist.bench``: speed of curve training, printed as a table and written as Parquet.

Rows:
- ``curve_vs_ft``: one curve-training step (θ(t) built from the points, the network run on it,
  backward to the control points, SGD) ÷ one fine-tuning step of the plain model, same model and batch.
- ``host_step``: host time per step — FT against curve, unmasked and masked — on a model too small
  for arithmetic to matter (what bounds a curve step on a fast GPU; measurable on any CPU).
- ``mask_k``: a curve epoch with a k-mask ÷ the unmasked curve epoch, beside the bound the selected
  tensors allow: a tensor mask saves only the weight-gradient work of unselected layers, and the
  input-gradient work of the layers before the earliest selected one (estimated from per-layer
  multiply-accumulate counts, backward ≈ 2 × forward).

Synthetic CIFAR-shaped data (random pixels, random labels) by default; ``--data cifar10`` uses the
offline CIFAR-10 copy so the gradient mask sees real saliencies.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch import nn

from mcu_dist.config import ConfigError, ExperimentConfig, with_overrides
from mcu_dist.data.forget import make_splits
from mcu_dist.data.registry import DatasetBundle, ImageData
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.bezier import curve_between
from mcu_dist.path.mask import compute_mask
from mcu_dist.store import write_table, write_text
from mcu_dist.train.mcu import train_curve
from mcu_dist.validation import validate


def synthetic_bundle(
    n_train: int, n_test: int = 256, size: int = 32, classes: int = 10, seed: int = 0
) -> DatasetBundle:
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> ImageData:
        return ImageData(
            torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
            torch.randint(0, classes, (n,), generator=g),
            torch.arange(n),
        )

    return DatasetBundle(
        "synthetic",
        f"synthetic:{n_train}:{seed}",
        part(n_train),
        part(n_test),
        classes,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        augment=False,
    )


def make_lab(model: str, data: str, n_train: int, device: str, cache_dir: str) -> Lab:
    over = {"model.name": model, "forget.spec": "random:0.1", "cache_dir": cache_dir, "device": device}
    if data == "cifar10":
        cfg = with_overrides(
            ExperimentConfig(), {**over, "data.dataset": "cifar10", "data.subset": max(1, n_train // 10)}
        )
        return Lab.build(validate(cfg))
    cfg = with_overrides(ExperimentConfig(), over)
    bundle = synthetic_bundle(n_train)
    return Lab(cfg, bundle, make_splits(bundle, cfg.forget, 0), torch.device(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, n: int, warmup: int, device: torch.device) -> float:
    """Median seconds per call of ``step`` after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def ft_stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """One SGD fine-tuning step of ``model`` on the batch (x, y), as a function."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def curve_stepper(original, endpoint, selected, x, y, t_of_step, device: torch.device | str = "cpu"):
    """One curve-training step (θ(t) with t from ``t_of_step``, the network, backward to the control
    points, SGD) on the batch (x, y), as a function."""
    curve = curve_between(original, endpoint, 2, selected).to(device)
    curve.base.train()
    opt = torch.optim.SGD(curve.trainable(), lr=0.01, momentum=0.9)

    def step():
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(curve(x, t_of_step()), y).backward()
        opt.step()

    return step


def curve_vs_ft(lab: Lab, batch_size: int, steps: int) -> dict:
    torch.manual_seed(0)
    original = lab.new_model(0)
    endpoint = copy.deepcopy(original)
    x = lab.normalize(lab.bundle.train.images[:batch_size].to(lab.device))
    y = lab.bundle.train.labels[:batch_size].to(lab.device)
    ft_step = ft_stepper(copy.deepcopy(original), x, y)
    gen = torch.Generator().manual_seed(0)
    names = [n for n, _ in original.named_parameters()]
    curve_step = curve_stepper(
        original, endpoint, names, x, y, lambda: float(torch.rand(1, generator=gen)), lab.device
    )

    warm = 2
    ft_s = time_steps(ft_step, steps, warm, lab.device)
    curve_s = time_steps(curve_step, steps, warm, lab.device)
    return {
        "bench": "curve_vs_ft",
        "model": lab.cfg.model.name,
        "batch": batch_size,
        "ft_s": ft_s,
        "curve_s": curve_s,
        "ratio": curve_s / ft_s,
        "target": 1.10,
    }


def host_overhead(steps: int = 300) -> dict:
    """Host time per step, FT against curve (unmasked, and with every 10th tensor selected), on a model
    whose GPU kernels would be tiny: a CIFAR ResNet-20 of width 2 (65 parameter tensors, as many as
    ResNet-18's 62) on 2 images of 8x8, one thread. What it times is Python, dispatch and the small
    ops of each step — what bounds a curve step on a fast GPU — not arithmetic."""
    from mcu_dist.models.zoo import CifarResNet

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        base = CifarResNet(10, 3, blocks=3, width=2)
        names = [n for n, _ in base.named_parameters()]
        x, y = torch.randn(2, 3, 8, 8), torch.tensor([1, 2])
        ft_step = ft_stepper(copy.deepcopy(base), x, y)

        def curve_step(selected):
            return curve_stepper(base, copy.deepcopy(base), selected, x, y, lambda: 0.37)

        cpu = torch.device("cpu")
        ft_s = time_steps(ft_step, steps, 30, cpu)
        curve_s = time_steps(curve_step(names), steps, 30, cpu)
        masked_s = time_steps(curve_step(names[::10]), steps, 30, cpu)
    finally:
        torch.set_num_threads(threads)
    return {
        "bench": "host_step",
        "model": "resnet20_w2",
        "batch": 2,
        "ft_s": ft_s,
        "curve_s": curve_s,
        "masked_curve_s": masked_s,
        "selected_tensors": f"{len(names[::10])}/{len(names)}",
        "ratio": curve_s / ft_s,
        "target": None,
    }


def layer_macs(model: nn.Module, x: torch.Tensor) -> list[tuple[str, int, list[str]]]:
    """(module name, forward MACs, its parameter names) for conv/linear/norm layers in execution order."""
    records: list[tuple[str, int, list[str]]] = []
    names = {m: n for n, m in model.named_modules()}

    def hook(module, inputs, output):
        n = names[module]
        pnames = [f"{n}.{p}" if n else p for p, _ in module.named_parameters(recurse=False)]
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            macs = output.numel() * k
        elif isinstance(module, nn.Linear):
            macs = output.numel() * module.in_features
        else:
            macs = output.numel()
        records.append((n, macs, pnames))

    leaves = [m for m in model.modules() if any(True for _ in m.parameters(recurse=False))]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model.train()(x)
    for h in handles:
        h.remove()
    return records


def mask_bound(records: list[tuple[str, int, list[str]]], selected: set[str]) -> float:
    """Estimated masked ÷ unmasked step cost (forward F; backward input-grad ≈ weight-grad ≈ F)."""
    forward = sum(m for _, m, _ in records)
    full = forward + 2 * forward
    first = next((i for i, (_, _, p) in enumerate(records) if selected & set(p)), len(records))
    input_grads = sum(m for _, m, _ in records[first + 1 :])
    weight_grads = sum(m for _, m, p in records if selected & set(p))
    return (forward + input_grads + weight_grads) / full


def masked_epoch(lab: Lab, k: float, batch_size: int, epochs: int) -> dict:
    original = lab.new_model(0)
    endpoint = copy.deepcopy(original)
    with torch.no_grad():
        for p in endpoint.parameters():
            p.add_(0.01 * torch.randn_like(p))
    cal = CalTargets(cal_f=50.0, cal_r=90.0)
    cfg = copy.deepcopy(lab.cfg.mcu)
    cfg.epochs, cfg.batch_size = epochs, batch_size
    out = {}
    selected_at_k = []
    for kk in (1.0, k):
        mask = compute_mask(original, lab, kk, 0.0)
        curve = curve_between(original, endpoint, 2, mask.selected).to(lab.device)
        train_curve(curve, lab, cfg, "fixed", cal, seed=0)  # warm-up epoch(s)
        _sync(lab.device)
        start = time.perf_counter()
        train_curve(curve, lab, cfg, "fixed", cal, seed=1)
        _sync(lab.device)
        out[kk] = (time.perf_counter() - start) / epochs
        selected_at_k = mask.selected
    x = lab.normalize(lab.bundle.train.images[:batch_size].to(lab.device))
    bound = mask_bound(layer_macs(copy.deepcopy(original), x), set(selected_at_k))
    return {
        "bench": f"mask_k={k}",
        "model": lab.cfg.model.name,
        "batch": batch_size,
        "unmasked_epoch_s": out[1.0],
        "masked_epoch_s": out[k],
        "ratio": out[k] / out[1.0],
        "bound": bound,
        "target": 0.6,
        "selected_tensors": len(selected_at_k),
    }


def scaling(lab: Lab, workers: int, batch_size: int, epochs: int) -> dict:
    """Curve epoch time in-process (1 worker) vs ``workers`` Ray Train workers; start-up reported apart."""
    from mcu_dist.train.distributed import fit_distributed

    original = lab.new_model(0)
    endpoint = copy.deepcopy(original)
    names = [n for n, _ in original.named_parameters()]
    cal = CalTargets(cal_f=50.0, cal_r=90.0)
    lab.cfg.mcu.epochs, lab.cfg.mcu.batch_size = epochs, batch_size
    local = train_curve(curve_between(original, endpoint, 2, names), lab, lab.cfg.mcu, "fixed", cal, seed=0)
    lab.cfg.scale.workers = workers
    lab.cfg.scale.cpus_per_worker = min(1.0, (torch.get_num_threads() or 1) / workers)
    start = time.perf_counter()
    state = fit_distributed(
        lab,
        original,
        endpoint,
        curve_between(original, endpoint, 2, names),
        "fixed",
        cal,
        f"bench-scaling-{time.strftime('%Y%m%d-%H%M%S')}",
    )
    wall = time.perf_counter() - start
    return {
        "bench": f"scaling_{workers}w",
        "model": lab.cfg.model.name,
        "batch": batch_size,
        "one_worker_epoch_s": local.seconds / epochs,
        "n_worker_epoch_s": state.seconds / epochs,
        "startup_s": wall - state.seconds,
        "ratio": state.seconds / local.seconds,
        "target": None,
    }


def sweep_cost(trials: int, workers: int, storage: str) -> dict:
    """Wall time of an N-trial sweep (the default space at smoke size) against its trials' own compute."""
    import json

    from mcu_dist import sweep

    name = f"bench-sweep-{workers}w-{time.strftime('%Y%m%d-%H%M%S')}"
    argv = [
        "--smoke-test",
        "--num-samples",
        str(trials),
        "--storage",
        storage,
        "--name",
        name,
        "--tracking-uri",
        f"sqlite:///{Path(storage).resolve() / 'bench-mlflow.db'}",
    ]
    if workers > 1:
        argv += ["--space", str(_workers_space(storage, workers))]
    if sweep.main(argv) != 0:
        raise RuntimeError("the benchmark sweep failed")
    s = json.loads((Path(storage) / name / "summary.json").read_text())
    return {
        "bench": f"sweep_{workers}w",
        "model": "small_cnn",
        "batch": trials,
        "fit_s": s["fit_s"],
        "trial_compute_s": s["trial_compute_s"],
        "ratio": s["fit_s"] / max(s["trial_compute_s"], 1e-9),
        "overhead_per_trial_s": s["overhead_per_trial_s"],
        "target": 10.0 if workers == 1 else None,
    }


def _workers_space(storage: str, workers: int) -> Path:
    import yaml

    from mcu_dist.sweep import DEFAULT_SPACE

    data = yaml.safe_load(DEFAULT_SPACE.read_text())
    data["fixed"].update(
        {"model.name": "small_cnn_nobn", "scale.workers": workers, "scale.cpus_per_worker": 0.5}
    )
    data["sweep"].update({"max_concurrent": 1, "cpus_per_trial": 0.2})
    path = Path(storage) / f"space-{workers}w.yaml"
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return path


def format_rows(rows: list[dict]) -> str:
    lines = [
        f"{'bench':<14}{'model':<12}{'batch':>6}{'base_s':>10}{'test_s':>10}"
        f"{'ratio':>8}{'bound':>8}{'target':>8}"
    ]
    for r in rows:
        base = r.get("ft_s", r.get("unmasked_epoch_s", r.get("one_worker_epoch_s", r.get("trial_compute_s"))))
        test = r.get("curve_s", r.get("masked_epoch_s", r.get("n_worker_epoch_s", r.get("fit_s"))))
        bound = f"{r['bound']:.2f}" if "bound" in r else "-"
        lines.append(
            f"{r['bench']:<14}{r['model']:<12}{r['batch']:>6}{base:>10.4f}{test:>10.4f}{r['ratio']:>8.2f}"
            f"{bound:>8}{('<= ' + str(r['target'])) if r['target'] is not None else '-':>8}"
            + (f"  start-up {r['startup_s']:.1f} s" if "startup_s" in r else "")
            + (
                f"  masked ({r['selected_tensors']} tensors) {r['masked_curve_s'] * 1e3:.2f} ms"
                f" = {r['masked_curve_s'] / r['ft_s']:.2f}x FT"
                if "masked_curve_s" in r
                else ""
            )
            + (
                f"  overhead/trial {r['overhead_per_trial_s']:.1f} s (target <= 10 s in-process)"
                if "overhead_per_trial_s" in r
                else ""
            )
        )
    return "\n".join(lines)


def pipeline(args: argparse.Namespace, device: str) -> list[dict]:
    """The stage, epoch and eval rows (bench_pipeline.py); a failing group is reported and skipped."""
    import traceback

    from mcu_dist import bench_pipeline as bp

    gpu = device != "cpu"
    model = args.pipeline_model or ("resnet18" if gpu else "small_cnn")
    subset = args.subset if args.subset is not None else (None if gpu else 500)
    ref_epochs = args.ref_epochs or (2 if gpu else 5)
    lab = bp.pipeline_lab(device, subset, model, ref_epochs, args.t_points, args.cache_dir)
    name = torch.cuda.get_device_name() if gpu else f"CPU x{torch.get_num_threads()} threads"
    header = (
        f"{lab.bundle.dataset_id}, {model}, {len(lab.bundle.train)} training images, random 10% forgetting, "
        f"{args.t_points}-point grid, BN set '{lab.cfg.eval.bn_set}', "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print(header, flush=True)
    rows: list[dict] = []
    state: dict = {}

    def guarded(what, fn):
        try:
            fn()
        except Exception:  # one failing group must not lose the others' measurements
            print(f"error in {what}:", flush=True)
            traceback.print_exc()
        if args.md:
            Path(args.md).write_text(bp.markdown(rows, name, header))
        write_table([{**r, "device": name} for r in rows], Path(args.out))

    def stages():
        state["original"], state["endpoint"], state["curve"] = bp.stage_rows(lab, rows)

    guarded("stages", stages)
    if "curve" in state:
        guarded("epochs", lambda: bp.epoch_rows(lab, state["original"], state["endpoint"], rows))
        guarded("evaluation", lambda: bp.eval_rows(lab, state["curve"], rows))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcu_dist.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default="small_cnn,resnet18")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "cifar10"])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--n-train", type=int, default=2560, help="training images (mask epoch benchmark)")
    p.add_argument("--mask-k", type=float, default=0.1)
    p.add_argument("--mask-models", default="small_cnn", help="models for the masked-epoch benchmark")
    p.add_argument(
        "--scaling-workers",
        type=int,
        default=0,
        help="also time a curve epoch on N Ray Train workers against 1 on the CIFAR-10 copy "
        "(starts or joins Ray)",
    )
    p.add_argument(
        "--sweep-trials",
        type=int,
        default=0,
        help="also time an N-trial smoke sweep (in-process trials, and Ray Train trials with "
        "--scaling-workers) against its trials' own compute",
    )
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="also time every stage of one path on the CIFAR-10 copy (CPU: --subset per class, small CNN; "
        "--gpu: all of CIFAR-10, ResNet-18), FT vs curve epochs, per-point vs batched evaluation",
    )
    p.add_argument("--pipeline-model", default=None, help="default: small_cnn on CPU, resnet18 with --gpu")
    p.add_argument("--subset", type=int, default=None, help="pipeline: images per class (CPU default 500)")
    p.add_argument(
        "--ref-epochs", type=int, default=None, help="pipeline: reference epochs (default 5 CPU, 2 GPU)"
    )
    p.add_argument("--t-points", type=int, default=20, help="pipeline: t grid size")
    p.add_argument("--md", default=None, help="pipeline: also write the stage table as markdown here")
    p.add_argument(
        "--host-steps",
        type=int,
        default=300,
        help="timed steps of the host-overhead row (FT vs curve step on a tiny thin ResNet); 0: skip",
    )
    p.add_argument("--gpu", action="store_true")
    p.add_argument("--out", default="bench.parquet")
    p.add_argument("--cache-dir", default=ExperimentConfig().cache_dir)
    args = p.parse_args(argv)
    bad = next(
        (
            (flag, value, allowed)
            for flag, value, ok, allowed in (
                ("--steps", args.steps, args.steps >= 1, "an integer >= 1"),
                ("--batch-size", args.batch_size, args.batch_size >= 1, "an integer >= 1"),
                ("--n-train", args.n_train, args.n_train >= 1, "an integer >= 1"),
                ("--mask-k", args.mask_k, 0 < args.mask_k <= 1, "a number in (0, 1]"),
                ("--scaling-workers", args.scaling_workers, args.scaling_workers >= 0, "an integer >= 0"),
                ("--sweep-trials", args.sweep_trials, args.sweep_trials >= 0, "an integer >= 0"),
                ("--host-steps", args.host_steps, args.host_steps >= 0, "an integer >= 0"),
            )
            if not ok
        ),
        None,
    )
    if bad:
        print(f"error: {bad[0]}: got {bad[1]!r}; allowed: {bad[2]}", file=sys.stderr)
        return 2
    device = "cuda" if args.gpu else "cpu"
    if args.gpu and not torch.cuda.is_available():
        print(
            "error: --gpu: no CUDA device is visible; allowed: omit --gpu on a CPU machine", file=sys.stderr
        )
        return 2
    rows: list[dict] = []
    if args.pipeline:
        rows += pipeline(args, device)
    try:
        for model in filter(None, args.models.split(",")):
            lab = make_lab(model, args.data, args.n_train, device, args.cache_dir)
            rows.append(curve_vs_ft(lab, args.batch_size, args.steps))
            print(format_rows(rows[-1:]), flush=True)
        if args.host_steps:
            rows.append(host_overhead(args.host_steps))
            print(format_rows(rows[-1:]), flush=True)
        for model in filter(None, args.mask_models.split(",")):
            lab = make_lab(model, args.data, args.n_train, device, args.cache_dir)
            rows.append(masked_epoch(lab, args.mask_k, args.batch_size, epochs=1))
        if args.scaling_workers >= 2:  # workers rebuild the data from the config: a registered dataset
            lab = make_lab("small_cnn_nobn", "cifar10", args.n_train, device, args.cache_dir)
            lab.cfg.scale.gpu = args.gpu
            rows.append(scaling(lab, args.scaling_workers, args.batch_size, epochs=3))
        if args.sweep_trials:
            storage = str(Path(args.cache_dir) / "bench_sweeps")
            rows.append(sweep_cost(args.sweep_trials, 1, storage))
            if args.scaling_workers >= 2:
                rows.append(sweep_cost(max(2, args.sweep_trials // 2), args.scaling_workers, storage))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_rows([r for r in rows if r["bench"] not in ("stage", "epoch", "eval")]))
    device_name = torch.cuda.get_device_name() if args.gpu else f"CPU x{torch.get_num_threads()} threads"
    write_table([{**r, "device": device_name} for r in rows], Path(args.out))
    print(f"\ndevice: {device_name}; table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
