"""Baselines (MCU_METHOD.md section 8) and metrics (section 7).

Baselines: each one moves θ_o and keeps its architecture; on digits class-wise forgetting GA and
RL forget the class while FT keeps the retain accuracy; SalUn's hard mask freezes every
masked-out weight; NegTV is exactly θ_o − α(θ_ft − θ_o) on parameters; unknown hyperparameters
are ConfigErrors naming the key. Metrics: Avg. Gap, UA = 100 − FA, class-wise TA, MIA-Efficacy on
hand-made confidences and its balanced, seeded shadow sets; on real CIFAR-10 the retrained model
scores higher UA and MIA-Efficacy on D_f than the original.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from mcu_dist.baselines import BASELINES, check_baselines
from mcu_dist.baselines import common as baseline_common
from mcu_dist.baselines.common import random_wrong_labels, train_on
from mcu_dist.baselines.relabel import saliency_mask
from mcu_dist.config import ConfigError, ExperimentConfig, with_overrides
from mcu_dist.evaluate.metrics import GAP_METRICS, Outputs, avg_gap
from mcu_dist.evaluate.mia import mia_efficacy, shadow_positions
from mcu_dist.evaluate.point import evaluate_model
from mcu_dist.experiment import run_experiment
from mcu_dist.lab import Lab
from mcu_dist.train.fit import cross_entropy
from mcu_dist.train.reference import original_model, retrained_model
from mcu_dist.validation import validate
from tests.conftest import CIFAR_PARQUET, digits_config

NON_RETRAIN = [n for n in BASELINES.names() if n != "retrain"]

# GA's defaults (lr 0.001, 3 epochs) are tuned for CIFAR-scale forget sets; on digits' ~136-sample forget
# class they are only 6 SGD steps and leave forget accuracy at ~82%. lr 0.01 forgets the class (FA ~5-13%).
FORGETTING_HP = {"ga": {"lr": 0.01, "epochs": 3}, "rl": {}}


# ---------------------------------------------------------------------------------------------- helpers


def run_baseline(
    lab: Lab, original: nn.Module, name: str, overrides: dict | None = None, seed: int = 0
) -> nn.Module:
    unit = BASELINES[name]
    return unit.run(copy.deepcopy(original).train(), lab, unit.resolve(overrides), seed).eval()


@torch.no_grad()
def direct_accuracy(model: nn.Module, lab: Lab, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy from one plain forward pass (independent of the package's evaluation loop)."""
    model.eval()
    return 100.0 * (model(lab.normalize(images)).argmax(1) == labels).float().mean().item()


def train_acc(model: nn.Module, lab: Lab, positions: torch.Tensor) -> float:
    d = lab.bundle.train
    return direct_accuracy(model, lab, d.images[positions], d.labels[positions])


def params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.detach().clone() for n, b in model.named_buffers()}


# --------------------------------------------------------------------------------------------- every baseline


@pytest.mark.parametrize("name", NON_RETRAIN)
def test_baseline_moves_parameters_and_keeps_architecture(digits_lab, digits_original, name):
    before = {k: v.clone() for k, v in digits_original.state_dict().items()}
    overrides = {"epochs": 1} if "epochs" in BASELINES[name].defaults else {}
    out = run_baseline(digits_lab, digits_original, name, overrides)
    assert type(out) is type(digits_original)
    shapes = {k: (v.shape, v.dtype) for k, v in out.state_dict().items()}
    assert shapes == {k: (v.shape, v.dtype) for k, v in before.items()}
    theta_o = dict(digits_original.named_parameters())
    moved = [n for n, p in out.named_parameters() if not torch.equal(p, theta_o[n])]
    assert moved, f"{name} left every parameter at θ_o"
    after = digits_original.state_dict()
    assert all(torch.equal(v, before[k]) for k, v in after.items()), "θ_o was modified"


def test_retrain_baseline_is_the_retrained_model(digits_lab, digits_original):
    theta_r, _ = retrained_model(digits_lab, digits_lab.cache)
    out = run_baseline(digits_lab, digits_original, "retrain")
    sa, sb = out.state_dict(), theta_r.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sb)


# --------------------------------------------------------------------------------------- forgetting on digits


@pytest.mark.parametrize("name", sorted(FORGETTING_HP))
def test_ga_and_rl_forget_the_class(digits_lab, digits_original, name):
    s = digits_lab.splits
    fa_o, ra_o = (
        train_acc(digits_original, digits_lab, s.forget),
        train_acc(digits_original, digits_lab, s.retain),
    )
    assert fa_o >= 95, "θ_o should know the class it is asked to forget"
    out = run_baseline(digits_lab, digits_original, name, FORGETTING_HP[name])
    fa, ra = train_acc(out, digits_lab, s.forget), train_acc(out, digits_lab, s.retain)
    assert fa <= fa_o - 20, f"{name}: forget accuracy {fa:.1f} vs θ_o {fa_o:.1f}"
    assert ra >= ra_o - 15, f"{name} forgot the retain set too: RA {ra:.1f} vs θ_o {ra_o:.1f}"


