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

from mcu_dist import fs
from mcu_dist.config import ExperimentConfig, to_yaml
from mcu_dist.data import write_manifest
from mcu_dist.evaluate.bn import recalibrate_bn
from mcu_dist.evaluate.bootstrap import intervals
from mcu_dist.evaluate.metrics import avg_gap, predict, training_accuracy
from mcu_dist.evaluate.names import PATH_METRICS, ROW_PREFIXES, TRIAL_METRICS
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.evaluate.selection import gap_cal
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets, variant_name
from mcu_dist.pipeline import bn_control, line_control, run_path
from mcu_dist.recipes import resolved_params
from mcu_dist.references import baseline_model, endpoint_model, has_budget_control, prepare_references
from mcu_dist.store import write_text
from mcu_dist.train.mcu import retain_prime_record
from mcu_dist.tune_space import SearchSpace
from mcu_dist.validation import validate

# the child run's final metrics in the order the run's Overview lists them: what a researcher sorts by first
HEADLINE = ("avg_gap", "gain", "gap_cal", "t_star", "UA", "RA", "TA", "MIA", "region_size", "rte_min")
NAMED = ("baseline", "mcu.beta_schedule", "mcu.beta", "mcu.k", "mcu.curve_order")


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_name(cfg: ExperimentConfig, params: dict[str, Any]) -> str:
    """A run name that says what ran: ``rl · adaptive_step · k0.3 · o2`` (``β0.2`` for a fixed schedule),
    then every other searched value (``lr0.0157``; a word as ``mask=random_matched``)."""
    schedule = cfg.mcu.beta_schedule[0]
    schedule = f"β{cfg.mcu.beta:.3g}" if schedule == "fixed" else schedule
    parts = [cfg.baselines.primary(), schedule, f"k{cfg.mcu.k:.3g}", f"o{cfg.mcu.curve_order}"]
    for key, value in params.items():
        if key not in NAMED:
            name = key.rsplit(".", 1)[-1]
            parts.append(f"{name}={value}" if isinstance(value, str) else f"{name}{_short(value)}")
    return " · ".join(parts)


def variant_of(cfg: ExperimentConfig) -> str:
    """What a trial's path is: its β schedule's name (mcu: fixed β, mcu_beta: adaptive_step, ...)."""
    return variant_name(cfg.mcu.beta_schedule[0])


def trial_params(cfg: ExperimentConfig, params: dict[str, Any]) -> dict[str, Any]:
    """Every resolved config field the trial ran with, its baseline and variant by name, and the searched
    values again under ``search.``."""
    flat = resolved_params(cfg)
    return {"baseline": cfg.baselines.primary(), "mcu.variant": variant_of(cfg), **flat} | {
        f"search.{k}": v for k, v in params.items()
    }


@dataclass
class TrialContext:
    space: SearchSpace
    tracking_uri: str | None  # None: no MLflow
    experiment: str
    parent_run_id: str | None
    trial_id: str
    out_dir: fs.Location  # the trial's folder: a local path, or a URI its files are uploaded to


def proxy_gap_cal(curve, lab: Lab, cal: CalTargets, ts=(0.8, 0.9, 1.0), n: int = 256, seed: int = 0) -> float:
    """A cheap stand-in for the path's best gap_cal: a few t in [0.75, 1], BN and accuracies on subsets."""
    g = torch.Generator().manual_seed(seed)
    sub = lambda pos: pos[torch.randperm(len(pos), generator=g)[:n]]  # noqa: E731
    calib, retain, forget = sub(lab.all_train), sub(lab.splits.retain), sub(lab.splits.forget)
    best = math.inf
    for t in ts:
        model = recalibrate_bn(curve.materialize(t), lab, calib, lab.cfg.eval.batch_size)
        kw = {"device": lab.device, "piece": lab.forward_piece}
        ra = predict(model, lab.bundle.train, retain, lab.normalize, **kw).accuracy
        fa = predict(model, lab.bundle.train, forget, lab.normalize, **kw).accuracy
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
        run_cm = tracker.run(trial_name(cfg, params), tags)
    else:
        run_cm = contextlib.nullcontext()
    with run_cm as run_id:
        if tracker:
            tracker.log_params(run_id, trial_params(cfg, params))
        metrics = _compute(cfg, params, ctx, report, tracker, run_id, sweep)
    return metrics


