"""Retrain: θ_p = θ_r, trained from scratch on D_r (shared with the Retrain row through the cache)."""

from __future__ import annotations

from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.lab import Lab
from mcu_dist.train.reference import retrained_model


@baseline("retrain", defaults={})
def retrain(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    retrained, _ = retrained_model(lab, lab.cache)
    model.load_state_dict(retrained.state_dict())
    return model
