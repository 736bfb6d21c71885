"""gap_cal, the effective region and t* on hand-made gap curves."""

from __future__ import annotations

import numpy as np

from mcu_dist.config import EvalConfig
from mcu_dist.evaluate.selection import effective_region, gap_cal, region_intervals, t_star
from mcu_dist.path.beta import CalTargets


def test_gap_cal_formula():
    assert gap_cal(90.0, 70.0, CalTargets(cal_f=60.0, cal_r=100.0)) == 0.5 * (10 + 10)


def test_t_star_is_a_t_in_range_at_the_interpolated_minimum():
    ts = EvalConfig().grid()
    assert len(ts) == 20 and ts[0] == 0.0 and ts[-1] == 1.0
    gaps = [(t - 0.83) ** 2 for t in ts]
    t = t_star(ts, gaps)
    assert isinstance(t, float) and 0.75 <= t <= 1.0
    assert abs(t - 0.83) <= 0.011  # found between grid points, not an index
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
