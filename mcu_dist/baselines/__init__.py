"""Pre-unlearning methods θ_o -> θ_p, each a small registered unit with its defaults and search ranges.

A unit is ``Baseline(name, defaults, space, run)``; ``run(model, lab, hp, seed)`` changes ``model``
(a copy of θ_o) in place and returns it. ``space`` declares the sweep ranges next to the defaults:
``{"lr": ["loguniform", 1e-4, 1e-1], "epochs": ["int", 1, 10], ...}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from mcu_dist.config import ConfigError, _coerce
from mcu_dist.registry import Registry


@dataclass(frozen=True)
class Baseline:
    name: str
    defaults: dict[str, Any]
    space: dict[str, list]
    run: Callable[..., nn.Module]

    def resolve(self, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
        hp = dict(self.defaults)
        for key, value in (overrides or {}).items():
            if key not in hp:
                raise ConfigError(
                    f"baselines.params.{self.name}.{key}: unknown; allowed: {', '.join(sorted(hp))}"
                )
            hp[key] = _coerce(type(hp[key]), value, f"baselines.params.{self.name}.{key}")
        return hp


BASELINES: Registry[Baseline] = Registry("baselines.methods")


def baseline(name: str, defaults: dict[str, Any], space: dict[str, list]):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BASELINES.register(name)(Baseline(name, defaults, space, fn))
        return fn

    return deco


from mcu_dist.baselines import methods as _methods  # noqa: E402,F401  (registers the units)

__all__ = ["BASELINES", "Baseline", "baseline"]
