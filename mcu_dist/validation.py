"""The whole check of an experiment config, before any compute: values, then every registry name.

``ExperimentConfig.validate`` checks the values alone (the config floor imports nothing above it);
each registry checks the names it holds where it lives: datasets and their folders
(``data.check_data``), models (``models.check_model``), baselines and their hyperparameters
(``baselines.check_baselines``), β schedules (``path.beta.check_schedule``).
"""

from __future__ import annotations

from mcu_dist.baselines import check_baselines
from mcu_dist.config import ExperimentConfig
from mcu_dist.data import check_data
from mcu_dist.fs import check_location
from mcu_dist.models import check_model
from mcu_dist.path.beta import check_schedule
from mcu_dist.recipes import check_recipe


def validate(cfg: ExperimentConfig) -> ExperimentConfig:
    """Raise ``ConfigError`` ("field: got X; allowed: Y") on the first bad field; returns ``cfg``."""
    check_data(cfg.data)
    cfg.forget.validate()
    check_model(cfg.model)
    check_baselines(cfg.baselines)
    check_schedule(cfg.mcu)
    check_recipe(cfg.reference.recipe)
    cfg.validate()
    for name, loc in (("cache_dir", cfg.cache_dir), ("out", cfg.out), ("scale.storage", cfg.scale.storage)):
        if loc:
            check_location(loc, name)
    return cfg
