"""Pieces the baseline units share: flagged forget/retain streams, fine-tuning loops, random labels."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from mcu_dist.data.loader import Batch
from mcu_dist.lab import Lab
from mcu_dist.train.fit import fit, sgd

SGD = {"momentum": 0.9, "weight_decay": 5e-4, "batch_size": 128}  # every training unit declares these too
# where tuning searches the knobs every SGD unit has; a unit adds its own (``@baseline(..., space=...)``)
SPACE = {
    "lr": {"type": "logfloat", "low": 1e-4, "high": 1e-1},
    "epochs": {"type": "int", "low": 1, "high": 10},
}


def forget_flags(lab: Lab) -> torch.Tensor:
    flags = torch.zeros(len(lab.bundle.train), dtype=torch.bool)
    flags[lab.splits.forget] = True
    return flags


def random_wrong_labels(lab: Lab, seed: int) -> torch.Tensor:
    """Training labels with every forget sample relabelled to a seeded class other than its own."""
    labels = lab.bundle.train.labels.clone()
    g = torch.Generator().manual_seed(seed)
    f = lab.splits.forget
    shift = torch.randint(1, lab.bundle.num_classes, (len(f),), generator=g)
    labels[f] = (labels[f] + shift) % lab.bundle.num_classes
    return labels


def train_on(
    model: nn.Module,
    lab: Lab,
    positions: torch.Tensor,
    hp: dict,
    seed: int,
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    *,
    after_step: Callable[[], None] | None = None,
) -> nn.Module:
    """SGD at a constant rate (``hp``: lr, epochs, momentum, weight_decay, batch_size) on ``positions``."""
    opt = sgd(model.parameters(), hp["lr"], hp["momentum"], hp["weight_decay"])
    return fit(
        model,
        hp["epochs"],
        lambda e: lab.batches(positions, hp["batch_size"], seed=seed, epoch=e),
        loss_fn,
        opt,
        cosine=False,
        after_step=after_step,
        autocast=lab.autocast,
        max_loss=lab.cfg.max_loss,
    )


def masked_mean_ce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean CE over the masked samples; 0 (not NaN) when none are."""
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp_min(1)
