"""One sweep trial: one baseline, one MCU path, its metrics, its MLflow child run.

The same function runs inside a Ray Tune function trainable and, for tests or a debugger, directly.
Curve training runs in-process for one CPU worker and on Ray Train (DDP) for more workers or a GPU.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mcu_dist.config import ExperimentConfig, to_yaml
from mcu_dist.data import write_manifest
from mcu_dist.evaluate.bn import recalibrate_bn
from mcu_dist.evaluate.bootstrap import intervals
from mcu_dist.evaluate.metrics import avg_gap, predict
from mcu_dist.evaluate.names import PATH_METRICS, ROW_PREFIXES, TRIAL_METRICS
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.evaluate.selection import gap_cal
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.pipeline import run_path
from mcu_dist.references import baseline_model, has_budget_control, prepare_references
from mcu_dist.store import write_text
from mcu_dist.train.mcu import retain_prime_record
from mcu_dist.tune_space import SearchSpace
from mcu_dist.validation import validate


@dataclass
class TrialContext:
    space: SearchSpace
    tracking_uri: str | None  # None: no MLflow
    experiment: str
    parent_run_id: str | None
    trial_id: str
    out_dir: Path


def proxy_gap_cal(curve, lab: Lab, cal: CalTargets, ts=(0.8, 0.9, 1.0), n: int = 256, seed: int = 0) -> float:
    """A cheap stand-in for the path's best gap_cal: a few t in [0.75, 1], BN and accuracies on subsets."""
    g = torch.Generator().manual_seed(seed)
    sub = lambda pos: pos[torch.randperm(len(pos), generator=g)[:n]]  # noqa: E731
    calib, retain, forget = sub(lab.all_train), sub(lab.splits.retain), sub(lab.splits.forget)
    best = math.inf
    for t in ts:
        model = recalibrate_bn(curve.materialize(t), lab, calib, lab.cfg.eval.batch_size)
        ra = predict(model, lab.bundle.train, retain, lab.normalize, device=lab.device).accuracy
        fa = predict(model, lab.bundle.train, forget, lab.normalize, device=lab.device).accuracy
        best = min(best, gap_cal(ra, fa, cal))
    curve.base.train()
    return best


def run_trial(params: dict[str, Any], ctx: TrialContext, report=None) -> dict[str, float]:
    """Run one trial; ``report(metrics)`` (Tune's) receives per-epoch proxies when ASHA is on."""
    cfg: ExperimentConfig = validate(ctx.space.trial_config(params))
    sweep = ctx.space.sweep
    tracker = None
    if ctx.tracking_uri:
        from mcu_dist.tracking import KIND_TAG, PARENT_TAG, TRIAL_TAG, Tracker

        tracker = Tracker(ctx.tracking_uri, ctx.experiment)
        tags = {TRIAL_TAG: ctx.trial_id, KIND_TAG: "trial"}
        if ctx.parent_run_id:
            tags[PARENT_TAG] = ctx.parent_run_id
        run_cm = tracker.run(f"trial-{ctx.trial_id}", tags)
    else:
        run_cm = contextlib.nullcontext()
    with run_cm as run_id:
        if tracker:
            tracker.log_params(run_id, {**cfg.flat(), **{f"search.{k}": v for k, v in params.items()}})
        metrics = _compute(cfg, ctx, report, tracker, run_id, sweep)
    return metrics


