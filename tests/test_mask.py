"""The mask says what it selects: budget mode lands within one tensor of k; the random control matches."""

from __future__ import annotations

import random

import pytest

from mcu_dist.config import ConfigError
from mcu_dist.path.mask import compute_mask, random_tensors, select_tensors, walk


def _within_one_tensor(sizes: dict[str, int], taken: list[str], target: float) -> bool:
    """|count − target| is below the size of every tensor left out (no single tensor could close the gap)."""
    gap = abs(sum(sizes[n] for n in taken) - target)
    left = [sizes[n] for n in sizes if n not in set(taken)]
    return not left or gap < min(left) or gap == 0


@pytest.mark.parametrize("seed", range(30))
def test_budget_walk_lands_within_one_tensor_of_the_target(seed):
    rng = random.Random(seed)
    sizes = {f"w{i}": rng.choice([1, 3, 10, 64, 300, 2000, 9000]) for i in range(rng.randint(3, 25))}
    total = sum(sizes.values())
    order = list(sizes)
    rng.shuffle(order)
    for k in (0.05, 0.1, 0.3, 0.5, 0.9):
        taken = walk(order, sizes, k * total, "budget")
        assert _within_one_tensor(sizes, taken, k * total), (k, sizes, taken)
        paper = walk(order, sizes, k * total, "paper")
        # the paper's walk never lands farther below k, and is what the default keeps
        assert sum(sizes[n] for n in paper) >= k * total or len(paper) == len(sizes)


def test_paper_mode_overshoots_where_budget_mode_does_not():
    sizes = {"bias": 10, "bn": 20, "conv": 70, "fc": 900}
    s_f = {"bias": 4.0, "bn": 3.0, "conv": 2.0, "fc": 1.0}  # the big tensor scores last, as on the small CNN
    s_r = dict.fromkeys(sizes, 0.0)
    assert select_tensors(sizes, s_r, s_f, 0.5, 0.0, "paper") == ["bias", "bn", "conv", "fc"]  # 100%
    assert select_tensors(sizes, s_r, s_f, 0.5, 0.0, "budget") == ["bias", "bn", "conv"]  # 10%: nearest
    # stage 1 (k_r = 0.2) also lands nearest: the paper excludes "fc" (90%), budget mode the other three (10%)
    s_r = {"fc": 9.0, "conv": 1.0, "bn": 0.5, "bias": 0.1}
    assert select_tensors(sizes, s_r, s_f, 0.5, 0.2, "paper") == ["bias", "bn", "conv"]
    assert select_tensors(sizes, s_r, s_f, 0.5, 0.2, "budget") == ["fc"]


@pytest.mark.parametrize("k", [0.1, 0.3, 0.5])
def test_budget_mask_on_the_cnn_reports_a_fraction_within_one_tensor_of_k(digits_lab, digits_original, k):
    paper = compute_mask(digits_original, digits_lab, k, 0.0)
    budget = compute_mask(digits_original, digits_lab, k, 0.0, mode="budget")
    assert _within_one_tensor(budget.sizes, list(budget.selected), k * budget.total_params)
    assert abs(budget.fraction - k) <= abs(paper.fraction - k) + 1e-12
    assert paper.fraction >= k  # the paper's walk stops only once it reaches k
    assert budget.sha256 != paper.sha256 or set(budget.selected) == set(paper.selected)
    # per layer: the layers' selected shares, weighted by layer size, add up to the overall fraction
    layers = budget.layer_fractions()
    sizes: dict[str, int] = {}
    for n, s in budget.sizes.items():
        sizes[n.rsplit(".", 1)[0]] = sizes.get(n.rsplit(".", 1)[0], 0) + s
    assert sum(layers[layer] * sizes[layer] for layer in layers) == pytest.approx(budget.selected_params)
    assert budget.to_json()["fraction"] == budget.fraction == budget.summary()["mask_fraction"]


@pytest.mark.parametrize("mode", ["paper", "budget"])
def test_size_matched_random_control_has_the_gradient_masks_size_within_one_tensor(
    digits_lab, digits_original, mode
):
    grad = compute_mask(digits_original, digits_lab, 0.1, 0.1, mode=mode)
    controls = []
    for seed in range(4):
        control = compute_mask(
            digits_original, digits_lab, 0.1, 0.1, kind="random_matched", seed=seed, mode=mode
        )
        assert control.target_params == grad.selected_params
        assert _within_one_tensor(control.sizes, list(control.selected), grad.selected_params)
        both, either = set(control.selected) & set(grad.selected), set(control.selected) | set(grad.selected)
        jaccard = sum(control.sizes[n] for n in both) / sum(control.sizes[n] for n in either)
        assert control.summary()["mask_overlap"] == pytest.approx(jaccard)  # 1.0 only for the same set
        assert (jaccard == 1.0) == (set(control.selected) == set(grad.selected))
        controls.append(set(control.selected))
    assert any(c != set(grad.selected) for c in controls), "a random control is not the gradient mask"
    again = compute_mask(digits_original, digits_lab, 0.1, 0.1, kind="random_matched", seed=3, mode=mode)
    assert set(again.selected) == controls[-1]


def test_random_tensors_is_seeded_and_budget_random_lands_near_k():
    sizes = {f"t{i}": (i % 7 + 1) * 13 for i in range(40)}
    total = sum(sizes.values())
    a = random_tensors(sizes, 0.2 * total, seed=5, mode="budget")
    assert a == random_tensors(sizes, 0.2 * total, seed=5, mode="budget")
    assert _within_one_tensor(sizes, a, 0.2 * total)


def test_unknown_mask_kind_or_mode_is_refused(tmp_path, digits_lab, digits_original):
    from tests.conftest import digits_config

    for key, value in (("mcu.mask", "saliency"), ("mcu.mask_mode", "nearest")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            digits_config(tmp_path, **{key: value}).validate()
    with pytest.raises(ConfigError, match="mcu.mask"):
        compute_mask(digits_original, digits_lab, 0.1, 0.0, kind="saliency")
