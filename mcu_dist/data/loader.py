"""Mini-batches over in-memory uint8 images: seeded shuffling, data-parallel sharding, batched augmentation.

Sharding follows the global batch: with world size W and global batch B, step s of every rank
draws the same B positions of the epoch's permutation and rank r keeps its contiguous slice, so
the union over ranks of step s is exactly the batch one worker would see. Nothing is padded or
dropped; a short last batch is split the same way, or merged into the one before it when it is
much smaller than the batch size (``batching.batch_spans``). ``epoch`` plays the role of ``set_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

from mcu_dist.data.batching import Batch, augment_batch, batch_spans, crop_flip_draws, epoch_order, shard
from mcu_dist.data.registry import ImageData

__all__ = [
    "Batch",
    "Epoch",
    "Normalizer",
    "augment_batch",
    "batch_spans",
    "crop_flip_draws",
    "epoch_order",
    "iterate",
    "shard",
]


class Normalizer:
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device | str = "cpu"):
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1) * 255.0
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1) * 255.0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.is_floating_point():  # a user's tensors arrive already normalised
            return images.to(self.mean.device)
        return (images.to(self.mean.device, torch.float32) - self.mean) / self.std


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
    merge_tail: bool = True,
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
                merge_tail=merge_tail,
            )
            return
    order = positions[epoch_order(len(positions), seed, epoch, shuffle)]
    g = torch.Generator().manual_seed(seed * 7_919 + epoch + 1)
    for start, size in batch_spans(len(order), batch_size, merge_tail):
        global_batch = order[start : start + size]
        # the whole global batch's draws are made on every rank, so N ranks see what 1 rank sees
        draws = crop_flip_draws(len(global_batch), g) if augment else None
        lo = (len(global_batch) * rank) // world_size
        mine = shard(global_batch, rank, world_size)
        x = normalize(data.images[mine].to(device))
        if draws is not None:
            x = augment_batch(x, *(d[lo : lo + len(mine)] for d in draws))
        yield Batch(x, data.labels[mine].to(device), mine)
