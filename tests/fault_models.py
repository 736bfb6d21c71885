"""Model factories for fault tests (``--model tests.fault_models:NAME``)."""

from __future__ import annotations

import os

from torch import nn

from mcu_dist.models import create_model


def one_tensor(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """A linear classifier with a single parameter tensor: any k_r > 0 excludes all of it."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * image_size * image_size, num_classes, bias=False)
    )


def dies_in_trial(num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    """small_cnn in the driver; inside a Ray actor (a Tune trial) the process dies at once, as on OOM."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().get_actor_id() is not None:
        os._exit(137)
    return create_model("small_cnn", num_classes, in_channels, image_size)
