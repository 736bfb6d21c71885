"""The experiment's shared state: data, splits, batching, model factory, reference models."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from mcu_dist import accel, fs
from mcu_dist.config import ExperimentConfig, default_cache_dir
from mcu_dist.data import DatasetBundle, Normalizer, Splits, iterate, load_dataset, make_splits
from mcu_dist.data.loader import Epoch, batch_spans
from mcu_dist.models import create_model
from mcu_dist.recipes import Recipe, resolve
from mcu_dist.store import ModelCache, architecture_of, file_digest


@dataclass
class Lab:
    cfg: ExperimentConfig
    bundle: DatasetBundle
    splits: Splits
    device: torch.device
    cache: ModelCache | None = None
    model_factory: Callable[[], nn.Module] | None = None  # a user's own architecture (Python API)
    normalize: Normalizer = field(init=False)
    recipe: Recipe = field(init=False)  # how the reference models train (mcu_dist.recipes)

    def __post_init__(self) -> None:
        self.recipe = resolve(self.cfg)
        if self.recipe.augment is not None:  # the recipe's augmentation, or the user's data.augment
            self.bundle.augment = self.recipe.augment
        self.normalize = Normalizer(self.bundle.mean, self.bundle.std, self.device)
        accel.configure_process(self.cfg.accel, self.device)

    def autocast(self):
        """bf16 autocast on CUDA when ``accel.bf16`` (a no-op context on CPU)."""
        return accel.autocast(self.cfg.accel, self.device)

    @property
    def forward_piece(self) -> int:
        """Samples per eval-mode forward call: ``accel.cpu_forward_batch`` on a CPU, else whole batches."""
        return self.cfg.accel.cpu_forward_batch if self.device.type == "cpu" else 0

    @classmethod
    def build(cls, cfg: ExperimentConfig) -> Lab:
        # decoded datasets are memory-mapped arrays: on a node-local path when the model cache is remote
        data_cache = default_cache_dir() if fs.is_remote(cfg.cache_dir) else cfg.cache_dir
        bundle = load_dataset(cfg.data, cfg.seeds.split, data_cache)
        splits = make_splits(bundle, cfg.forget, cfg.seeds.split)
        return cls(cfg, bundle, splits, torch.device(cfg.device), ModelCache(cfg.cache_dir))

    def new_model(self, seed: int | None = None) -> nn.Module:
        if seed is not None:
            torch.manual_seed(seed)
        if self.model_factory is not None:
            model = self.model_factory()
        else:
            b = self.bundle
            model = create_model(self.cfg.model.name, b.num_classes, b.in_channels, b.image_size)
        return accel.prepare_model(model.to(self.device), self.cfg.accel, self.device)

    def batches(
        self,
        positions: torch.Tensor,
        batch_size: int,
        *,
        seed: int,
        epoch: int,
        shuffle: bool = True,
        augment: bool | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> Epoch:
        """Training batches over training-set positions (augmented per the dataset's default)."""
        aug = self.bundle.augment if augment is None else augment
        return Epoch(
            len(batch_spans(len(positions), batch_size)),
            lambda: iterate(
                self.bundle.train,
                positions,
                batch_size,
                self.normalize,
                shuffle=shuffle,
                seed=seed,
                epoch=epoch,
                augment=aug,
                rank=rank,
                world_size=world_size,
                device=self.device,
            ),
        )

    @property
    def all_train(self) -> torch.Tensor:
        return torch.arange(len(self.bundle.train))

    def reference_key(self) -> dict:
        """The config fields the original model depends on (and nothing else)."""
        cfg = self.cfg
        return {
            "dataset_id": self.bundle.dataset_id,
            "model": cfg.model.name,
            "arch": self.architecture(),
            "augment": self.bundle.augment,
            "recipe": self.recipe.training(),
            "seed": cfg.seeds.model,
            "original": file_digest(cfg.model.original) if cfg.model.original else None,
        }

    def architecture(self) -> str:
        """A fingerprint of the model's parameter and buffer names and shapes (a user factory included)."""
        return architecture_of(self.new_model(0).state_dict())
