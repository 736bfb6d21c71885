"""Honest rows: every MCU gain is attributed against the baseline as produced, against θ_p with BN
re-estimated (<baseline>+BN, which must be the path's own t = 1 point) and against the same selection on
the untrained straight line (<baseline>+line, which shares the path's endpoints); a path with t* = 1 or
an empty effective region is marked as giving no path gain; selection_regret is Avg. Gap at t* over the
best Avg. Gap on the grid."""

from __future__ import annotations

import pytest

from mcu_dist.evaluate.names import GAP_METRICS
from mcu_dist.experiment import format_table, run_experiment
from mcu_dist.validation import validate
from tests.conftest import digits_config

POINT = ("RA", "FA", "TA", "MIA")


@pytest.fixture(scope="module")
def honest_run(session_dir):
    cfg = digits_config(
        session_dir,
        **{
            "baselines.methods": ["ga"],
            "baselines.params": {"ga": {"lr": 0.01}},
            "mcu.beta_schedule": ["fixed"],
        },
    )
    validate(cfg)
    return cfg, run_experiment(cfg, log=lambda *_: None)


def test_rows_and_their_order(honest_run):
    _, result = honest_run
    assert [r["model"] for r in result.rows] == [
        "Original",
        "Retrain",
        "ga",
        "ga+BN",
        "ga+line",
        "ga+budget",
        "ga+mcu",
    ]


def test_baseline_bn_row_is_the_paths_t1_point(honest_run):
    _, result = honest_run
    rows = {r["model"]: r for r in result.rows}
    at_one = result.paths["ga+mcu"].path_table[-1]
    assert at_one["t"] == 1.0
    for m in POINT:
        assert rows["ga+BN"][m] == pytest.approx(at_one[m], abs=1e-9), m
    line_at_one = result.lines["ga"].path_table[-1]
    for m in POINT:  # the line and the curve share their endpoints, so their t = 1 points agree too
        assert line_at_one[m] == pytest.approx(at_one[m], abs=1e-9), m
    assert rows["ga+BN"]["RA"] != rows["ga"]["RA"] or rows["ga+BN"]["MIA"] != rows["ga"]["MIA"], (
        "GA's own BN buffers and re-estimated ones should not give the very same model on digits"
    )


def test_line_is_the_untrained_curve_selected_the_same_way(honest_run):
    cfg, result = honest_run
    line = result.lines["ga"]
    lo, hi = cfg.eval.t_star_range
    assert [r["t"] for r in line.path_table] == cfg.eval.grid()
    assert lo <= line.t_star <= hi
    for a, b in zip(line.path_table, result.paths["ga+mcu"].path_table, strict=True):
        if a["t"] == 0.0:  # both start at θ_o
            assert all(a[m] == pytest.approx(b[m], abs=1e-9) for m in POINT)


def test_gains_path_gain_and_regret(honest_run):
    _, result = honest_run
    rows = {r["model"]: r for r in result.rows}
    mcu, path = rows["ga+mcu"], result.paths["ga+mcu"]
    for base, col in (("ga", "gain_vs_baseline"), ("ga+BN", "gain_vs_bn"), ("ga+line", "gain_vs_line")):
        assert mcu[col] == pytest.approx(rows[base]["avg_gap"] - mcu["avg_gap"])
    retrain = rows["Retrain"]
    for name in ("ga+BN", "ga+line", "ga+mcu"):
        r = rows[name]
        assert r["avg_gap"] == pytest.approx(sum(abs(r[m] - retrain[m]) for m in GAP_METRICS) / 4)
    assert mcu["path_gain"] == float(path.t_star < 1.0 and len(path.effective_region) > 0)
    best = min(r["avg_gap"] for r in path.path_table)
    assert mcu["selection_regret"] == pytest.approx(mcu["avg_gap"] / best)
    table = format_table(result.rows)
    assert "ga+BN" in table and "ga+line" in table
    assert ("no path gain" in table) == any(r.get("path_gain") == 0.0 for r in result.rows)


def test_line_control_can_be_turned_off(session_dir):
    cfg = digits_config(
        session_dir,
        **{"baselines.methods": ["ga"], "mcu.beta_schedule": ["fixed"], "eval.line_control": False},
    )
    result = run_experiment(cfg, log=lambda *_: None)
    assert [r["model"] for r in result.rows] == ["Original", "Retrain", "ga", "ga+BN", "ga+budget", "ga+mcu"]
    assert "gain_vs_line" not in result.rows[-1] and "gain_vs_bn" in result.rows[-1]
