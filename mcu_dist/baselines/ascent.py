"""GA (gradient ascent on D_f) and NegGrad+ (L_r − β·L_f on a mixed stream)."""

from __future__ import annotations

import torch
from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD, SPACE, forget_flags, masked_mean_ce, train_on
from mcu_dist.lab import Lab


@baseline("ga", defaults={"lr": 0.001, "epochs": 3, **SGD}, space=SPACE)
def ga(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    return train_on(
        model, lab, lab.splits.forget, hp, seed, lambda m, b: -nn.functional.cross_entropy(m(b.x), b.y)
    )


@baseline(
    "neggrad_plus",
    defaults={"lr": 0.01, "epochs": 3, "beta": 0.15, **SGD},
    space={**SPACE, "beta": {"type": "float", "low": 0.01, "high": 1.0}},
)
def neggrad_plus(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    flags = forget_flags(lab).to(lab.device)

    def loss(m: nn.Module, b) -> torch.Tensor:
        logits, is_f = m(b.x), flags[b.device_positions()].float()
        return masked_mean_ce(logits, b.y, 1 - is_f) - hp["beta"] * masked_mean_ce(logits, b.y, is_f)

    positions = torch.cat([lab.splits.forget, lab.splits.retain])
    return train_on(model, lab, positions, hp, seed, loss)