def _compute(cfg, ctx, report, tracker, run_id, sweep) -> dict[str, float]:
    start = time.perf_counter()
    lab = Lab.build(cfg)
    refs = prepare_references(lab)  # refuses a mask that selects nothing, before the trial writes anything
    out = ctx.out_dir
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", to_yaml(cfg))
    write_manifest(lab.bundle, lab.splits, out / "forget_manifest.parquet", retain_prime_record(lab))
    original, retrain_row, cal, mask = refs.original, refs.retrain_row, refs.cal, refs.mask
    retrain_oc, draws = refs.retrain_outcomes, cfg.eval.shadow_draws
    boot = (cfg.eval.bootstrap, cfg.eval.ci_level, cfg.seeds.eval)
    retrain_row = {**retrain_row, **intervals(retrain_oc, retrain_oc, *boot)}
    method = cfg.baselines.methods[0]
    endpoint, base_s = baseline_model(lab, method, original)

    def scored(model) -> dict[str, float]:
        row, oc = evaluate_outcomes(model, lab, shadow_draws=draws)
        return {**row, "avg_gap": avg_gap(row, retrain_row), **intervals(oc, retrain_oc, *boot)}

    baseline_row = scored(endpoint)
    controls = {}
    if cfg.baselines.budget_control and has_budget_control(method):
        continued, budget_s = baseline_model(lab, method, original, more_epochs=cfg.mcu.epochs)
        controls = {f"budget/{k}": v for k, v in scored(continued).items()} | {
            "budget/rte_min": budget_s / 60
        }
    on_epoch = None
    if report is not None and sweep.asha and not cfg.scale.distributed:

        def on_epoch(state, curve):
            proxy = proxy_gap_cal(curve, lab, cal)
            report({sweep.objective: proxy, "proxy_gap_cal": proxy, "epoch": state.epoch, "final": 0})

    result = run_path(
        lab,
        original,
        endpoint,
        cfg.mcu.beta_schedule[0],
        mask,
        cal,
        retrain_row,
        out / "path",
        run_name=f"curve-{ctx.trial_id}",
        on_epoch_end=on_epoch,
    )
    row = {**result.row, **intervals(result.outcomes, retrain_oc, *boot)}
    metrics = {k: float(v) for k, v in row.items() if k in TRIAL_METRICS or k.startswith(ROW_PREFIXES)}
    metrics.update(
        {
            "t_star": result.t_star,
            "region_size": float(len(result.effective_region)),
            **mask.summary(),
            "baseline_avg_gap": avg_gap(baseline_row, retrain_row),
            "baseline_gap_cal": gap_cal(baseline_row["RA"], baseline_row["FA"], cal),
            "rte_min": (base_s + result.seconds["curve"] + result.seconds["path_eval"]) / 60,
            "rte_curve_min": result.seconds["curve"] / 60,
            "rte_eval_min": result.seconds["path_eval"] / 60,
            "retrain_rte_min": refs.retrain_seconds / 60,
            "trial_s": time.perf_counter() - start,
            "final": 1,
            **controls,
        }
    )
    if tracker:
        _log_path(tracker, run_id, result, metrics, baseline_row, retrain_row, mask, out)
    return metrics


def _log_path(tracker, run_id, result, metrics, baseline_row, retrain_row, mask, out: Path) -> None:
    per_t = [
        (i, {f"path/{k}": r[k] for k in PATH_METRICS if k in r}) for i, r in enumerate(result.path_table)
    ]
    epochs: dict[int, list[dict]] = {}
    for s in result.steps:
        epochs.setdefault(s["epoch"], []).append(s)
    per_epoch = [
        (
            e,
            {
                "epoch/loss_r": _mean(rows, "loss_r"),
                "epoch/loss_f": _mean(rows, "loss_f"),
                "epoch/beta": _mean(rows, "beta"),
            },
        )
        for e, rows in sorted(epochs.items())
    ]
    final = {
        **metrics,
        **{f"mask/layer/{k}": v for k, v in mask.layer_fractions().items()},
        **{f"baseline/{k}": v for k, v in baseline_row.items()},
        **{f"retrain/{k}": v for k, v in retrain_row.items()},
    }
    tracker.log_series(run_id, per_t + per_epoch + [(0, final)])
    tracker.set_tags(
        run_id,
        {
            "mcu.effective_region": result.effective_region,
            "mcu.mask_sha256": mask.sha256,
            "mcu.t_star": result.t_star,
            "mcu.node_id": _node_id(),
        },
    )
    tracker.log_artifacts(run_id, out)


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) == r.get(key)]
    return sum(vals) / len(vals) if vals else float("nan")
