"""β schedules ("λ schedules") for the objective L_r − β·L_f (MCU_METHOD.md section 4).

Inputs per mini-batch: acc_f, acc_r (top-1 %, global batch) and the calibration targets Cal_f,
Cal_r computed from θ_o. The released MCU-β rule (``adaptive_step``):

    if acc_f <= Cal_f:                                   β = 0
    elif (acc_f − Cal_f)/Cal_f < (acc_r − Cal_r)/Cal_r:  β = β_low
    else:                                                β = β_high

With Cal_f = 0 the middle test divides by zero; the relative forget gap is then +inf, so the rule
reduces to β = 0 when acc_f = 0 and β_high otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from mcu_dist.registry import Registry


@dataclass(frozen=True)
class Calibration:
    cal_f: float  # θ_o's test accuracy (random forgetting) or 0 (class-wise)
    cal_r: float  # θ_o's accuracy on its training data


@dataclass(frozen=True)
class BetaParams:
    beta: float = 0.2
    beta_low: float = 0.01
    beta_high: float = 0.5
    tau: float = 0.1


BetaRule = Callable[[float, float, Calibration, BetaParams], float]
BETA_SCHEDULES: Registry[BetaRule] = Registry("mcu.beta_schedule")


def relative_gaps(acc_f: float, acc_r: float, cal: Calibration) -> tuple[float, float]:
    rel_f = math.inf if cal.cal_f == 0 else (acc_f - cal.cal_f) / cal.cal_f
    rel_r = (acc_r - cal.cal_r) / cal.cal_r if cal.cal_r else 0.0
    return rel_f, rel_r


@BETA_SCHEDULES.register("fixed")
def fixed(acc_f: float, acc_r: float, cal: Calibration, p: BetaParams) -> float:
    return p.beta


@BETA_SCHEDULES.register("adaptive_step")
def adaptive_step(acc_f: float, acc_r: float, cal: Calibration, p: BetaParams) -> float:
    if acc_f <= cal.cal_f:
        return 0.0
    rel_f, rel_r = relative_gaps(acc_f, acc_r, cal)
    return p.beta_low if rel_f < rel_r else p.beta_high


@BETA_SCHEDULES.register("adaptive_abs")
def adaptive_abs(acc_f: float, acc_r: float, cal: Calibration, p: BetaParams) -> float:
    """As ``adaptive_step`` but compares |relative forget gap| with |relative retain gap|."""
    if acc_f <= cal.cal_f:
        return 0.0
    rel_f, rel_r = relative_gaps(acc_f, acc_r, cal)
    return p.beta_low if abs(rel_f) < abs(rel_r) else p.beta_high


@BETA_SCHEDULES.register("adaptive_smooth")
def adaptive_smooth(acc_f: float, acc_r: float, cal: Calibration, p: BetaParams) -> float:
    """A continuous version: β = ramp · (β_low + (β_high − β_low)·σ((g_f − |g_r|)/τ)).

    g_f = (acc_f − Cal_f)/100 and g_r = (acc_r − Cal_r)/100 are the absolute gaps in [0, 1];
    ramp = min(1, g_f/τ) takes β continuously to 0 as acc_f falls to Cal_f.
    """
    g_f = (acc_f - cal.cal_f) / 100.0
    if g_f <= 0:
        return 0.0
    g_r = abs(acc_r - cal.cal_r) / 100.0
    ramp = min(1.0, g_f / p.tau)
    return ramp * (p.beta_low + (p.beta_high - p.beta_low) / (1 + math.exp(-(g_f - g_r) / p.tau)))


def beta_shares(betas: list[float], schedule: str, p: BetaParams) -> dict[str, float]:
    """The β actually used on a path: the share of steps at each of the schedule's levels, and the mean.

    Levels: 0 and β for ``fixed``; 0, β_low and β_high for the step rules; any other value (the smooth
    schedule's) counts as ``beta_other``.
    """
    levels = (
        {"0": 0.0, "fixed": p.beta}
        if schedule == "fixed"
        else {"0": 0.0, "low": p.beta_low, "high": p.beta_high}
    )
    counts = dict.fromkeys([*levels, "other"], 0)
    for b in betas:
        counts[next((name for name, v in levels.items() if b == v), "other")] += 1
    n = max(len(betas), 1)
    return {f"beta_{name}": c / n for name, c in counts.items()} | {"beta_mean": sum(betas) / n}
