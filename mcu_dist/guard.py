"""Divergence guard for every training loop (reference models, baselines, curve).

A stage has diverged when a training loss is non-finite or |L| > ``max_loss`` (``ExperimentConfig.max_loss``;
cross-entropy of a working classifier is a few nats, a diverged one reaches 1e26), or when the model it
produced holds a non-finite parameter or buffer. Either stops the stage with :class:`DivergenceError`,
one line naming the stage, the step and the value, so that nothing non-finite is cached, evaluated or
reported as a result.

The loss is watched on the device: a running max of |L| is kept as a tensor and read back only every
``every`` steps and at the end of an epoch, so a GPU loop does not synchronise on every step.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
from torch import nn

_STAGE: contextvars.ContextVar[str] = contextvars.ContextVar("mcu_stage", default="training")


class DivergenceError(RuntimeError):
    """A training stage produced a non-finite or exploding loss, or a non-finite model."""


@contextlib.contextmanager
def stage(name: str) -> Iterator[None]:
    """Name the training stage that the loops below run for (it appears in a DivergenceError)."""
    token = _STAGE.set(name)
    try:
        yield
    finally:
        _STAGE.reset(token)


def current_stage() -> str:
    return _STAGE.get()


def check_loss(
    value: float, max_loss: float, *, epoch: int, step: int, what: str = "loss", where: str | None = None
) -> None:
    """Raise when one (host-side) loss value is non-finite or beyond ``max_loss``."""
    if not math.isfinite(value) or abs(value) > max_loss:
        raise DivergenceError(
            f"{where or current_stage()} diverged: {what} = {value:.4g} at epoch {epoch}, step {step} "
            f"(limit |{what}| <= {max_loss:g}); lower the learning rate of this stage"
        )


class LossWatch:
    """Running max of |loss| on the loss's device, read back every ``every`` steps and at ``flush``."""

    def __init__(self, max_loss: float, every: int = 20):
        self.max_loss = max_loss
        self.every = every
        self._worst: torch.Tensor | None = None
        self._since = 0

    def observe(self, loss: torch.Tensor, *, epoch: int, step: int) -> None:
        value = loss.detach().abs().float()
        # torch.maximum propagates NaN, so a NaN anywhere in the window survives to the check
        self._worst = value if self._worst is None else torch.maximum(self._worst, value)
        self._since += 1
        if self._since >= self.every:
            self.flush(epoch=epoch, step=step)

    def flush(self, *, epoch: int, step: int) -> None:
        if self._worst is not None:
            worst, self._worst, self._since = float(self._worst), None, 0
            check_loss(worst, self.max_loss, epoch=epoch, step=step)


def check_finite_model(model: nn.Module, what: str | None = None) -> nn.Module:
    """``model`` unchanged when every parameter and buffer is finite; else DivergenceError naming a tensor."""
    check_finite_tensors(dict([*model.named_parameters(), *model.named_buffers()]), what or current_stage())
    return model


def check_finite_tensors(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DivergenceError(
                f"{what} diverged: tensor {name} holds non-finite values; "
                "lower the learning rate of this stage"
            )
