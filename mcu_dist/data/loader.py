"""Mini-batches over in-memory uint8 images: seeded shuffling, data-parallel sharding, batched augmentation.

Sharding follows the global batch: with world size W and global batch B, step s of every rank
draws the same B positions of the epoch's permutation and rank r keeps its contiguous slice, so
the union over ranks of step s is exactly the batch one worker would see. Nothing is padded; the
last, short batch is split the same way. ``epoch`` plays the role of ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from mcu_dist.data.registry import ImageData


@dataclass
class Batch:
    x: torch.Tensor  # float, normalised
    y: torch.Tensor
    positions: torch.Tensor  # positions into the ImageData the batch came from (a host tensor)
    on_device: torch.Tensor | None = None  # the same positions on x's device, when the data lives there

    def device_positions(self) -> torch.Tensor:
        """The positions on the batch's device: index per-sample tensors there without a host copy."""
        return self.positions.to(self.x.device) if self.on_device is None else self.on_device


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> torch.Tensor:
    if not shuffle:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g)


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (sizes differ by at most one)."""
    n = len(batch)
    lo = (n * rank) // world_size
    hi = (n * (rank + 1)) // world_size
    return batch[lo:hi]


class Normalizer:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():  # a user's tensors arrive already normalised
            return images.to(self.mean.device)
        return (images.to(self.mean.device, torch.float32) - self.mean) / self.std


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> tuple[torch.Tensor, ...]:
    """Per-sample crop offsets and flips for a global batch of ``n``."""
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return dy, dx, flip


def augment_batch(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor, pad: int = 4
) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, vectorised over the batch."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    rows = (dy.view(n, 1) + torch.arange(h, device=dy.device).view(1, h)).to(x.device)
    cols = (dx.view(n, 1) + torch.arange(w, device=dx.device).view(1, w)).to(x.device)
    cols = torch.where(flip.view(n, 1).to(x.device), cols.flip(1), cols)
    idx_n = torch.arange(n, device=x.device).view(n, 1, 1, 1)
    idx_c = torch.arange(c, device=x.device).view(1, c, 1, 1)
    return padded[idx_n, idx_c, rows.view(n, 1, h, 1), cols.view(n, 1, 1, w)]


class Epoch:
    """One epoch's batches: iterable, with their count known without producing them."""

    def __init__(self, count: int, make: Callable[[], Iterator[Batch]]):
        self._count, self._make = count, make

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Batch]:
        return self._make()


def iterate(
    data: ImageData,
    positions: torch.Tensor,
    batch_size: int,
    normalize: Normalizer,
    *,
    shuffle: bool = False,
    seed: int = 0,
    epoch: int = 0,
    augment: bool = False,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> Iterator[Batch]:
    """Batches over ``data[positions]``; ``positions`` index ``data``.

    On a CUDA device the data is uploaded once and batches are gathered there (data/device.py).
    """
    if torch.device(device).type != "cpu":
        from mcu_dist.data.device import fits, iterate_resident

        if fits(data, device):
            yield from iterate_resident(
                data,
                positions,
                batch_size,
                normalize,
                shuffle=shuffle,
                seed=seed,
                epoch=epoch,
                augment=augment,
                rank=rank,
                world_size=world_size,
                device=device,
            )
            return
    order = positions[epoch_order(len(positions), seed, epoch, shuffle)]
    g = torch.Generator().manual_seed(seed * 7_919 + epoch + 1)
    for start in range(0, len(order), batch_size):
        global_batch = order[start : start + batch_size]
        # the whole global batch's draws are made on every rank, so N ranks see what 1 rank sees
        draws = crop_flip_draws(len(global_batch), g) if augment else None
        lo = (len(global_batch) * rank) // world_size
        mine = shard(global_batch, rank, world_size)
        x = normalize(data.images[mine].to(device))
        if draws is not None:
            x = augment_batch(x, *(d[lo : lo + len(mine)] for d in draws))
        yield Batch(x, data.labels[mine].to(device), mine)
