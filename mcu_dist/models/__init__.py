"""Model registry: ``create_model(name, num_classes, in_channels, image_size)``.

A user's own architecture is named ``package.module:factory``; the factory takes the same keyword
arguments and returns an ``nn.Module``.
"""

from __future__ import annotations

import importlib

from torch import nn

from mcu_dist.config import ConfigError, ModelConfig
from mcu_dist.models.zoo import MODELS


def create_model(name: str, num_classes: int, in_channels: int = 3, image_size: int = 32) -> nn.Module:
    if ":" in name and name not in MODELS:
        module_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(
                f"model.name: cannot import {name} ({e}); allowed: package.module:factory"
            ) from None
    else:
        factory = MODELS[name]
    return factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size)


def check_model(cfg: ModelConfig) -> None:
    if cfg.name not in MODELS and ":" not in cfg.name:
        raise ConfigError(
            f"model.name: got {cfg.name!r}; allowed: {', '.join(sorted(MODELS))} or package.module:factory"
        )


__all__ = ["MODELS", "check_model", "create_model"]
