"""One MCU path from end to end: mask -> curve training -> path evaluation -> t* -> θ(t*).

Used by ``python -m mcu_dist.run`` for every (baseline, variant) pair and by the Python API. Beside
it, the two controls an honest comparison needs (MCU_METHOD.md section 6.6): ``<baseline>+BN``, θ_p
with BN re-estimated (the path's t = 1 point: what recalibration alone gives), and ``<baseline>+line``,
the same t* selection on the untrained straight line θ_o -> θ_p (what training the curve adds).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from mcu_dist.evaluate.bn import bn_set_positions, recalibrate_bn
from mcu_dist.evaluate.bootstrap import Outcomes
from mcu_dist.evaluate.metrics import avg_gap
from mcu_dist.evaluate.mia import FEATURES
from mcu_dist.evaluate.path_eval import evaluate_path, model_at
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.evaluate.selection import (
    effective_region,
    gap_cal,
    has_path_gain,
    region_intervals,
    selection_regret,
    t_star,
)
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets, beta_shares, variant_name
from mcu_dist.path.bezier import BezierCurve, curve_between
from mcu_dist.path.checkpoint import save_curve
from mcu_dist.path.mask import Mask
from mcu_dist.store import save_model, write_table, write_text
from mcu_dist.train.distributed import fit_distributed
from mcu_dist.train.mcu import CurveState, train_curve


@dataclass
class PathResult:
    variant: str
    schedule: str
    curve: BezierCurve
    path_table: list[dict]
    steps: list[dict]
    t_star: float
    effective_region: list[float]
    region_intervals: list[tuple[float, float]]
    row: dict  # θ(t*) evaluated, every MIA feature included
    model: nn.Module  # θ(t*), BN recalibrated
    lab: Lab  # the data the path was trained and evaluated on
    seconds: dict = field(default_factory=dict)  # curve training, path evaluation
    outcomes: Outcomes | None = None  # θ(t*)'s per-sample results, for intervals against θ_r

    def export(self, t: float, path: str | Path) -> nn.Module:
        """θ(t), BN recalibrated as θ(t*) was, saved as a model checkpoint: any point of the region."""
        model = model_at(
            self.curve,
            t,
            self.lab,
            bn_set_positions(self.lab, self.lab.cfg.eval, self.lab.cfg.seeds.eval),
        )
        save_model(model, path, {"t": float(t), "variant": self.variant})
        return model


@dataclass
class Selection:
    """A path's table and its chosen model: t* by gap_cal over ``eval.t_star_range``, θ(t*) evaluated."""

    path_table: list[dict]
    t_star: float
    effective_region: list[float]
    region_intervals: list[tuple[float, float]]
    row: dict  # θ(t*) evaluated, every MIA feature included; selection_regret when θ_r is known
    model: nn.Module
    seconds: float
    outcomes: Outcomes  # θ(t*)'s per-sample results, for intervals against θ_r


def select_on_path(curve: BezierCurve, lab: Lab, cal: CalTargets, retrain_row: dict | None) -> Selection:
    """Evaluate ``curve`` on the grid, choose t* without θ_r, evaluate θ(t*) (BN re-estimated there)."""
    cfg = lab.cfg
    start = time.perf_counter()
    table = evaluate_path(curve, lab, cfg.eval.grid(), cal, retrain_row)
    ts, gaps = [r["t"] for r in table], [r["gap_cal"] for r in table]
    chosen = t_star(ts, gaps, *cfg.eval.t_star_range)
    model = model_at(curve, chosen, lab, bn_set_positions(lab, cfg.eval, cfg.seeds.eval))
    row, outcomes = evaluate_outcomes(model, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws)
    row["gap_cal"] = gap_cal(row["RA"], row["FA"], cal)
    region = effective_region(ts, gaps)
    row["path_gain"] = float(has_path_gain(chosen, region))
    if retrain_row is not None:
        row["avg_gap"] = avg_gap(row, retrain_row)
        row["selection_regret"] = selection_regret(row["avg_gap"], [r["avg_gap"] for r in table])
    return Selection(
        table, chosen, region, region_intervals(ts, gaps), row, model, time.perf_counter() - start, outcomes
    )


