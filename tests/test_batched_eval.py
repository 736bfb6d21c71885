"""Batched path evaluation equals per-point evaluation: same rows, same BN statistics, same MIA."""

from __future__ import annotations

import copy

import pytest
import torch

from mcu_dist.evaluate.batched import chunks, evaluate_grid, recalibrate_many
from mcu_dist.evaluate.bn import bn_set_positions, recalibrate_bn
from mcu_dist.evaluate.inference import in_eval_layout
from mcu_dist.evaluate.path_eval import evaluate_point
from mcu_dist.path.bezier import curve_between


@pytest.fixture(scope="module")
def bent_curve(digits_lab, digits_original):
    """A curve whose midpoint is off the line, so every t has its own weights and BN statistics."""
    endpoint = copy.deepcopy(digits_original)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in endpoint.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    names = [n for n, _ in digits_original.named_parameters()]
    curve = curve_between(digits_original, endpoint, 2, names)
    with torch.no_grad():
        for p in curve.trainable():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return curve


def test_batched_rows_equal_per_point_rows(digits_lab, bent_curve):
    lab = digits_lab
    assert lab.splits.classwise  # TA_forgotten is part of the row
    grid = lab.cfg.eval.grid()
    calib = bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    per_point = [evaluate_point(bent_curve.materialize(t), lab, t, calib) for t in grid]
    batched = evaluate_grid(bent_curve, lab, grid, calib, chunk=0)
    assert [r["t"] for r in batched] == grid
    for a, b in zip(per_point, batched, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            if k != "seconds":
                assert b[k] == pytest.approx(a[k], abs=1e-6), (a["t"], k)
    # the rows differ along the path: the test would notice a chunk evaluated at the wrong t
    assert len({round(r["RA"], 6) for r in batched}) > 1


def test_chunk_size_does_not_change_rows(digits_lab, bent_curve):
    lab = digits_lab
    grid = lab.cfg.eval.grid()
    calib = bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    assert [len(c) for c in chunks(grid, 2)] == [2, 2, 1]
    whole = evaluate_grid(bent_curve, lab, grid, calib, chunk=0)
    pairs = evaluate_grid(bent_curve, lab, grid, calib, chunk=2)
    for a, b in zip(whole, pairs, strict=True):
        assert {k: v for k, v in a.items() if k != "seconds"} == {
            k: v for k, v in b.items() if k != "seconds"
        }


def test_each_point_gets_its_own_bn_statistics(digits_lab, bent_curve):
    lab = digits_lab
    calib = bn_set_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    ts = [0.0, 0.4, 1.0]
    together = [in_eval_layout(bent_curve.materialize(t), lab) for t in ts]
    recalibrate_many(together, lab, calib, 64)
    for t, m in zip(ts, together, strict=True):
        alone = recalibrate_bn(bent_curve.materialize(t), lab, calib, 64)
        for (n, a), (_, b) in zip(alone.named_buffers(), m.named_buffers(), strict=True):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"t={t} {n}")
    means = [dict(m.named_buffers())["features.1.running_mean"] for m in together]
    assert not torch.allclose(means[0], means[2])
