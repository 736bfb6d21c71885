"""NegTV (task-vector negation): θ_p = θ_o − α(θ_ft − θ_o), θ_ft = θ_o fine-tuned on D_f.

Only parameters are negated; BatchNorm buffers stay θ_o's.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD, SPACE, train_on
from mcu_dist.lab import Lab
from mcu_dist.train.fit import cross_entropy


@baseline(
    "negtv",
    defaults={"lr": 0.01, "epochs": 3, "alpha": 0.9, **SGD},
    space={**SPACE, "alpha": {"type": "float", "low": 0.1, "high": 2.0}},
)
def negtv(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    finetuned = train_on(copy.deepcopy(model), lab, lab.splits.forget, hp, seed, cross_entropy)
    with torch.no_grad():
        for p, q in zip(model.parameters(), finetuned.parameters(), strict=True):
            p.sub_(hp["alpha"] * (q - p))
    return model
