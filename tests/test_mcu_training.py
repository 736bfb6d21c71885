"""Curve training: the mask is a hard constraint, the control point really moves, β is logged per step."""

from __future__ import annotations

import copy

import pytest
import torch

from mcu_dist.config import ConfigError, MCUConfig, with_overrides
from mcu_dist.path.beta import BETA_SCHEDULES, CalTargets
from mcu_dist.path.bezier import curve_between
from mcu_dist.path.mask import compute_mask, random_tensors, select_tensors
from mcu_dist.train.mcu import calibration_targets, retain_sample, train_curve
from mcu_dist.validation import validate


@pytest.fixture(scope="module")
def endpoint(digits_original):
    """A stand-in pre-unlearned model: θ_o nudged off itself."""
    torch.manual_seed(1)
    model = copy.deepcopy(digits_original)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def _train(lab, original, endpoint, schedule, order=2, k=0.3, k_r=0.1, weight_decay=5e-4, epochs=2):
    cfg = MCUConfig(curve_order=order, k=k, k_r=k_r, epochs=epochs, weight_decay=weight_decay, batch_size=64)
    mask = compute_mask(original, lab, cfg.k, cfg.k_r)
    curve = curve_between(original, endpoint, order, mask.selected)
    before = {f"{j}.{n}": curve.point(j, n).detach().clone() for j in range(order + 1) for n in curve.names}
    cal = calibration_targets(original, lab, classwise=True)
    state = train_curve(curve, lab, cfg, schedule, cal, seed=0)
    return curve, mask, before, state


@pytest.mark.parametrize(
    "schedule,order", [("fixed", 2), ("adaptive_step", 2), ("adaptive_step", 3), ("fixed", 4)]
)
def test_selected_tensors_move_and_unselected_stay_bit_identical(
    digits_lab, digits_original, endpoint, schedule, order
):
    curve, mask, before, state = _train(digits_lab, digits_original, endpoint, schedule, order)
    selected = set(mask.selected)
    assert 0 < len(selected) < len(curve.names)
    moved = 0
    for j in range(order + 1):
        for n in curve.names:
            same = torch.equal(curve.point(j, n), before[f"{j}.{n}"])
            if 0 < j < order and n in selected:
                moved += not same
            else:
                assert same, f"point {j} tensor {n} moved but is frozen"
    assert moved == len(selected) * (order - 1), "every selected control-point tensor must move"
    assert len(state.steps) > 0 and all(s["beta"] >= 0 for s in state.steps)


def test_fixed_beta_training_changes_the_control_point_and_logs_beta(digits_lab, digits_original, endpoint):
    curve, _, before, state = _train(digits_lab, digits_original, endpoint, "fixed", k=1.0, k_r=0.0)
    diff = sum((curve.point(1, n) - before[f"1.{n}"]).abs().sum().item() for n in curve.names)
    assert diff > 0
    assert {s["beta"] for s in state.steps if s["n_f"] > 0} == {0.2}
    assert [s["step"] for s in state.steps] == list(range(len(state.steps)))


def test_adaptive_beta_logged_per_step_follows_the_rule(digits_lab, digits_original, endpoint):
    _, _, _, state = _train(digits_lab, digits_original, endpoint, "adaptive_step")
    cal = calibration_targets(digits_original, digits_lab, classwise=True)
    rule = BETA_SCHEDULES["adaptive_step"]
    for s in state.steps:
        expected = rule(s["acc_f"], s["acc_r"], cal, MCUConfig()) if s["n_f"] else 0.0
        assert s["beta"] == expected


def test_batch_without_forget_samples_gives_no_nan(digits_lab, digits_original, endpoint):
    lab = copy.copy(digits_lab)
    lab.splits = copy.copy(digits_lab.splits)
    lab.splits.forget = digits_lab.splits.forget[:1]  # a single forget sample: most batches have none
    cfg = MCUConfig(epochs=1, batch_size=32, k=1.0)
    curve = curve_between(digits_original, endpoint, 2, [n for n, _ in digits_original.named_parameters()])
    state = train_curve(curve, lab, cfg, "adaptive_step", CalTargets(0.0, 99.0), seed=0)
    assert any(s["n_f"] == 0 for s in state.steps)
    assert all(torch.isfinite(p).all() for p in curve.trainable())
    assert all(s["loss_f"] == s["loss_f"] for s in state.steps)  # not NaN


def test_retain_sample_is_seeded_fraction(digits_lab):
    r = digits_lab.splits.retain
    a, b = retain_sample(r, 0.5, 3), retain_sample(r, 0.5, 3)
    assert torch.equal(a, b) and len(a) == round(0.5 * len(r))
    assert not torch.equal(a, retain_sample(r, 0.5, 4))
    assert set(a.tolist()) <= set(r.tolist())


