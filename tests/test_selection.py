"""gap_cal, the effective region and t* on hand-made gap curves."""

from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicSpline

from mcu_dist.config import EvalConfig
from mcu_dist.evaluate.selection import (
    effective_region,
    gap_cal,
    has_path_gain,
    interpolant,
    region_intervals,
    selection_regret,
    t_star,
)
from mcu_dist.path.beta import CalTargets


def test_gap_cal_formula():
    assert gap_cal(90.0, 70.0, CalTargets(cal_f=60.0, cal_r=100.0)) == 0.5 * (10 + 10)


def test_t_star_is_a_t_in_range_at_the_interpolated_minimum():
    ts = EvalConfig().grid()
    assert len(ts) == 20 and ts[0] == 0.0 and ts[-1] == 1.0
    gaps = [(t - 0.83) ** 2 for t in ts]
    t = t_star(ts, gaps)
    assert isinstance(t, float) and 0.75 <= t <= 1.0
    # a t, not an index; PCHIP puts a sampled minimum on the nearest grid point (0.842), within half a
    # grid spacing of the true one
    assert abs(t - 0.83) <= 0.5 / 19 and t != 0.75
    # a minimum outside the window is clipped to the window
    assert t_star(ts, [(t - 0.2) ** 2 for t in ts]) == 0.75
    assert t_star(ts, [-t for t in ts]) == 1.0


def test_effective_region_on_a_hand_made_curve():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    gaps = [9.0, 4.0, 2.0, 6.0, 5.0]
    assert effective_region(ts, gaps) == [0.25, 0.5]
    assert effective_region(ts, [1.0, 1.0, 1.0, 1.0, 1.0]) == []
    intervals = region_intervals(ts, gaps)
    assert len(intervals) == 1
    lo, hi = intervals[0]
    assert 0.0 < lo <= 0.25 and 0.5 <= hi < 0.75


def test_dense_grid_near_one():
    grid = EvalConfig(t_points=5, t_dense_near_one=6).grid()
    assert grid == sorted(set(grid)) and 1.0 in grid and 0.95 in grid
    assert np.all(np.diff(grid) > 0)


def _neighbour_range_ok(ts: list[float], gaps: list[float], t: float) -> bool:
    """The interpolated gap_cal at t lies within the values of the grid points around t."""
    i = int(np.searchsorted(ts, t))
    lo, hi = (i, i) if ts[min(i, len(ts) - 1)] == t else (i - 1, i)
    pair = [gaps[lo], gaps[hi]]
    value = float(interpolant(ts, gaps)(t))
    return min(pair) - 1e-9 <= value <= max(pair) + 1e-9


def test_t_star_never_undershoots_its_grid_neighbours():
    """On a flat gap_cal in the window with a step just outside it, a cubic spline rings and invents a
    minimum between grid points; the shape-preserving interpolant cannot."""
    ts = EvalConfig().grid()
    gaps = [5.0 if t < 0.7 else 1.0 for t in ts]
    spline = CubicSpline(ts, gaps)
    fine = np.round(np.arange(0.75, 1.005, 0.01), 10)
    assert spline(fine).min() < 1.0 - 1e-3, "the premise: the spline overshoots on this curve"
    chosen = t_star(ts, gaps)
    assert _neighbour_range_ok(ts, gaps, chosen)
    rng = np.random.default_rng(0)
    for _ in range(200):
        gaps = list(
            rng.choice([0.5, 1.0, 3.0], size=len(ts)) + rng.normal(0, 0.01, len(ts)) * rng.integers(0, 2)
        )
        lo = float(rng.choice([0.0, 0.25, 0.5, 0.75]))
        chosen = t_star(ts, gaps, lo, 1.0)
        assert lo <= chosen <= 1.0 and _neighbour_range_ok(ts, gaps, chosen), (gaps, lo, chosen)


def test_t_star_window_is_honoured():
    ts = EvalConfig().grid()
    gaps = [abs(t - 0.45) for t in ts]  # the whole grid's minimum sits at t ~ 0.45
    assert t_star(ts, gaps) == 0.75, "the paper's window [0.75, 1] cannot reach it"
    assert abs(t_star(ts, gaps, 0.0, 1.0) - 0.45) <= 0.5 / 19
    assert t_star(ts, gaps, 0.5, 1.0) == 0.5


def test_path_gain_and_selection_regret():
    assert has_path_gain(0.9, [0.8, 0.9]) and not has_path_gain(1.0, [0.8]) and not has_path_gain(0.9, [])
    assert selection_regret(3.0, [6.0, 2.0, 4.0]) == 1.5
    assert selection_regret(2.0, [6.0, 2.0, 4.0]) == 1.0
    assert selection_regret(0.0, [0.0, 1.0]) == 1.0 and selection_regret(1.0, [0.0, 1.0]) == float("inf")


def test_the_shaded_region_never_sits_where_the_grid_has_none():
    """PCHIP stays within its grid neighbours' range: a t between two grid points that both miss the
    region (gap_cal ≥ the endpoint's) is never shaded — the cubic spline rang there on flat curves."""
    rng = np.random.default_rng(0)
    ts = [round(float(t), 4) for t in np.linspace(0, 1, 9)]
    for trial in range(200):
        gaps = list(rng.choice([1.0, 2.0, 2.0, 2.0, 5.0], size=len(ts)))  # plateaus, steps, flats
        gaps[-1] = 2.0
        region = set(effective_region(ts, gaps))
        for lo, hi in region_intervals(ts, gaps):
            for t in np.arange(lo, hi + 1e-9, 0.01):
                left = max(g for g in ts if g <= t + 1e-9)
                right = min(g for g in ts if g >= t - 1e-9)
                assert left in region or right in region, (trial, t, gaps)
    # a flat tail equal to the endpoint shades nothing
    assert region_intervals(ts, [3.0, 2.5, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0]) == []
