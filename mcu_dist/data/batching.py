"""The pieces of a mini-batch shared by the host loader and the device-resident one.

The epoch's permutation, the global batch's shard per rank, and crop+flip augmentation: per-sample
offsets dy, dx in 0..2·pad and a fair flip, drawn for the whole global batch from one generator,
applied as one gather from the zero-padded batch on whatever device the batch lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


MERGE_BELOW = 0.5  # a last batch smaller than this fraction of the batch size joins the one before it


def batch_spans(n: int, batch_size: int, merge_tail: bool = True) -> list[tuple[int, int]]:
    """(start, size) of an epoch's global batches over ``n`` samples.

    Every sample is used once. A ragged tail smaller than ``MERGE_BELOW`` of ``batch_size`` is merged
    into the batch before it instead of standing alone: a 4-image batch under BatchNorm (900 samples
    at batch 128) trains on — and, during BN re-estimation, weighs in on — statistics of 4 images.
    Prediction (``merge_tail=False``) keeps the tail apart: no batch is larger than asked for there.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    spans = [(s, min(batch_size, n - s)) for s in range(0, n, batch_size)]
    if merge_tail and len(spans) > 1 and spans[-1][1] < MERGE_BELOW * batch_size:
        (start, size), (_, tail) = spans[-2], spans.pop()
        spans[-1] = (start, size + tail)
    return spans


def shard(batch: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of a global batch (sizes differ by at most one)."""
    n = len(batch)
    lo = (n * rank) // world_size
    hi = (n * (rank + 1)) // world_size
    return batch[lo:hi]


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
