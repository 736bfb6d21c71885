"""Confidence intervals cover the point estimate, shrink with more samples, include the MIA shadow draws."""

from __future__ import annotations

import pytest
import torch

from mcu_dist.evaluate.bootstrap import Outcomes, intervals, replicates
from mcu_dist.evaluate.metrics import GAP_METRICS, avg_gap


def _outcomes(n: int, rates=(0.9, 0.3, 0.8, 0.4), draws: int = 1, seed: int = 0) -> Outcomes:
    g = torch.Generator().manual_seed(seed)
    ra, fa, ta, mia = rates
    n_f = max(n // 10, 5)
    return Outcomes(
        torch.rand(n, generator=g) < ra,
        torch.rand(n_f, generator=g) < fa,
        torch.rand(n, generator=g) < ta,
        [torch.rand(n_f, generator=g) < mia for _ in range(draws)],
    )


def _point(o: Outcomes) -> dict[str, float]:
    return {
        "UA": 100 - 100 * o.forget.double().mean().item(),
        "RA": 100 * o.retain.double().mean().item(),
        "TA": 100 * o.test.double().mean().item(),
        "MIA": 100 * o.mia[0].double().mean().item(),
    }


@pytest.mark.parametrize("seed", range(5))
def test_intervals_cover_the_point_estimate(seed):
    model, ref = _outcomes(2000, seed=seed), _outcomes(2000, (0.85, 0.1, 0.75, 0.6), seed=seed + 100)
    ci = intervals(model, ref, n=1000, seed=seed)
    point = _point(model)
    for m in GAP_METRICS:
        assert ci[f"{m}_lo"] <= point[m] <= ci[f"{m}_hi"], m
    gap = avg_gap(point, _point(ref))
    assert ci["avg_gap_lo"] <= gap <= ci["avg_gap_hi"]


def test_intervals_shrink_with_more_samples():
    small, large = intervals(_outcomes(500), n=1000), intervals(_outcomes(12500), n=1000)
    for m in GAP_METRICS:
        w_small, w_large = small[f"{m}_hi"] - small[f"{m}_lo"], large[f"{m}_hi"] - large[f"{m}_lo"]
        assert 0 < w_large < w_small / 3, m  # 25x the samples: about 1/5 of the width


def test_the_reference_is_resampled_with_the_same_indices():
    o = _outcomes(1000, draws=3)
    ci = intervals(o, o, n=500)
    assert ci["avg_gap_lo"] == ci["avg_gap_hi"] == 0.0


def test_disagreeing_shadow_draws_widen_the_mia_interval():
    base = _outcomes(1000)
    n_f = len(base.forget)
    one = Outcomes(base.retain, base.forget, base.test, [torch.zeros(n_f, dtype=torch.bool)])
    two = Outcomes(
        base.retain,
        base.forget,
        base.test,
        [torch.zeros(n_f, dtype=torch.bool), torch.ones(n_f, dtype=torch.bool)],
    )
    assert intervals(one)["MIA_hi"] == 0.0
    ci = intervals(two)
    assert ci["MIA_lo"] == 0.0 and ci["MIA_hi"] == 100.0
    reps = replicates(two, n=400)["MIA"]
    assert (reps == 100.0).sum() == (reps == 0.0).sum() == 200  # the draws are used in turn


def test_no_replicates_means_no_intervals():
    assert intervals(_outcomes(100), n=0) == {}


def test_evaluated_outcomes_reproduce_the_row_and_its_headline_mia(digits_lab, digits_original):
    from mcu_dist.evaluate.metrics import predict
    from mcu_dist.evaluate.mia import mia_efficacy
    from mcu_dist.evaluate.point import evaluate_model, evaluate_outcomes

    row, o = evaluate_outcomes(digits_original, digits_lab, shadow_draws=3)
    assert len(o.mia) == 3 and row["MIA_shadow_min"] <= row["MIA"] <= row["MIA_shadow_max"]
    assert _point(o) == pytest.approx({m: row[m] for m in GAP_METRICS})
    assert evaluate_model(digits_original, digits_lab)["MIA"] == row["MIA"]  # draw 0 is the headline's
    kw = {"normalize": digits_lab.normalize}
    s, b = digits_lab.splits, digits_lab.bundle
    outs = [
        predict(digits_original, b.train, s.retain, **kw),
        predict(digits_original, b.test, s.test_eval, **kw),
    ]
    forget = predict(digits_original, b.train, s.forget, **kw)
    assert mia_efficacy(*outs, forget, digits_lab.cfg.eval.mia_cap, 0)["MIA"] == row["MIA"]
    ci = intervals(o, n=500)
    for m in GAP_METRICS:
        assert ci[f"{m}_lo"] <= row[m] <= ci[f"{m}_hi"], m


def test_seed_pooled_interval_is_one_seeds_own_and_narrows_with_more_seeds():
    from mcu_dist.report import pooled_interval

    one = {"UA": 40.0, "UA_lo": 36.0, "UA_hi": 45.0}
    assert pooled_interval([one], "UA") == pytest.approx((36.0, 45.0))
    lo, hi = pooled_interval([one] * 4, "UA")
    assert (lo, hi) == pytest.approx((40.0 - 4.0 / 2, 40.0 + 5.0 / 2))  # same seeds: half-widths / √S
    assert pooled_interval([one, {"UA": 41.0}], "UA") != pooled_interval([one], "UA")


def test_ablation_rows_name_the_fraction_the_mask_selected():
    from mcu_dist.report import table

    def rec(k, frac, seed):
        base = {"UA": 1.0, "RA": 2.0, "TA": 3.0, "MIA": 4.0, "avg_gap": 5.0, "rte_min": 0.1}
        return {
            "scenario": "random:0.1",
            "method": "ga",
            "variant": "MCU",
            "seed": seed,
            "mcu.k": k,
            "mask_fraction": frac,
            **base,
            "baseline": dict(base),
            "retrain": dict(base),
        }

    rows = table([rec(0.1, 0.24, 0), rec(0.1, 0.26, 1), rec(0.5, 1.0, 0)])
    names = [r["model"] for r in rows]
    assert "ga+MCU k=0.1 (sel 25%)" in names and "ga+MCU k=0.5 (sel 100%)" in names
