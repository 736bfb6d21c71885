"""The baseline registry: a unit is ``Baseline(name, defaults, run, space)``, registered with ``@baseline``.

``run(model, lab, hp, seed)`` changes ``model`` (a copy of θ_o) in place and returns it; ``hp`` is
``defaults`` with the configured overrides applied (``resolve``), each coerced to its default's type.
``space`` is where tuning searches each of the unit's own hyperparameters, one search dimension per
key in the form of ``tune_spaces/*.yaml`` (``{type: logfloat, low: 1e-4, high: 1e-1}``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from mcu_dist.config import BaselineConfig, ConfigError, _coerce
from mcu_dist.registry import Registry


@dataclass(frozen=True)
class Baseline:
    name: str
    defaults: dict[str, Any]
    run: Callable[..., nn.Module]
    space: dict[str, dict[str, Any]] = field(default_factory=dict)

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


def baseline(name: str, defaults: dict[str, Any], space: dict[str, dict[str, Any]] | None = None):
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BASELINES.register(name)(Baseline(name, defaults, fn, dict(space or {})))
        return fn

    return deco


def check_baselines(cfg: BaselineConfig) -> None:
    for m in cfg.methods:
        BASELINES[m]  # noqa: B018  (raises "baselines.methods: got X; allowed: ...")
    for m, hp in cfg.params.items():
        if m not in BASELINES:
            raise ConfigError(f"baselines.params: got {m!r}; allowed: {', '.join(sorted(BASELINES))}")
        BASELINES[m].resolve(hp)