def line_control(
    lab: Lab, original: nn.Module, endpoint: nn.Module, cal: CalTargets, retrain_row: dict | None
) -> Selection:
    """``<baseline>+line``: the same selection on the untrained straight line θ_o -> θ_p (what training the
    curve adds is measured against it)."""
    names = [n for n, _ in original.named_parameters()]
    return select_on_path(curve_between(original, endpoint, 2, names).to(lab.device), lab, cal, retrain_row)


def bn_control(lab: Lab, endpoint: nn.Module) -> tuple[dict, Outcomes]:
    """``<baseline>+BN``: θ_p with BN re-estimated on the BN set (the path's t = 1 point), evaluated: its
    row and its per-sample outcomes (for intervals, like every other row)."""
    cfg = lab.cfg
    model = recalibrate_bn(
        copy.deepcopy(endpoint), lab, bn_set_positions(lab, cfg.eval, cfg.seeds.eval), cfg.eval.batch_size
    )
    return evaluate_outcomes(model, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws)


def run_path(
    lab: Lab,
    original: nn.Module,
    endpoint: nn.Module,
    schedule: str,
    mask: Mask,
    cal: CalTargets,
    retrain_row: dict | None,
    out_dir: Path | None = None,
    run_name: str | None = None,
    on_epoch_end: Callable[[CurveState, BezierCurve], None] | None = None,
    plot: dict | None = None,
) -> PathResult:
    """Train, evaluate and select one path; ``on_epoch_end(state, curve)`` sees in-process training epochs;
    ``plot`` adds to the path plot (``title``, ``baseline_row``)."""
    cfg = lab.cfg
    variant = variant_name(schedule)
    curve = curve_between(original, endpoint, cfg.mcu.curve_order, mask.selected).to(lab.device)
    start = time.perf_counter()
    if cfg.scale.distributed:
        state = fit_distributed(lab, original, endpoint, curve, schedule, cal, run_name or f"curve-{variant}")
    else:
        hook = (lambda st, _opt: on_epoch_end(st, curve)) if on_epoch_end else None
        state = train_curve(curve, lab, cfg.mcu, schedule, cal, cfg.seeds.unlearn, on_epoch_end=hook)
    train_s = time.perf_counter() - start
    sel = select_on_path(curve, lab, cal, retrain_row)
    sel.row.update(beta_shares([s["beta"] for s in state.steps], schedule, cfg.mcu))
    result = PathResult(
        variant,
        schedule,
        curve,
        sel.path_table,
        state.steps,
        sel.t_star,
        sel.effective_region,
        sel.region_intervals,
        sel.row,
        sel.model,
        lab,
        {"curve": train_s, "path_eval": sel.seconds},
        sel.outcomes,
    )
    if out_dir is not None:
        save_path(
            result, mask, out_dir, retrain_row, {"t_window": tuple(cfg.eval.t_star_range), **(plot or {})}
        )
    return result


def save_path(
    result: PathResult, mask: Mask, out_dir: Path, retrain_row: dict | None, plot: dict | None = None
) -> None:
    """Path table + step table (Parquet), plot (PNG), mask (JSON), θ(t*) checkpoint."""
    from mcu_dist.plots import plot_path

    meta = {
        "variant": result.variant,
        "schedule": result.schedule,
        "t_star": result.t_star,
        "effective_region": json.dumps(result.effective_region),
        "mask_sha256": mask.sha256,
        "mask_fraction": mask.fraction,
        **{k: v for k, v in result.row.items() if k.startswith("beta_")},
    }
    write_table(result.path_table, out_dir / "path_table.parquet", meta)
    write_table(result.steps, out_dir / "steps.parquet", meta)
    write_text(out_dir / "mask.json", json.dumps(mask.to_json(), indent=1, sort_keys=True))
    save_model(
        result.model,
        out_dir / "unlearned_t_star.pt",
        {"t": result.t_star, "variant": result.variant, "mask_sha256": mask.sha256},
    )
    save_curve(result.curve, out_dir / "curve.pt")
    plot = {"title": f"{out_dir.name}: {result.variant} ({result.schedule} β)", **(plot or {})}
    plot_path(
        result.path_table, result.t_star, result.region_intervals, retrain_row, out_dir / "path.png", **plot
    )
