"""Reference models θ_o (trained on D) and θ_r (trained on D_r), and a content-addressed model cache.

Each cached model is keyed by a hash of exactly the config fields it depends on. Two processes
asking for one key never both train it: the first holds an exclusive file lock while it trains,
writes to a temporary file and renames it into place; the second waits on the lock, then loads.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from mcu_dist.config import ConfigError
from mcu_dist.lab import Lab
from mcu_dist.train.fit import cross_entropy, fit, sgd


def key_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def save_checkpoint(model: nn.Module, path: str | Path, meta: dict | None = None) -> None:
    """One checkpoint format: ``{"state_dict", "meta"}``, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(
            {"state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, "meta": meta or {}},
            tmp,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, field_name: str = "checkpoint") -> tuple[dict, dict]:
    """(state_dict, meta); a plain state dict is accepted too. Always ``weights_only=True``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConfigError(
            f"{field_name}: cannot load {path} ({type(e).__name__}); allowed: a torch checkpoint "
            "saved with torch.save (state dict or {'state_dict': ...})"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj:
        return obj["state_dict"], obj.get("meta", {})
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, {}
    raise ConfigError(
        f"{field_name}: {path} holds no state dict; allowed: a state dict or {{'state_dict': ...}}"
    )


def load_into(model: nn.Module, state: dict, field_name: str, path: str | Path) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(
            f"{field_name}: {path} does not fit model ({first}); allowed: a checkpoint of the "
            "configured architecture"
        ) from None
    return model


class ModelCache:
    def __init__(self, root: str | Path):
        self.root = Path(root) / "models"
        self.root.mkdir(parents=True, exist_ok=True)
        self.trained: list[str] = []  # keys this process trained (cache misses)

    def path(self, kind: str, fields: dict) -> Path:
        return self.root / f"{kind}-{key_hash(fields)}.pt"

    def get(
        self, kind: str, fields: dict, template: nn.Module, build: Callable[[], nn.Module]
    ) -> tuple[nn.Module, dict]:
        """Load ``kind`` for ``fields`` into ``template``, training it with ``build`` on a miss."""
        path = self.path(kind, fields)
        if not path.exists():
            with self._lock(path):
                if not path.exists():
                    start = time.perf_counter()
                    model = build()
                    meta = {
                        "kind": kind,
                        "fields": json.dumps(fields, sort_keys=True, default=str),
                        "seconds": time.perf_counter() - start,
                    }
                    save_checkpoint(model, path, meta)
                    self.trained.append(path.stem)
        state, meta = load_checkpoint(path, f"cache entry {path.name}")
        return load_into(template, state, "cache", path).eval(), meta

    @contextlib.contextmanager
    def _lock(self, path: Path):
        with open(path.with_suffix(".lock"), "w") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def train_supervised(lab: Lab, positions: torch.Tensor, seed: int) -> nn.Module:
    """The standard recipe on ``positions`` of the training set, from a fresh seeded initialisation."""
    r = lab.cfg.reference
    model = lab.new_model(seed)
    opt = sgd(model.parameters(), r.lr, r.momentum, r.weight_decay)
    return fit(
        model,
        r.epochs,
        lambda e: lab.batches(positions, r.batch_size, seed=seed, epoch=e),
        cross_entropy,
        opt,
        autocast=lab.autocast,
    )


def original_model(lab: Lab, cache: ModelCache) -> tuple[nn.Module, dict]:
    """θ_o: the user's checkpoint when given, else the cached (or freshly trained) model on all of D."""
    if lab.cfg.model.original:
        state, meta = load_checkpoint(lab.cfg.model.original, "model.original")
        return load_into(lab.new_model(), state, "model.original", lab.cfg.model.original).eval(), meta
    fields = lab.reference_key()
    return cache.get(
        "original", fields, lab.new_model(), lambda: train_supervised(lab, lab.all_train, lab.cfg.seeds.model)
    )


def retrained_model(lab: Lab, cache: ModelCache) -> tuple[nn.Module, dict]:
    """θ_r: trained from scratch on D_r only (the gold standard)."""
    fields = {**lab.reference_key(), "original": None, "forget": lab.splits.manifest_hash}
    return cache.get(
        "retrain",
        fields,
        lab.new_model(),
        lambda: train_supervised(lab, lab.splits.retain, lab.cfg.seeds.model),
    )
