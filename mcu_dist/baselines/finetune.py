"""FT (fine-tune θ_o on D_r) and l1-sparse (FT with an l1 penalty γ·‖θ‖₁ decaying linearly to 0)."""

from __future__ import annotations

from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD, SPACE, train_on
from mcu_dist.data.batching import batch_spans
from mcu_dist.lab import Lab
from mcu_dist.train.fit import cross_entropy


@baseline("ft", defaults={"lr": 0.02, "epochs": 5, **SGD}, space=SPACE)
def ft(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    return train_on(model, lab, lab.splits.retain, hp, seed, cross_entropy)


@baseline(
    "l1_sparse",
    defaults={"lr": 0.02, "epochs": 5, "gamma": 5e-5, **SGD},
    space={**SPACE, "gamma": {"type": "logfloat", "low": 1e-6, "high": 1e-3}},
)
def l1_sparse(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    steps_per_epoch = len(batch_spans(len(lab.splits.retain), hp["batch_size"]))
    total = hp["epochs"] * steps_per_epoch
    state = {"step": 0}
    weights = [p for p in model.parameters() if p.dim() > 1]

    def loss(m: nn.Module, batch) -> nn.Module:
        gamma = hp["gamma"] * (1 - state["step"] / total)
        state["step"] += 1
        return cross_entropy(m, batch) + gamma * sum(w.abs().sum() for w in weights)

    return train_on(model, lab, lab.splits.retain, hp, seed, loss)