def test_ft_keeps_retain_accuracy(digits_lab, digits_original):
    s = digits_lab.splits
    ra_o = train_acc(digits_original, digits_lab, s.retain)
    out = run_baseline(digits_lab, digits_original, "ft")
    assert abs(train_acc(out, digits_lab, s.retain) - ra_o) <= 3


def test_rl_labels_are_wrong_on_forget_and_kept_on_retain(digits_lab):
    labels = random_wrong_labels(digits_lab, seed=3)
    true = digits_lab.bundle.train.labels
    s = digits_lab.splits
    assert (labels[s.forget] != true[s.forget]).all()
    assert ((labels[s.forget] >= 0) & (labels[s.forget] < digits_lab.bundle.num_classes)).all()
    assert torch.equal(labels[s.retain], true[s.retain])
    assert torch.equal(labels, random_wrong_labels(digits_lab, seed=3))
    assert not torch.equal(labels, random_wrong_labels(digits_lab, seed=4))
    assert len(torch.unique(labels[s.forget])) > 1, (
        "one wrong class per forget sample, seeded, not one for all"
    )


# ---------------------------------------------------------------------------------------------- SalUn


def test_salun_moves_only_salient_weights(digits_lab, digits_original, monkeypatch):
    optimisers = []
    real_sgd = baseline_common.sgd

    def spy_sgd(ps, lr, momentum, weight_decay):
        optimisers.append((momentum, weight_decay))
        return real_sgd(ps, lr, momentum, weight_decay)

    monkeypatch.setattr(baseline_common, "sgd", spy_sgd)
    hp = {"epochs": 2, "mask_ratio": 0.3}
    mask = saliency_mask(copy.deepcopy(digits_original), digits_lab, hp["mask_ratio"])
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
    assert abs(kept - 0.3) < 0.01
    theta_o = params(digits_original)
    out = run_baseline(digits_lab, digits_original, "salun", hp)
    assert optimisers == [(0.9, 5e-4)], "the premise: momentum and weight decay act on every step"
    moved_in = total_in = 0
    for n, p in out.named_parameters():
        m = mask[n]
        assert torch.equal(p.detach()[~m], theta_o[n][~m]), f"masked-out weights of {n} moved"
        moved_in += int((p.detach()[m] != theta_o[n][m]).sum())
        total_in += int(m.sum())
    assert moved_in > 0.5 * total_in, f"only {moved_in}/{total_in} masked-in weights moved"


# ---------------------------------------------------------------------------------------------- NegTV


def test_negtv_is_the_negated_task_vector(digits_lab, digits_original):
    hp = {"epochs": 2}
    theta_o = params(digits_original)
    models = {
        a: run_baseline(digits_lab, digits_original, "negtv", {**hp, "alpha": a}) for a in (0.0, 0.3, 0.9)
    }
    # θ_ft recomputed: θ_o fine-tuned on D_f with the same recipe and seed
    unit_hp = BASELINES["negtv"].resolve(hp)
    theta_ft = params(
        train_on(
            copy.deepcopy(digits_original).train(),
            digits_lab,
            digits_lab.splits.forget,
            unit_hp,
            0,
            cross_entropy,
        )
    )
    assert any(not torch.equal(theta_ft[n], theta_o[n]) for n in theta_o)
    for alpha, model in models.items():
        got = params(model)
        for n in theta_o:
            want = theta_o[n] - alpha * (theta_ft[n] - theta_o[n])
            torch.testing.assert_close(got[n], want, rtol=1e-5, atol=1e-6, msg=f"alpha {alpha}, {n}")
        assert all(torch.equal(b, buffers(digits_original)[k]) for k, b in buffers(model).items()), (
            "NegTV must keep θ_o's BatchNorm buffers"
        )
    assert all(torch.equal(p, theta_o[n]) for n, p in params(models[0.0]).items())
    d3, d9 = params(models[0.3]), params(models[0.9])
    for n in theta_o:  # linear in alpha, whatever θ_ft is
        torch.testing.assert_close(
            (d9[n] - theta_o[n]) / 0.9, (d3[n] - theta_o[n]) / 0.3, rtol=1e-4, atol=1e-6
        )


# -------------------------------------------------------------------------------------------- hyperparameters


@pytest.mark.parametrize("name", BASELINES.names())
def test_resolve_rejects_unknown_keys(name):
    with pytest.raises(ConfigError, match=rf"^baselines\.params\.{name}\.not_a_knob: "):
        BASELINES[name].resolve({"not_a_knob": 1})


