"""Dataset registry. Every dataset is materialised once as uint8 image tensors (N, C, H, W).

Decoding (JPEG, PNG, pickled batches) happens once and lands in a writable cache directory as
``.npy`` files; later loads memory-map them, so even ImageNet-100 needs disk, not RAM.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mcu_dist.config import ConfigError, DataConfig
from mcu_dist.registry import Registry
from mcu_dist.store import atomic


@dataclass
class ImageData:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    index: torch.Tensor  # int64 (N,): each sample's index in the full dataset's split

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, positions: torch.Tensor) -> ImageData:
        return ImageData(self.images[positions], self.labels[positions], self.index[positions])


@dataclass
class DatasetBundle:
    name: str
    dataset_id: str  # names the exact data (source + subset + split seed); part of every hash
    train: ImageData
    test: ImageData
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool  # default training augmentation (random crop + flip)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[-1])


@dataclass
class DatasetSpec:
    load: Callable[..., DatasetBundle]
    needs_root: bool


DATASETS: Registry[DatasetSpec] = Registry("data.dataset")


def check_data(cfg: DataConfig) -> None:
    """The dataset is registered, and a dataset that needs a folder has one (or may download)."""
    spec = DATASETS[cfg.dataset]  # names the field and the registered datasets
    if spec.needs_root:
        root = cfg.data_root or default_root(cfg.dataset)
        if root is None or not (cfg.download or Path(root).exists()):
            raise ConfigError(
                f"data.data_root: got {cfg.data_root!r}; allowed: an existing folder holding {cfg.dataset} "
                "(or download: true)"
            )


_OFFLINE_CIFAR10 = Path("shared") / "data" / "cifar10" / "cifar10_jpeg.parquet"


def default_root(name: str) -> str | None:
    """Where a dataset lives when no ``--data-root`` is given."""
    env = os.environ.get(f"MCU_DIST_{name.upper()}_ROOT")
    if env:
        return env
    if name == "cifar10":
        for base in (Path.cwd(), Path(__file__).resolve()):
            for parent in [base, *base.parents]:
                candidate = parent / _OFFLINE_CIFAR10
                if candidate.is_file():
                    return str(candidate.parent)
    return None


def cache_path(cache_dir: str | Path, *parts: str) -> Path:
    p = Path(cache_dir, "datasets", *parts)
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def save_npy(path: Path, array: np.ndarray) -> None:
    with atomic(path) as tmp:
        np.save(tmp, array)


def seeded_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Positions keeping ``per_class`` samples of every class (fewer where a class has fewer), sorted."""
    g = torch.Generator().manual_seed(seed)
    keep = []
    for c in torch.unique(labels):
        pos = torch.nonzero(labels == c).flatten()
        keep.append(pos[torch.randperm(len(pos), generator=g)[:per_class]])
    return torch.sort(torch.cat(keep)).values


def finish(
    name: str,
    source_id: str,
    train: ImageData,
    test: ImageData,
    num_classes: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    augment: bool,
    subset: int | None,
    split_seed: int,
) -> DatasetBundle:
    if subset is not None:
        train = train.take(seeded_subset(train.labels, subset, split_seed))
    dataset_id = f"{name}:{source_id}:subset={subset}:split_seed={split_seed if subset else '-'}"
    return DatasetBundle(name, dataset_id, train, test, num_classes, mean, std, augment)
