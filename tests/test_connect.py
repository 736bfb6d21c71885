"""Mode connectivity, checked (Garipov et al. 2018): between two independently trained digits models the
straight line has a loss barrier, and the Bézier curve trained by the project's own curve loop (forget
term off, no mask) has almost none; the line is the untrained curve, evaluated the same way."""

from __future__ import annotations

import pytest

from mcu_dist.connect import barrier, connect, format_connectivity
from tests.conftest import digits_config


def test_barrier_is_the_bump_above_the_endpoints_chord():
    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    assert barrier(ts, [1.0, 1.25, 1.5, 1.75, 2.0]) == 0.0  # on the chord
    assert barrier(ts, [1.0, 2.0, 3.0, 1.75, 2.0]) == pytest.approx(1.5)
    assert barrier(ts, [99.0, 90.0, 50.0, 95.0, 97.0], sign=-1.0) == pytest.approx(48.0)  # accuracy dips


def test_trained_curve_removes_the_lines_barrier(session_dir):
    cfg = digits_config(session_dir, **{"mcu.epochs": 10, "eval.t_points": 9})
    result = connect(cfg, log=lambda *_: None)
    assert [r["t"] for r in result.rows] == cfg.eval.grid()
    ends = result.rows[0], result.rows[-1]
    for r in ends:  # both endpoints are trained models, and the curve's endpoints are theirs
        assert r["line_acc"] >= 95 and r["curve_loss"] == pytest.approx(r["line_loss"])
    assert result.barrier["line_loss"] > 0.5, format_connectivity(result)
    assert result.worst_loss["curve"] < 0.5 * result.worst_loss["line"], format_connectivity(result)
    assert result.barrier["curve_loss"] < 0.5 * result.barrier["line_loss"], format_connectivity(result)
    assert result.barrier["curve_acc"] < 0.3 * result.barrier["line_acc"], format_connectivity(result)