def test_resolve_keeps_defaults_and_coerces():
    unit = BASELINES["ga"]
    assert unit.resolve(None) == unit.defaults and unit.resolve({}) == unit.defaults
    hp = unit.resolve({"lr": "0.05"})
    assert hp["lr"] == 0.05 and isinstance(hp["lr"], float) and hp["epochs"] == unit.defaults["epochs"]
    assert unit.defaults["lr"] == 0.001, "resolve must not mutate the defaults"
    with pytest.raises(ConfigError, match=r"^baselines\.params\.ga\.epochs: "):
        unit.resolve({"epochs": "three"})
    cfg = with_overrides(ExperimentConfig(), {"baselines.params": {"salun": {"mask_ratio": 0.2, "bogus": 1}}})
    with pytest.raises(ConfigError, match=r"^baselines\.params\.salun\.bogus: "):
        check_baselines(cfg.baselines)


@pytest.mark.parametrize("key,value", [("epochs", 2.5), ("lr", True)])
def test_resolve_rejects_lossy_values(key, value):
    with pytest.raises(ConfigError, match=rf"^baselines\.params\.ga\.{key}: "):
        BASELINES["ga"].resolve({key: value})


# ------------------------------------------------------------------------------------------- Avg. Gap, UA, TA


def test_avg_gap_definition():
    row = {"UA": 10.0, "RA": 90.0, "TA": 80.0, "MIA": 20.0, "FA": 90.0, "RTE": 3.0}
    ref = {"UA": 14.0, "RA": 88.0, "TA": 80.0, "MIA": 10.0, "FA": 86.0, "RTE": 9.0}
    assert GAP_METRICS == ("UA", "RA", "TA", "MIA")
    assert avg_gap(row, row) == 0.0
    assert avg_gap(row, ref) == pytest.approx((4 + 2 + 0 + 10) / 4)
    assert avg_gap(ref, row) == avg_gap(row, ref)


def test_experiment_rows_against_retrain(digits_lab, digits_original, session_dir):
    # the session's cache dir: θ_o and θ_r are shared with the fixtures (same reference key)
    cfg = digits_config(session_dir, **{"baselines.methods": ["ft", "retrain"], "mcu.beta_schedule": []})
    validate(cfg)
    result = run_experiment(cfg, log=lambda *_: None)
    rows = {r["model"]: r for r in result.rows}
    assert list(rows) == ["Original", "Retrain", "ft", "ft+BN", "retrain", "retrain+BN"]
    assert result.paths == {} and result.mask is None, "mcu.beta_schedule = [] runs no MCU"
    assert rows["Retrain"]["avg_gap"] == 0.0
    assert rows["retrain"]["avg_gap"] == 0.0, "the Retrain baseline is θ_r itself"
    for r in rows.values():
        assert r["UA"] == 100.0 - r["FA"]
        assert r["avg_gap"] == pytest.approx(sum(abs(r[m] - rows["Retrain"][m]) for m in GAP_METRICS) / 4)
    assert rows["Original"]["avg_gap"] > 10, "θ_o remembers the forgotten class; θ_r never saw it"
    assert rows["Original"]["UA"] <= 5 and rows["Retrain"]["UA"] >= 95
    assert rows["Original"]["RA"] == pytest.approx(
        train_acc(digits_original, digits_lab, digits_lab.splits.retain)
    )


def test_ua_ta_and_forgotten_class_accuracy(digits_lab, digits_original):
    s, b = digits_lab.splits, digits_lab.bundle
    model = run_baseline(
        digits_lab, digits_original, "ga", FORGETTING_HP["ga"]
    )  # FA well away from 0 and 100
    row = evaluate_model(model, digits_lab)
    fa = train_acc(model, digits_lab, s.forget)
    assert row["FA"] == pytest.approx(fa, abs=1e-4) and row["UA"] == pytest.approx(100 - fa, abs=1e-4)
    assert row["RA"] == pytest.approx(train_acc(model, digits_lab, s.retain), abs=1e-4)
    gone = torch.isin(b.test.labels, torch.tensor(s.forget_classes))
    assert not gone[s.test_eval].any() and gone[s.test_forgotten].all()
    assert len(s.test_eval) + len(s.test_forgotten) == len(b.test)
    assert row["TA"] == pytest.approx(
        direct_accuracy(model, digits_lab, b.test.images[~gone], b.test.labels[~gone]), abs=1e-4
    )
    assert row["TA_forgotten"] == pytest.approx(
        direct_accuracy(model, digits_lab, b.test.images[gone], b.test.labels[gone]), abs=1e-4
    )
    assert row["mia_n"] == min(len(s.retain), len(s.test_eval), digits_lab.cfg.eval.mia_cap)