def _compute(cfg, params, ctx, report, tracker, run_id, sweep) -> dict[str, float]:
    with fs.staged(ctx.out_dir) as out:  # a URI gets the trial folder's files when the trial ends
        return _compute_in(cfg, params, ctx, report, tracker, run_id, sweep, out)


def _compute_in(cfg, params, ctx, report, tracker, run_id, sweep, out: Path) -> dict[str, float]:
    start = time.perf_counter()
    lab = Lab.build(cfg)
    refs = prepare_references(lab)  # refuses a mask that selects nothing, before the trial writes anything
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "config.yaml", to_yaml(cfg))
    write_manifest(lab.bundle, lab.splits, out / "forget_manifest.parquet", retain_prime_record(lab))
    original, retrain_row, cal, mask = refs.original, refs.retrain_row, refs.cal, refs.mask
    retrain_oc, draws = refs.retrain_outcomes, cfg.eval.shadow_draws
    boot = (cfg.eval.bootstrap, cfg.eval.ci_level, cfg.seeds.eval)
    retrain_row = {**retrain_row, **intervals(retrain_oc, retrain_oc, *boot)}
    method = cfg.baselines.primary()
    endpoint, base_s = endpoint_model(lab, method, original)

    def scored(model) -> dict[str, float]:
        row, oc = evaluate_outcomes(model, lab, shadow_draws=draws)
        return {**row, "avg_gap": avg_gap(row, retrain_row), **intervals(oc, retrain_oc, *boot)}

    baseline_row = scored(endpoint)
    original_row = scored(original)  # the Original row of the report: what there was to unlearn
    original_row["train_acc"] = training_accuracy(
        original_row, len(lab.splits.forget), len(lab.splits.retain)
    )
    original_row["rte_min"] = refs.original_seconds / 60
    bn_row, bn_outcomes = bn_control(lab, endpoint)
    controls = {
        "baseline_bn": {**bn_row, **intervals(bn_outcomes, retrain_oc, *boot)},
        "original": original_row,
    }
    if cfg.eval.line_control:
        line = line_control(lab, original, endpoint, cal, retrain_row)
        controls["line"] = {**line.row, **intervals(line.outcomes, retrain_oc, *boot)}
    if cfg.baselines.budget_control and has_budget_control(method):
        continued, budget_s = baseline_model(lab, method, original, more_epochs=cfg.mcu.epochs)
        controls["budget"] = {**scored(continued), "rte_min": budget_s / 60}
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
        plot={"title": f"{trial_name(cfg, params)}   (trial {ctx.trial_id})", "baseline_row": baseline_row},
    )
    row = {**result.row, **intervals(result.outcomes, retrain_oc, *boot)}
    metrics = {k: float(v) for k, v in row.items() if k in TRIAL_METRICS or k.startswith(ROW_PREFIXES)}
    base_gap = avg_gap(baseline_row, retrain_row)
    metrics.update(
        {
            "t_star": result.t_star,
            "gain": base_gap - metrics["avg_gap"],  # > 0: MCU moved the baseline closer to Retrain
            "region_size": float(len(result.effective_region)),
            **mask.summary(),
            "baseline_avg_gap": base_gap,
            "baseline_gap_cal": gap_cal(baseline_row["RA"], baseline_row["FA"], cal),
            **{f"{name}_avg_gap": avg_gap(r, retrain_row) for name, r in controls.items()},
            "selection_regret": row["selection_regret"],
            "path_gain": row["path_gain"],
            "rte_min": (base_s + result.seconds["curve"] + result.seconds["path_eval"]) / 60,
            "rte_curve_min": result.seconds["curve"] / 60,
            "rte_eval_min": result.seconds["path_eval"] / 60,
            "retrain_rte_min": refs.retrain_seconds / 60,
            "trial_s": time.perf_counter() - start,
            "final": 1,
        }
    )
    if tracker:
        _log_path(tracker, run_id, result, metrics, baseline_row, retrain_row, mask, out, controls)
        tracker.log_datasets(run_id, _datasets(lab, ctx.out_dir))
        tracker.describe(run_id, describe_trial(cfg, params, metrics, result, baseline_row, retrain_row))
    return metrics


