"""SFR-on (Huang et al., NeurIPS 2024, "Unified Gradient-Based Machine Unlearning with Remain Geometry
Enhancement"): Saliency Forgetting in the Remain-preserving manifold, online.

The paper writes the steepest unlearning direction as weighted gradient ascent on D_f, descent on D_r
and a weight-saliency matrix, and embeds it in the manifold of the remain loss (a step modulated by
H_r⁻¹). The Hessian is never formed: a fast-slow schedule approximates it online — every
``forget_every`` iterations a *fast* forget step, followed at every iteration by a *slow* retain step
that pulls the weights back along the remain geometry. We implement the method as its authors released
it for CIFAR classification:

- Forget step: minimise −α_s · Σ_i w_i CE_i over a D_f batch, with per-sample weights
  w_i = CE_i^(−λ) / Σ_j CE_j^(−λ) (``lam``; samples already forgotten, with a large loss, weigh less)
  and α_s = α·½(1 + cos(π s/S)) decaying over the S iterations; the gradient is multiplied by the
  saliency mask M and its global norm clipped at ``max_norm`` before the SGD step.
- Saliency mask (computed once at θ_o, model in eval mode): the element-wise ratio of the empirical
  Fisher diagonals, M = [ (F_f + ε) / (F_r + ε) ≥ γ ] with F = mean over batches of (∇ CE)² on D_f
  resp. D_r (``threshold`` γ = 1: the weights more important to D_f than to D_r).
- Retain step: plain CE descent on a D_r batch, unmasked.
- One SGD optimiser (momentum, weight decay) for both steps, its learning rate cosine-annealed over S.

S is set by ``epochs`` passes over D_r (the authors count 1,500 iterations of batch 128 on CIFAR-10's
45,000 retain images: about 4 epochs). Their slow-weight EMA has β = 1 in that configuration, which
leaves the weights unchanged, so it is not implemented.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from mcu_dist.baselines.base import baseline
from mcu_dist.baselines.common import SGD
from mcu_dist.data.batching import batch_spans
from mcu_dist.guard import LossWatch, check_finite_model
from mcu_dist.lab import Lab
from mcu_dist.train.fit import sgd

_EPS = 1e-15


def adaptive_forget_loss(logits: torch.Tensor, y: torch.Tensor, lam: float) -> torch.Tensor:
    """Σ_i w_i CE_i with w_i ∝ CE_i^(−λ), Σ w_i = 1 (λ = 0: the plain mean CE)."""
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    weight = (ce.detach() + _EPS).pow(-lam)
    return (weight / weight.sum() * ce).sum()


def fisher_diagonal(model: nn.Module, lab: Lab, positions: torch.Tensor, batch_size: int) -> dict:
    """Mean over batches of the squared gradient of the batch-mean CE, per parameter element."""
    model.eval()
    total = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    count = 0
    for b in lab.batches(positions, batch_size, seed=0, epoch=0, shuffle=False, augment=False):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(b.x), b.y).backward()
        for n, p in model.named_parameters():
            total[n] += p.grad.detach() ** 2
        count += 1
    model.zero_grad(set_to_none=True)
    return {n: t / max(count, 1) for n, t in total.items()}


def fisher_saliency_mask(model: nn.Module, lab: Lab, threshold: float, batch_size: int) -> dict:
    """M = [(F_f + ε) / (F_r + ε) ≥ γ], element-wise, at the model's current weights."""
    f_f = fisher_diagonal(model, lab, lab.splits.forget, batch_size)
    f_r = fisher_diagonal(model, lab, lab.splits.retain, batch_size)
    return {n: (f_f[n] + _EPS) / (f_r[n] + _EPS) >= threshold for n in f_f}


def _endless(lab: Lab, positions: torch.Tensor, batch_size: int, seed: int):
    epoch = 0
    while True:
        yield from lab.batches(positions, batch_size, seed=seed, epoch=epoch)
        epoch += 1


@baseline(
    "sfron",
    defaults={
        "lr": 0.01,
        "epochs": 4,
        "forget_every": 5,
        "alpha": 25.0,
        "lam": 0.5,
        "threshold": 1.0,
        "max_norm": 7.0,
        **SGD,
    },
    space={
        "lr": {"type": "logfloat", "low": 1e-3, "high": 5e-2},
        "alpha": {"type": "logfloat", "low": 1.0, "high": 100.0},
        "threshold": {"type": "logfloat", "low": 0.1, "high": 10.0},
        "forget_every": {"type": "int", "low": 1, "high": 10},
    },
)
def sfron(model: nn.Module, lab: Lab, hp: dict, seed: int) -> nn.Module:
    mask = fisher_saliency_mask(model, lab, hp["threshold"], hp["batch_size"])
    params = dict(model.named_parameters())
    total = max(1, hp["epochs"] * len(batch_spans(len(lab.splits.retain), hp["batch_size"])))
    opt = sgd(model.parameters(), hp["lr"], hp["momentum"], hp["weight_decay"])
    forget = _endless(lab, lab.splits.forget, hp["batch_size"], seed)
    retain = _endless(lab, lab.splits.retain, hp["batch_size"], seed)
    watch = LossWatch(lab.cfg.max_loss)
    model.train()
    for step in range(total):
        decay = 0.5 * (1 + math.cos(math.pi * step / total))
        for g in opt.param_groups:
            g["lr"] = hp["lr"] * decay
        if step % hp["forget_every"] == 0:
            b = next(forget)
            opt.zero_grad(set_to_none=True)
            with lab.autocast():
                loss = -hp["alpha"] * decay * adaptive_forget_loss(model(b.x), b.y, hp["lam"])
            watch.observe(loss, epoch=0, step=step)
            loss.backward()
            with torch.no_grad():
                for n, p in params.items():
                    p.grad.mul_(mask[n])
            nn.utils.clip_grad_norm_(model.parameters(), hp["max_norm"])
            opt.step()
        b = next(retain)
        opt.zero_grad(set_to_none=True)
        with lab.autocast():
            loss = nn.functional.cross_entropy(model(b.x), b.y)
        watch.observe(loss, epoch=0, step=step)
        loss.backward()
        opt.step()
    watch.flush(epoch=0, step=total)
    return check_finite_model(model.eval())