# ---------------------------------------------------------------------------------------------- MIA-Efficacy


def outputs_from_confidence(conf: np.ndarray) -> Outputs:
    """Two-class outputs with true label 0 and the given true-label confidences."""
    c = torch.as_tensor(conf, dtype=torch.float32)
    probs = torch.stack([c, 1 - c], dim=1)
    return Outputs(correct=c > 0.5, confidence=c, probs=probs, labels=torch.zeros(len(c), dtype=torch.long))


MEMBER = (0.97, 1.0)  # members: a trained model is sure of its training samples
NON_MEMBER = (0.2, 0.75)  # non-members: much less sure


def test_mia_efficacy_calls_test_like_forget_samples_non_members():
    rng = np.random.default_rng(0)
    retain = outputs_from_confidence(rng.uniform(*MEMBER, 600))
    test = outputs_from_confidence(rng.uniform(*NON_MEMBER, 400))
    like_test = outputs_from_confidence(rng.uniform(*NON_MEMBER, 200))
    like_retain = outputs_from_confidence(rng.uniform(*MEMBER, 200))
    features = ("confidence", "entropy", "m_entropy")
    forgotten = mia_efficacy(retain, test, like_test, cap=1000, seed=0, features=features)
    remembered = mia_efficacy(retain, test, like_retain, cap=1000, seed=0, features=features)
    assert forgotten["MIA"] == forgotten["MIA_confidence"] >= 95
    assert remembered["MIA"] == remembered["MIA_confidence"] <= 5
    for f in features[1:]:
        assert forgotten[f"MIA_{f}"] >= 90 and remembered[f"MIA_{f}"] <= 10, f
    assert forgotten["mia_n"] == 400  # min(|D_r| = 600, |D_test| = 400, cap = 1000)
    assert mia_efficacy(retain, test, like_test, cap=150, seed=0)["mia_n"] == 150
    assert mia_efficacy(retain, test, like_test, seed=0) == mia_efficacy(retain, test, like_test, seed=0)


@pytest.mark.parametrize("n_retain,n_test,cap", [(500, 300, 2000), (200, 700, 2000), (900, 800, 100)])
def test_shadow_sets_are_balanced_and_seeded(n_retain, n_test, cap):
    members, non_members = shadow_positions(n_retain, n_test, cap, seed=5)
    n = min(n_retain, n_test, cap)
    assert len(members) == len(non_members) == n
    assert len(torch.unique(members)) == n and len(torch.unique(non_members)) == n
    assert (
        0 <= members.min()
        and members.max() < n_retain
        and 0 <= non_members.min()
        and non_members.max() < n_test
    )
    again = shadow_positions(n_retain, n_test, cap, seed=5)
    assert torch.equal(members, again[0]) and torch.equal(non_members, again[1])
    other = shadow_positions(n_retain, n_test, cap, seed=6)
    assert not (torch.equal(members, other[0]) and torch.equal(non_members, other[1]))


# ---------------------------------------------------------------------------------------------- real CIFAR-10


@pytest.mark.cifar
@pytest.mark.skipif(not CIFAR_PARQUET.is_file(), reason="offline CIFAR-10 copy absent")
def test_cifar_retrain_forgets_more_than_original(tmp_path):
    cfg = with_overrides(
        ExperimentConfig(),
        {
            "data.dataset": "cifar10",
            "data.data_root": str(CIFAR_PARQUET.parent),
            "data.subset": 100,
            "forget.spec": "random:0.1",
            "reference.epochs": 15,
            "cache_dir": str(tmp_path / "cache"),
            "out": str(tmp_path / "runs"),
        },
    )
    validate(cfg)
    lab = Lab.build(cfg)
    assert len(lab.bundle.train) == 1000 and len(lab.splits.forget) == 100
    # UA and MIA need no full test set: MIA's non-members are n = min(|D_r|, |D_test|, cap) = 900 test samples
    keep = torch.randperm(len(lab.splits.test_eval), generator=torch.Generator().manual_seed(0))[:2000]
    lab.splits = dataclasses.replace(lab.splits, test_eval=lab.splits.test_eval[keep])
    original, _ = original_model(lab, lab.cache)
    retrained, _ = retrained_model(lab, lab.cache)
    o, r = evaluate_model(original, lab), evaluate_model(retrained, lab)
    assert o["mia_n"] == r["mia_n"] == 900
    # measured over 4 split/model seeds: UA +11..+16, MIA +8..+13 points (|D_f| = 100, one sample = 1 point)
    assert r["UA"] > o["UA"], (o, r)
    assert r["MIA"] > o["MIA"], (o, r)