def _datasets(lab: Lab, out: fs.Location) -> list[dict[str, Any]]:
    """The data a trial saw and the forget set it unlearned, as MLflow dataset inputs."""
    import hashlib

    cfg, bundle = lab.cfg, lab.bundle
    return [
        {
            "name": cfg.data.dataset,
            "digest": hashlib.sha256(bundle.dataset_id.encode()).hexdigest(),
            "source": cfg.data.data_root or bundle.dataset_id,
            "context": "train",
            "profile": {"train": len(bundle.train.labels), "test": len(bundle.test.labels)},
        },
        {
            "name": f"forget {cfg.forget.spec}",
            "digest": lab.splits.manifest_hash,
            "source": fs.join(out, "forget_manifest.parquet"),
            "context": "forget",
            "profile": {"samples": len(lab.splits.forget), "retain": len(lab.splits.retain)},
        },
    ]


def describe_trial(cfg, params, metrics, result, baseline_row, retrain_row) -> str:
    """The child run's Description: baseline → MCU, t*, the effective region, what was searched."""
    method, variant = cfg.baselines.primary(), "MCU" if variant_of(cfg) == "mcu" else "MCU-β"
    lo, hi = cfg.eval.t_star_range
    region = result.effective_region
    where = f"t ∈ [{min(region):.2f}, {max(region):.2f}]" if region else "empty"
    cells = " | ".join(f"{k}" for k in ("UA", "RA", "TA", "MIA"))
    row = lambda name, r: f"| {name} | " + " | ".join(f"{r[k]:.2f}" for k in ("UA", "RA", "TA", "MIA")) + " |"  # noqa: E731
    return "\n".join(
        [
            f"**{method} → {method}+{variant}** ({cfg.mcu.beta_schedule[0]} β, order {cfg.mcu.curve_order}, "
            f"k = {cfg.mcu.k:.3g}): Avg. Gap to Retrain **{metrics['baseline_avg_gap']:.2f} → "
            f"{metrics['avg_gap']:.2f}** (gain {metrics['gain']:+.2f}; lower is better).",
            "",
            f"t* = **{result.t_star:.2f}** (chosen by gap_cal = {metrics['gap_cal']:.2f} "
            f"over [{lo:g}, {hi:g}]); "
            f"effective region {where}: {len(region)} of {len(result.path_table)} grid points beat the "
            "baseline's own endpoint.",
            "",
            f"| model | {cells} |",
            "|---|---|---|---|---|",
            row("Retrain", retrain_row),
            row(method, baseline_row),
            row(f"{method}+{variant} at t*", metrics),
            "",
            "Searched: " + (", ".join(f"`{k}` = {_short(v)}" for k, v in params.items()) or "nothing"),
            "",
            "Artifacts: `path.png` (the path against t), `path/path_table.parquet`, `config.yaml`.",
        ]
    )


def _log_path(
    tracker, run_id, result, metrics, baseline_row, retrain_row, mask, out: Path, controls: dict
) -> None:
    from mcu_dist.tracking import t_step

    # t is the step (t_step): a path/t metric would only repeat it (and be a flat line in Compare)
    per_t = [
        (t_step(r["t"]), {f"path/{k}": r[k] for k in PATH_METRICS if k in r and k != "t"})
        for r in result.path_table
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
    # logged first, headline first: the run's Overview lists metrics in the order they were first logged
    final = {
        **{k: metrics[k] for k in HEADLINE if k in metrics},
        **{k: v for k, v in metrics.items() if k != "final"},
        **{f"mask/layer/{k}": v for k, v in mask.layer_fractions().items()},
        **{f"baseline/{k}": v for k, v in baseline_row.items()},
        **{f"retrain/{k}": v for k, v in retrain_row.items()},
        **{f"{name}/{k}": v for name, r in controls.items() for k, v in r.items()},
    }
    tracker.log_series(run_id, [(0, final)])
    tracker.log_series(run_id, per_t + per_epoch)
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
    tracker.log_artifact(run_id, out / "path" / "path.png")  # top level: Compare shows it side by side


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _mean(rows: list[dict], key: str) -> float:
    vals = [r[key] for r in rows if r.get(key) == r.get(key)]
    return sum(vals) / len(vals) if vals else float("nan")
