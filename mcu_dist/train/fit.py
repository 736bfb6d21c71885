"""Plain supervised optimisation shared by reference models and baselines (SGD + momentum, cosine)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Sized

import torch
from torch import nn

from mcu_dist.data.loader import Batch
from mcu_dist.guard import LossWatch, check_finite_model


def sgd(params: Iterable[torch.Tensor], lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(list(params), lr=lr, momentum=momentum, weight_decay=weight_decay)


def fit(
    model: nn.Module,
    epochs: int,
    batches: Callable[[int], Iterable[Batch]],
    loss_fn: Callable[[nn.Module, Batch], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    cosine: bool = True,
    after_step: Callable[[], None] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    max_loss: float = math.inf,
) -> nn.Module:
    """Train ``model`` in place: ``epochs`` passes over ``batches(epoch)``, lr cosine-annealed per step.

    ``autocast`` wraps the forward pass and loss (the lab's bf16 autocast on CUDA); backward runs outside.
    A non-finite loss, |loss| > ``max_loss`` or a non-finite trained model raises ``DivergenceError``."""
    first = batches(0)
    per_epoch = len(first) if isinstance(first, Sized) else sum(1 for _ in first)
    total = max(1, epochs * per_epoch) if cosine else 0
    base = [g["lr"] for g in optimizer.param_groups]
    step = 0
    watch = LossWatch(max_loss)
    model.train()
    for epoch in range(epochs):
        for batch in batches(epoch):
            if cosine:
                scale = 0.5 * (1 + math.cos(math.pi * step / total))
                for g, lr in zip(optimizer.param_groups, base, strict=True):
                    g["lr"] = lr * scale
            optimizer.zero_grad(set_to_none=True)
            with autocast():
                loss = loss_fn(model, batch)
            watch.observe(loss, epoch=epoch, step=step)
            loss.backward()
            optimizer.step()
            if after_step is not None:
                after_step()
            step += 1
        watch.flush(epoch=epoch, step=step)
    model.eval()
    return check_finite_model(model)


def cross_entropy(model: nn.Module, batch: Batch) -> torch.Tensor:
    return nn.functional.cross_entropy(model(batch.x), batch.y)
