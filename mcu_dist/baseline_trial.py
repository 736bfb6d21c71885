"""A baseline-tuning trial (stage 1 of ``mcu_dist.tuned``): the baseline endpoint at the sampled
hyperparameters, trained once into the model cache (or loaded from it), scored as produced; no curve.

Reports ``avg_gap`` (to Retrain, the research objective) and ``gap_cal`` (the deployment objective, needs
no θ_r); the MLflow child run is tagged ``mcu.kind = baseline_tuning``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from mcu_dist.evaluate.metrics import avg_gap
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.evaluate.selection import gap_cal
from mcu_dist.lab import Lab
from mcu_dist.references import baseline_model, prepare_references
from mcu_dist.trial import TrialContext, _short
from mcu_dist.validation import validate

KIND = "baseline_tuning"


def baseline_trial_name(method: str, params: dict[str, Any]) -> str:
    """``ga · tuning · lr0.0123 · epochs4``."""
    hps = [f"{k.rsplit('.', 1)[-1]}{_short(v)}" for k, v in params.items() if k.startswith("baseline.")]
    return " · ".join([method, "tuning", *hps])


def run_baseline_trial(params: dict[str, Any], ctx: TrialContext) -> dict[str, float]:
    cfg = validate(ctx.space.trial_config(params))
    method = cfg.baselines.methods[0]
    tracker = None
    run_cm: Any = contextlib.nullcontext()
    if ctx.tracking_uri:
        from mcu_dist.tracking import KIND_TAG, PARENT_TAG, TRIAL_TAG, Tracker

        tracker = Tracker(ctx.tracking_uri, ctx.experiment)
        tags = {TRIAL_TAG: ctx.trial_id, KIND_TAG: KIND}
        if ctx.parent_run_id:
            tags[PARENT_TAG] = ctx.parent_run_id
        run_cm = tracker.run(baseline_trial_name(method, params), tags)
    with run_cm as run_id:
        start = time.perf_counter()
        lab = Lab.build(cfg)
        refs = prepare_references(lab, mask=False)
        endpoint, base_s = baseline_model(lab, method, refs.original)
        row, _ = evaluate_outcomes(endpoint, lab, shadow_draws=cfg.eval.shadow_draws)
        metrics: dict[str, float] = {
            **{k: float(v) for k, v in row.items() if isinstance(v, int | float)},
            "avg_gap": avg_gap(row, refs.retrain_row),
            "gap_cal": gap_cal(row["RA"], row["FA"], refs.cal),
            "rte_min": base_s / 60,
            "gain": 0.0,  # no path: the sweep tables show the baseline as its own best
            "trial_s": time.perf_counter() - start,
            "final": 1,
        }
        metrics["baseline_avg_gap"], metrics["baseline_gap_cal"] = metrics["avg_gap"], metrics["gap_cal"]
        if tracker:
            hp = cfg.baselines.params.get(method, {}) if isinstance(cfg.baselines.params, dict) else {}
            tracker.log_params(
                run_id,
                {"baseline": method, "mcu.trial_mode": KIND, **{f"baseline.{k}": v for k, v in hp.items()}}
                | {f"search.{k}": v for k, v in params.items()},
            )
            tracker.log_series(run_id, [(0, {k: v for k, v in metrics.items() if k != "final"})])
    return metrics
