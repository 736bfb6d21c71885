"""The compute-matched control (<baseline>+budget) and the β actually used on a path."""

from __future__ import annotations

import copy

import pytest
import torch

from mcu_dist.baselines import BASELINES
from mcu_dist.config import MCUConfig
from mcu_dist.path.beta import beta_shares
from mcu_dist.references import baseline_model, has_budget_control


@pytest.mark.parametrize("method", ["neggrad_plus"])
def test_budget_row_is_the_baseline_run_again_from_its_own_output_for_the_curve_epochs(
    digits_lab, digits_original, method
):
    epochs = 2
    endpoint, base_s = baseline_model(digits_lab, method, digits_original)
    control, total_s = baseline_model(digits_lab, method, digits_original, more_epochs=epochs)
    unit = BASELINES[method]
    hp = {**unit.resolve(digits_lab.cfg.baselines.params.get(method)), "epochs": epochs}
    direct = unit.run(copy.deepcopy(endpoint).train(), digits_lab, hp, digits_lab.cfg.seeds.unlearn).eval()
    for (name, a), b in zip(control.state_dict().items(), direct.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    moved = any(
        not torch.equal(a, b) for a, b in zip(control.parameters(), endpoint.parameters(), strict=True)
    )
    assert moved, "the control continues training past θ_p"
    assert total_s >= base_s  # its cost includes θ_p's


def test_budget_control_is_offered_for_iterative_baselines_only():
    assert has_budget_control("ft") and has_budget_control("salun")
    assert not has_budget_control("retrain") and not has_budget_control("endpoint")


def test_beta_shares_count_each_level_of_the_schedule():
    p = MCUConfig(beta=0.2, beta_low=0.01, beta_high=0.5)
    steps = [0.0, 0.5, 0.5, 0.01, 0.5, 0.0, 0.3, 0.5]
    shares = beta_shares(steps, "adaptive_step", p)
    assert shares == pytest.approx(
        {
            "beta_0": 2 / 8,
            "beta_low": 1 / 8,
            "beta_high": 4 / 8,
            "beta_other": 1 / 8,
            "beta_mean": sum(steps) / 8,
        }
    )
    fixed = beta_shares([0.2, 0.2, 0.0], "fixed", p)
    assert fixed["beta_fixed"] == pytest.approx(2 / 3) and fixed["beta_0"] == pytest.approx(1 / 3)
    assert "beta_low" not in fixed