def test_two_stage_mask_on_hand_made_scores():
    sizes = {"a": 50, "b": 30, "c": 10, "d": 10}
    s_r = {"a": 1.0, "b": 0.1, "c": 0.5, "d": 0.2}
    s_f = {"a": 9.0, "b": 1.0, "c": 3.0, "d": 2.0}
    # k_r = 0.4: exclude "a" (count 0 < 40), then stop (50 >= 40);
    # k = 0.3: select c (0 < 30), d (10 < 30), b (20 < 30)
    assert select_tensors(sizes, s_r, s_f, k=0.3, k_r=0.4) == ["c", "d", "b"]
    assert select_tensors(sizes, s_r, s_f, k=0.5, k_r=0.0) == ["a"]
    assert select_tensors(sizes, s_r, s_f, k=1.0, k_r=0.0) == list(sizes)
    chosen = random_tensors(sizes, 15, seed=0)
    assert sum(sizes[n] for n in chosen) >= 15 and chosen == random_tensors(sizes, 15, seed=0)


def test_mask_artifact_is_hashed_and_no_mask_selects_everything(digits_lab, digits_original):
    full = compute_mask(digits_original, digits_lab, 1.0, 0.0)
    assert full.selected_params == full.total_params and full.fraction == 1.0
    m1 = compute_mask(digits_original, digits_lab, 0.1, 0.0)
    m2 = compute_mask(digits_original, digits_lab, 0.1, 0.0)
    assert m1.sha256 == m2.sha256 and m1.sha256 != full.sha256
    assert m1.selected_params < full.total_params
    rnd = compute_mask(digits_original, digits_lab, 0.1, 0.0, kind="random", seed=0)
    assert rnd.selected_params >= 0.1 * rnd.total_params and rnd.sha256 != m1.sha256


@pytest.mark.parametrize(
    "key,value,field",
    [
        ("mcu.k", 1.5, "mcu.k"),
        ("mcu.k_r", -0.1, "mcu.k_r"),
        ("mcu.k_r", 0.6, "mcu.k_r"),
        ("mcu.curve_order", 1, "mcu.curve_order"),
        ("mcu.beta_schedule", "cosine", "mcu.beta_schedule"),
        ("eval.t_grid", [0.0, 0.5, 1.2], "eval.t_grid"),
    ],
)
def test_bad_mcu_input_fails_before_compute(tmp_path, key, value, field):
    from tests.conftest import digits_config

    cfg = digits_config(tmp_path, **{key: value})
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate(cfg)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_with_overrides_coerces_and_rejects_unknown_keys(tmp_path):
    from tests.conftest import digits_config

    cfg = with_overrides(digits_config(tmp_path), {"mcu.k": "0.25", "mcu.beta_schedule": "fixed"})
    assert cfg.mcu.k == 0.25 and cfg.mcu.beta_schedule == ["fixed"]
    with pytest.raises(ConfigError, match="mcu.kk"):
        with_overrides(cfg, {"mcu.kk": 1})


def test_parallel_path_evaluation_equals_serial(tmp_path, digits_lab, digits_original, endpoint):
    """The t points are independent: a process pool gives the same path table as one process."""
    import dataclasses

    from mcu_dist.evaluate.path_eval import eval_workers, evaluate_path
    from mcu_dist.lab import Lab

    curve = curve_between(digits_original, endpoint, 2, [n for n, _ in digits_original.named_parameters()])
    cal = CalTargets(0.0, 99.0)
    grid = [0.0, 0.5, 0.9, 1.0]
    serial = evaluate_path(curve, digits_lab, grid, cal, None)
    lab = Lab(
        dataclasses.replace(digits_lab.cfg, eval=dataclasses.replace(digits_lab.cfg.eval, workers=2)),
        digits_lab.bundle,
        digits_lab.splits,
        digits_lab.device,
        digits_lab.cache,
    )
    assert eval_workers(lab, len(grid)) == 2
    parallel = evaluate_path(curve, lab, grid, cal, None)
    for a, b in zip(serial, parallel, strict=True):
        for key in ("t", "RA", "FA", "TA", "MIA", "gap_cal"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["t"], key)


@pytest.mark.parametrize("schedule", ["adaptive_step", "adaptive_abs", "fixed"])
def test_deferred_step_log_trains_bitwise_as_reading_every_step_back(
    digits_lab, digits_original, endpoint, schedule
):
    """β on the device (no read-back inside a step) gives the same β, the same log, the same curve."""
    cfg = MCUConfig(k=0.3, k_r=0.1, epochs=2, batch_size=64)
    mask = compute_mask(digits_original, digits_lab, cfg.k, cfg.k_r)
    cal = CalTargets(cal_f=95.0, cal_r=50.0)  # targets under which the adaptive rules switch levels
    runs = []
    for defer in (True, False):
        curve = curve_between(digits_original, endpoint, 2, mask.selected)
        state = train_curve(curve, digits_lab, cfg, schedule, cal, seed=0, defer_log=defer)
        runs.append((curve, state))
    (fast, fast_state), (slow, slow_state) = runs
    assert fast_state.steps == slow_state.steps
    if schedule != "fixed":  # the rule's levels really switch along the run
        assert len({s["beta"] for s in fast_state.steps}) > 1
    for n in fast.names:
        assert torch.equal(fast.point(1, n), slow.point(1, n)), n
