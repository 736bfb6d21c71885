"""Choosing models on the path, without the retrained model.

    gap_cal(t) = ½(|RA(t) − Cal_r| + |FA(t) − Cal_f|)

Effective unlearning region: every t with gap_cal(t) < gap_cal(1) (the points that beat the
pre-unlearning endpoint). t* = argmin of the interpolated gap_cal over ``eval.t_star_range`` (the
paper's [0.75, 1]) in steps of 0.01 — a value of t, not an index. The interpolant is PCHIP
(monotone piecewise cubic Hermite), shape-preserving: between two grid points it stays within their
range, so on a flat gap_cal it cannot invent a minimum that the grid does not show (a cubic spline
rings there and picks such a t). A path has a *path gain* only when t* < 1 and its effective region is
non-empty; otherwise the MCU row is θ_p with BN re-estimated, nothing the path added.

    selection_regret = Avg. Gap(θ(t*)) / min over the grid of Avg. Gap(θ(t))

says how much the retrain-free choice of t* loses against the best point of the path (research mode
only: it needs θ_r); deployment mode, which selects without θ_r, is judged by it.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

from mcu_dist.path.beta import CalTargets


def gap_cal(ra: float, fa: float, cal: CalTargets) -> float:
    return 0.5 * (abs(ra - cal.cal_r) + abs(fa - cal.cal_f))


def interpolant(ts: list[float], gaps: list[float]):
    order = np.argsort(ts)
    x, y = np.asarray(ts, float)[order], np.asarray(gaps, float)[order]
    return PchipInterpolator(x, y, extrapolate=False)


def t_star(
    ts: list[float], gaps: list[float], lo: float = 0.75, hi: float = 1.0, step: float = 0.01
) -> float:
    fine = np.round(np.arange(lo, hi + step / 2, step), 10)
    fine = fine[(fine >= min(ts)) & (fine <= max(ts))]  # never extrapolate beyond the grid
    if len(fine) == 0:
        fine = np.array([max(ts)])
    values = interpolant(ts, gaps)(fine)
    return float(fine[int(np.argmin(values))])


def has_path_gain(t_star: float, region: list[float]) -> bool:
    """False when t* = 1 or the effective region is empty: the path added nothing to θ_p + BN."""
    return t_star < 1.0 and len(region) > 0


def selection_regret(chosen: float, grid: list[float]) -> float:
    """Avg. Gap at t* over the best Avg. Gap on the grid (1 = t* found the best point; 0/0 counts as 1)."""
    best = min(grid)
    if best <= 0:
        return 1.0 if chosen <= 0 else float("inf")
    return chosen / best


def effective_region(ts: list[float], gaps: list[float]) -> list[float]:
    """The grid points whose gap_cal beats the endpoint t = 1 (which must be on the grid)."""
    at_end = dict(zip(ts, gaps, strict=True))[1.0]
    return [t for t, g in zip(ts, gaps, strict=True) if g < at_end]


def region_intervals(ts: list[float], gaps: list[float], step: float = 0.01) -> list[tuple[float, float]]:
    """The effective region of the PCHIP-interpolated curve as closed intervals of t (for shading plots)."""
    at_end = dict(zip(ts, gaps, strict=True))[1.0]
    fine = np.round(np.arange(0, 1 + step / 2, step), 10)
    inside = interpolant(ts, gaps)(fine) < at_end  # NaN (False) outside the grid
    intervals, start = [], None
    for i, ok in enumerate(inside):
        if ok and start is None:
            start = float(fine[i])
        if start is not None and (not ok or i == len(fine) - 1):
            intervals.append((start, float(fine[i] if ok else fine[i - 1])))
            start = None
    return intervals
