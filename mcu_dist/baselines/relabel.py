"""RL (random wrong labels on D_f, mixed with D_r) and SalUn (RL under a hard element-wise saliency mask).

SalUn's mask keeps the top ``mask_ratio`` of weights by |Σ_batches ∇_W (−CE on D_f)| at θ_o; every
other element is restored after each optimiser step, so momentum and weight decay cannot move it.
"""

from __future__ import annotations

import torch
from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD, SPACE, random_wrong_labels, train_on
from mcu_dist.lab import Lab


def _relabelled_ce(labels: torch.Tensor, device: torch.device):
    labels = labels.to(device)  # indexed on the device each step: no host copy

    def loss(m: nn.Module, b) -> torch.Tensor:
        return nn.functional.cross_entropy(m(b.x), labels[b.device_positions()])

    return loss


@baseline("rl", defaults={"lr": 0.01, "epochs": 3, **SGD}, space=SPACE)
def rl(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    positions = torch.cat([lab.splits.forget, lab.splits.retain])
    return train_on(
        model, lab, positions, hp, seed, _relabelled_ce(random_wrong_labels(lab, seed), lab.device)
    )


def saliency_mask(model: nn.Module, lab: Lab, ratio: float) -> dict[str, torch.Tensor]:
    """Boolean mask per parameter: True where |∇(−CE on D_f)| is in the global top ``ratio``."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for b in lab.batches(lab.splits.forget, 256, seed=0, epoch=0, shuffle=False, augment=False):
        (-nn.functional.cross_entropy(model(b.x), b.y, reduction="sum")).backward()
    grads = {n: p.grad.detach().abs() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    flat = torch.cat([g.flatten() for g in grads.values()])
    keep = max(1, int(round(ratio * flat.numel())))
    threshold = torch.topk(flat, keep).values.min()
    return {n: g >= threshold for n, g in grads.items()}


@baseline(
    "salun",
    defaults={"lr": 0.01, "epochs": 3, "mask_ratio": 0.5, **SGD},
    space={**SPACE, "mask_ratio": {"type": "float", "low": 0.1, "high": 0.9}},
)
def salun(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    mask = saliency_mask(model, lab, hp["mask_ratio"])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = dict(model.named_parameters())

    @torch.no_grad()
    def enforce() -> None:
        for n, p in params.items():
            p.copy_(torch.where(mask[n], p, frozen[n]))

    positions = torch.cat([lab.splits.forget, lab.splits.retain])
    return train_on(
        model,
        lab,
        positions,
        hp,
        seed,
        _relabelled_ce(random_wrong_labels(lab, seed), lab.device),
        after_step=enforce,
    )
