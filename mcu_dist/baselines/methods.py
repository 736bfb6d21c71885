"""Imports every baseline unit so that each registers itself."""

from mcu_dist.baselines import ascent, finetune, negtv, relabel, retrain  # noqa: F401
