"""Imports every baseline unit so that each registers itself."""

from mcu_dist.baselines import ascent, finetune, negtv, relabel, retrain, scrub, sfron  # noqa: F401
