"""Prepare the references of an experiment, once, for every entry point (run, trial, API, sweep, ablate).

- θ_o (the user's checkpoint, the caller's model, or trained once into the cache) and θ_r (trained
  once on D_r) with its evaluated row, the comparison point of Avg. Gap;
- the calibration targets Cal_r (θ_o's accuracy on its training data) and Cal_f (θ_o's test
  accuracy, 0 when class-wise) that β schedules and gap_cal compare against;
- the tensor mask (k, k_r) on θ_o, refused when it selects nothing (before θ_r is trained);
- each baseline's θ_p, trained once per (references, method, hyperparameters, seed) into the cache,
  and its compute-matched control (the baseline's own update continued from θ_p for the curve's
  epochs), likewise.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from mcu_dist.baselines import BASELINES
from mcu_dist.config import USER_ENDPOINT, ConfigError
from mcu_dist.evaluate.bootstrap import Outcomes
from mcu_dist.evaluate.mia import FEATURES
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.guard import check_finite_model, stage
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.mask import Mask, mask_for
from mcu_dist.store import load_model
from mcu_dist.train.mcu import calibration_targets
from mcu_dist.train.reference import original_model, retrained_model


@dataclass
class References:
    original: nn.Module
    original_seconds: float
    cal: CalTargets
    retrained: nn.Module | None = None
    retrain_seconds: float = 0.0
    retrain_row: dict | None = None  # θ_r evaluated, every MIA feature included
    retrain_outcomes: Outcomes | None = None  # θ_r's per-sample results: intervals are paired with them
    mask: Mask | None = None


def prepare_references(
    lab: Lab, *, original: nn.Module | None = None, retrain: bool = True, mask: bool = True
) -> References:
    """θ_o (``original`` when given), θ_r and its row (``retrain``), Cal_r/Cal_f, the mask (``mask``)."""
    cfg = lab.cfg
    seconds = 0.0
    if original is None:
        original, meta = original_model(lab, lab.cache)
        seconds = float(meta.get("seconds", 0.0))
    refs = References(
        original, seconds, calibration_targets(original, lab, lab.splits.classwise, cfg.eval.batch_size)
    )
    if mask:  # before θ_r: a mask that selects nothing stops here, having trained only θ_o
        refs.mask = mask_for(original, lab)
        require_selection(refs.mask)
    if retrain:
        refs.retrained, meta = retrained_model(lab, lab.cache)
        refs.retrain_seconds = float(meta.get("seconds", 0.0))
        refs.retrain_row, refs.retrain_outcomes = evaluate_outcomes(
            refs.retrained, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws
        )
    return refs


def require_selection(mask: Mask) -> None:
    """Refuse a mask that selects no tensor (k_r excluded them all): there would be nothing to train."""
    if not mask.selected:
        raise ConfigError(
            f"mcu.k_r: got {mask.k_r!r}; allowed: a k_r that leaves tensors for k = {mask.k!r} to "
            f"select (the mask excluded every tensor of this model's {mask.total_params} parameters)"
        )


def baseline_model(
    lab: Lab, method: str, original: nn.Module, more_epochs: int = 0
) -> tuple[nn.Module, float]:
    """θ_p for ``method`` from the cache (trained once per key); returns the model and its RTE in seconds.

    ``more_epochs > 0`` gives the compute-matched control instead: the baseline's own update (its loss,
    data stream and optimiser settings) run again from θ_p for that many epochs; its RTE includes θ_p's.
    """
    unit = BASELINES[method]
    hp = unit.resolve(lab.cfg.baselines.params.get(method))
    fields = {
        **lab.reference_key(),
        "forget": lab.splits.manifest_hash,
        "method": method,
        "hp": hp,
        "unlearn_seed": lab.cfg.seeds.unlearn,
    }
    start, kind, before = original, f"baseline-{method}", 0.0
    if more_epochs:
        start, before = baseline_model(lab, method, original)
        fields, kind = {**fields, "more_epochs": more_epochs}, f"budget-{method}"
        hp = {**hp, "epochs": more_epochs}
    model, meta = lab.cache.get(
        kind, fields, lab.new_model(), lambda: _run_baseline(unit, method, start, lab, hp)
    )
    return model.eval(), before + float(meta.get("seconds", 0.0))


def endpoint_model(lab: Lab, method: str, original: nn.Module) -> tuple[nn.Module, float]:
    """θ_p of ``method`` (cached) and its RTE, or the user's checkpoint for ``endpoint`` (RTE 0: not ours)."""
    if method != USER_ENDPOINT:
        return baseline_model(lab, method, original)
    model, _ = load_model(lab.new_model(), lab.cfg.baselines.endpoint, "baselines.endpoint")
    return model.eval(), 0.0


def has_budget_control(method: str) -> bool:
    """Baselines with an iterative update (an ``epochs`` setting) can be continued for MCU's budget."""
    return method in BASELINES and "epochs" in BASELINES[method].defaults


def _run_baseline(unit, method: str, original: nn.Module, lab: Lab, hp: dict) -> nn.Module:
    """One baseline's θ_p; a non-finite result (e.g. NegTV of a diverged fine-tune) stops it as diverged."""
    with stage(f"baseline {method}"):
        return check_finite_model(unit.run(copy.deepcopy(original).train(), lab, hp, lab.cfg.seeds.unlearn))


def endpoints(
    lab: Lab, original: nn.Module, methods: list[str] | None = None
) -> dict[str, tuple[nn.Module, float]]:
    """θ_p and its RTE (seconds) of each method (default: the configured ones) and of the user's endpoint."""
    methods = lab.cfg.baselines.methods if methods is None else methods
    out = {m: baseline_model(lab, m, original) for m in methods}
    if lab.cfg.baselines.endpoint:
        out[USER_ENDPOINT] = endpoint_model(lab, USER_ENDPOINT, original)
    return out
