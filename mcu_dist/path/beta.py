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

from mcu_dist.config import ConfigError, MCUConfig
from mcu_dist.registry import Registry


@dataclass(frozen=True)
class CalTargets:
    """The calibration targets Cal_f, Cal_r (distinct from the BN set, ``eval.bn_set``)."""

    cal_f: float  # θ_o's test accuracy (random forgetting) or 0 (class-wise)
    cal_r: float  # θ_o's accuracy on its training data


BetaRule = Callable[[float, float, CalTargets, MCUConfig], float]  # reads beta, beta_low, beta_high, beta_tau
BETA_SCHEDULES: Registry[BetaRule] = Registry("mcu.beta_schedule")


def check_schedule(cfg: MCUConfig) -> None:
    for name in cfg.beta_schedule:
        if name not in BETA_SCHEDULES:
            raise ConfigError(
                f"mcu.beta_schedule: got {name!r}; allowed: {', '.join(sorted(BETA_SCHEDULES))}"
            )


def variant_name(schedule: str) -> str:
    """A path's name is its β schedule: mcu (fixed, the paper's MCU), mcu_beta (adaptive_step, MCU-β)."""
    return {"fixed": "mcu", "adaptive_step": "mcu_beta"}.get(schedule, f"mcu_{schedule}")


def relative_gaps(acc_f: float, acc_r: float, cal: CalTargets) -> tuple[float, float]:
    rel_f = math.inf if cal.cal_f == 0 else (acc_f - cal.cal_f) / cal.cal_f
    rel_r = (acc_r - cal.cal_r) / cal.cal_r if cal.cal_r else 0.0
    return rel_f, rel_r


@BETA_SCHEDULES.register("fixed")
def fixed(acc_f: float, acc_r: float, cal: CalTargets, p: MCUConfig) -> float:
    return p.beta


@BETA_SCHEDULES.register("adaptive_step")
def adaptive_step(acc_f: float, acc_r: float, cal: CalTargets, p: MCUConfig) -> float:
    if acc_f <= cal.cal_f:
        return 0.0
    rel_f, rel_r = relative_gaps(acc_f, acc_r, cal)
    return p.beta_low if rel_f < rel_r else p.beta_high


@BETA_SCHEDULES.register("adaptive_abs")
def adaptive_abs(acc_f: float, acc_r: float, cal: CalTargets, p: MCUConfig) -> float:
    """As ``adaptive_step`` but compares |relative forget gap| with |relative retain gap|."""
    if acc_f <= cal.cal_f:
        return 0.0
    rel_f, rel_r = relative_gaps(acc_f, acc_r, cal)
    return p.beta_low if abs(rel_f) < abs(rel_r) else p.beta_high


@BETA_SCHEDULES.register("adaptive_smooth")
def adaptive_smooth(acc_f: float, acc_r: float, cal: CalTargets, p: MCUConfig) -> float:
    """A continuous version: β = ramp · (β_low + (β_high − β_low)·σ((g_f − |g_r|)/τ)).

    g_f = (acc_f − Cal_f)/100 and g_r = (acc_r − Cal_r)/100 are the absolute gaps in [0, 1];
    ramp = min(1, g_f/τ) takes β continuously to 0 as acc_f falls to Cal_f.
    """
    g_f = (acc_f - cal.cal_f) / 100.0
    if g_f <= 0:
        return 0.0
    g_r = abs(acc_r - cal.cal_r) / 100.0
    ramp = min(1.0, g_f / p.beta_tau)
    return ramp * (p.beta_low + (p.beta_high - p.beta_low) / (1 + math.exp(-(g_f - g_r) / p.beta_tau)))


def _device_accuracies(values, cal: CalTargets):
    """(acc_f, acc_r) as 0-dim float64 tensors from a batch's summed (n_f, n_r, c_f, c_r, ...) on its
    device, the same arithmetic as ``train.mcu.accuracies`` (n_f > 0: the caller knows it)."""
    import torch

    n_f, n_r, c_f, c_r = values[0], values[1], values[2], values[3]
    acc_r = torch.where(n_r > 0, 100.0 * c_r / n_r.clamp_min(1.0), torch.full_like(n_r, cal.cal_r))
    return 100.0 * c_f / n_f, acc_r


def _device_gaps(acc_f, acc_r, cal: CalTargets):
    import torch

    rel_f = torch.full_like(acc_f, math.inf) if cal.cal_f == 0 else (acc_f - cal.cal_f) / cal.cal_f
    rel_r = (acc_r - cal.cal_r) / cal.cal_r if cal.cal_r else torch.zeros_like(acc_r)
    return rel_f, rel_r


def _device_step(values, cal: CalTargets, p: MCUConfig, absolute: bool):
    import torch

    acc_f, acc_r = _device_accuracies(values, cal)
    rel_f, rel_r = _device_gaps(acc_f, acc_r, cal)
    if absolute:
        rel_f, rel_r = rel_f.abs(), rel_r.abs()
    zero, low, high = (torch.full_like(acc_f, v) for v in (0.0, p.beta_low, p.beta_high))
    return torch.where(acc_f <= cal.cal_f, zero, torch.where(rel_f < rel_r, low, high))


# β from the batch's summed statistics *on their device*, without reading them back to the host:
# the same value as the host rule (bitwise: the same float64 operations; tests/test_beta.py), so a
# single-process curve step need not wait for the device. ``fixed`` gives its plain float. The
# smooth rule is absent: its exp on the device may differ from the host's in the last bit.
DEVICE_RULES: dict[str, Callable] = {
    "fixed": lambda values, cal, p: p.beta,
    "adaptive_step": lambda values, cal, p: _device_step(values, cal, p, absolute=False),
    "adaptive_abs": lambda values, cal, p: _device_step(values, cal, p, absolute=True),
}


def beta_shares(betas: list[float], schedule: str, p: MCUConfig) -> dict[str, float]:
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
