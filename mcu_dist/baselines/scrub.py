"""SCRUB (Kurmanji et al. 2023, "Towards Unbounded Machine Unlearning"): the student θ (initialised at
θ_o) selectively disobeys the teacher θ_o, which stays frozen.

    min_θ  α/N_r Σ_{D_r} KL(p_o(x) ‖ p_θ(x)) + γ/N_r Σ_{D_r} CE(θ; x, y) − 1/N_f Σ_{D_f} KL(p_o(x) ‖ p_θ(x))

optimised by alternating epochs: while ``epoch < max_steps`` a max-epoch (one pass over D_f ascending
the forget KL) comes first, then every epoch has a min-epoch (one pass over D_r descending α·KL + γ·CE);
the last epochs are min-epochs only, which restore utility. KL is the distillation divergence at
temperature T (``kd_t``): KL(softmax(z_o/T) ‖ softmax(z/T))·T², as the authors' code computes it.
Defaults are the authors' small-scale CIFAR settings (α 0.001, γ 0.99, T 4, max-steps 2, 3 epochs,
SGD lr 5e-4, momentum 0.9, weight decay 5e-4).

Simplifications, stated: one batch size for both passes (the authors use a smaller forget batch), a
constant learning rate (their step decays start after the third epoch, i.e. after the default run),
no SCRUB+R rewinding (checkpoint selection belongs to MCU's t* here, not to the baseline).
"""

from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD, forget_flags
from mcu_dist.lab import Lab
from mcu_dist.train.fit import fit, sgd


def distill_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(student/T))·T², batch mean."""
    log_p = nn.functional.log_softmax(student / temperature, dim=1)
    q = nn.functional.softmax(teacher / temperature, dim=1)
    return nn.functional.kl_div(log_p, q, reduction="batchmean") * temperature**2


@baseline(
    "scrub",
    defaults={
        "lr": 0.0005,
        "epochs": 3,
        "max_steps": 2,
        "alpha": 0.001,
        "gamma": 0.99,
        "kd_t": 4.0,
        **SGD,
    },
    space={
        "lr": {"type": "logfloat", "low": 1e-4, "high": 5e-2},
        "epochs": {"type": "int", "low": 1, "high": 10},
        "max_steps": {"type": "int", "low": 1, "high": 5},
        "alpha": {"type": "logfloat", "low": 1e-4, "high": 1.0},
    },
)
def scrub(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    flags = forget_flags(lab)

    def batches(epoch: int):
        passes = [lab.batches(lab.splits.retain, hp["batch_size"], seed=seed, epoch=epoch)]
        if epoch < hp["max_steps"]:
            passes.insert(0, lab.batches(lab.splits.forget, hp["batch_size"], seed=seed, epoch=epoch))
        return itertools.chain(*passes)

    def loss(m: nn.Module, b) -> torch.Tensor:
        logits = m(b.x)
        with torch.no_grad():
            target = teacher(b.x)
        kl = distill_kl(logits, target, hp["kd_t"])
        if flags[b.positions[0]]:  # a max-step batch: every sample of it is a forget sample
            return -kl
        return hp["alpha"] * kl + hp["gamma"] * nn.functional.cross_entropy(logits, b.y)

    opt = sgd(model.parameters(), hp["lr"], hp["momentum"], hp["weight_decay"])
    return fit(
        model,
        hp["epochs"],
        batches,
        loss,
        opt,
        cosine=False,
        autocast=lab.autocast,
        max_loss=lab.cfg.max_loss,
    )
