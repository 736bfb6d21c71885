"""Choosing models on the path, without the retrained model.

    gap_cal(t) = ½(|RA(t) − Cal_r| + |FA(t) − Cal_f|)

Effective unlearning region: every t with gap_cal(t) < gap_cal(1) (the points that beat the
pre-unlearning endpoint). t* = argmin of the cubic interpolant of gap_cal over [0.75, 1] in steps
of 0.01 — a value of t, not an index. The effective region's intervals (for shading plots) use PCHIP,
a shape-preserving interpolant: between two grid points it stays within their range, so it never shows
a region where the grid has none (a cubic spline rings on a flat gap_cal).
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline, PchipInterpolator

from mcu_dist.path.beta import CalTargets


def gap_cal(ra: float, fa: float, cal: CalTargets) -> float:
    return 0.5 * (abs(ra - cal.cal_r) + abs(fa - cal.cal_f))


def interpolant(ts: list[float], gaps: list[float]):
    order = np.argsort(ts)
    x, y = np.asarray(ts, float)[order], np.asarray(gaps, float)[order]
    return CubicSpline(x, y) if len(x) >= 4 else (lambda q: np.interp(q, x, y))


def t_star(
    ts: list[float], gaps: list[float], lo: float = 0.75, hi: float = 1.0, step: float = 0.01
) -> float:
    fine = np.round(np.arange(lo, hi + step / 2, step), 10)
    values = interpolant(ts, gaps)(fine)
    return float(fine[int(np.argmin(values))])


def effective_region(ts: list[float], gaps: list[float]) -> list[float]:
    """The grid points whose gap_cal beats the endpoint t = 1 (which must be on the grid)."""
    at_end = dict(zip(ts, gaps, strict=True))[1.0]
    return [t for t, g in zip(ts, gaps, strict=True) if g < at_end]


def region_intervals(ts: list[float], gaps: list[float], step: float = 0.01) -> list[tuple[float, float]]:
    """The effective region of the PCHIP-interpolated curve as closed intervals of t (for shading plots)."""
    at_end = dict(zip(ts, gaps, strict=True))[1.0]
    fine = np.round(np.arange(0, 1 + step / 2, step), 10)
    order = np.argsort(ts)
    x, y = np.asarray(ts, float)[order], np.asarray(gaps, float)[order]
    inside = PchipInterpolator(x, y)(fine) < at_end
    intervals, start = [], None
    for i, ok in enumerate(inside):
        if ok and start is None:
            start = float(fine[i])
        if start is not None and (not ok or i == len(fine) - 1):
            intervals.append((start, float(fine[i] if ok else fine[i - 1])))
            start = None
    return intervals
