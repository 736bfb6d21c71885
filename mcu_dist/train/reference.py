"""Reference models θ_o (trained on D) and θ_r (trained on D_r), each trained once into the model cache.

Each is keyed by exactly the config fields it depends on (``Lab.reference_key``); the cache itself
(file lock, atomic write, one checkpoint format) is ``mcu_dist.store.ModelCache``.
"""

from __future__ import annotations

import torch
from torch import nn

from mcu_dist.guard import stage
from mcu_dist.lab import Lab
from mcu_dist.store import ModelCache, load_model
from mcu_dist.train.fit import cross_entropy, fit, sgd


def train_supervised(lab: Lab, positions: torch.Tensor, seed: int) -> nn.Module:
    """The reference recipe on ``positions`` of the training set, from a fresh seeded initialisation."""
    r = lab.recipe
    model = lab.new_model(seed)
    opt = sgd(model.parameters(), r.lr, r.momentum, r.weight_decay)
    return fit(
        model,
        r.epochs,
        lambda e: lab.batches(positions, r.batch_size, seed=seed, epoch=e),
        cross_entropy,
        opt,
        autocast=lab.autocast,
        max_loss=lab.cfg.max_loss,
    )


def _trained(name: str, positions: torch.Tensor, lab: Lab) -> nn.Module:
    """``train_supervised`` as the named stage (the name a divergence is reported under)."""
    with stage(name):
        return train_supervised(lab, positions, lab.cfg.seeds.model)


def original_model(lab: Lab, cache: ModelCache) -> tuple[nn.Module, dict]:
    """θ_o: the user's checkpoint when given, else the cached (or freshly trained) model on all of D."""
    if lab.cfg.model.original:
        model, meta = load_model(lab.new_model(), lab.cfg.model.original, "model.original")
        return model.eval(), meta
    fields = lab.reference_key()
    return cache.get(
        "original",
        fields,
        lab.new_model(),
        lambda: _trained("reference model original", lab.all_train, lab),
    )


def retrained_model(lab: Lab, cache: ModelCache) -> tuple[nn.Module, dict]:
    """θ_r: trained from scratch on D_r only (the gold standard)."""
    fields = {**lab.reference_key(), "original": None, "forget": lab.splits.manifest_hash}
    return cache.get(
        "retrain",
        fields,
        lab.new_model(),
        lambda: _trained("reference model retrain", lab.splits.retain, lab),
    )
