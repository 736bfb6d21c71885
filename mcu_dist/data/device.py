"""Device-resident data: the decoded uint8 arrays uploaded once per process, mini-batches gathered there.

``iterate_resident`` yields exactly the batches of ``loader.iterate`` for the same arguments — the
same epoch permutation, the same global-batch sharding, the same crop offsets and flips — but the
permutation and the epoch's augmentation draws are made once per epoch on the host (with the
loader's generators, in the loader's order) and uploaded in one copy. Per step only device work is
queued: an index gather of uint8 images, normalisation, and crop+flip as one gather from the
zero-padded batch. No host stall per step and no DataLoader workers on the hot path.

A dataset larger than ``MAX_FRACTION`` of the device's memory stays on the host (per-batch copies).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch

from mcu_dist.data.batching import Batch, augment_batch, batch_spans, crop_flip_draws, epoch_order
from mcu_dist.data.registry import ImageData

MAX_FRACTION = 0.4  # of the device's total memory; the rest is for models, activations and the evaluator

_RESIDENT: dict[tuple[int, str], tuple[weakref.ref, torch.Tensor, torch.Tensor]] = {}


def resident(data: ImageData, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) of ``data`` on ``device``, uploaded on first use and kept while ``data`` lives."""
    key = (id(data), str(torch.device(device)))
    hit = _RESIDENT.get(key)
    if hit is not None and hit[0]() is data:
        return hit[1], hit[2]
    images = data.images.to(device).contiguous()
    labels = data.labels.to(device)
    _RESIDENT[key] = (weakref.ref(data), images, labels)
    weakref.finalize(data, _RESIDENT.pop, key, None)
    return images, labels


def fits(data: ImageData, device: torch.device | str) -> bool:
    """Whether ``data`` may live on ``device`` (always on CPU; a fraction of the memory on CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    total = torch.cuda.get_device_properties(device).total_memory
    return data.images.numel() * data.images.element_size() <= MAX_FRACTION * total


def epoch_draws(sizes: list[int], seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The loader's crop offsets and flips for an epoch of global batches of ``sizes``, concatenated."""
    g = torch.Generator().manual_seed(seed * 7_919 + epoch + 1)
    per_batch = [crop_flip_draws(n, g) for n in sizes]
    return tuple(torch.cat([d[i] for d in per_batch]) for i in range(3))  # type: ignore[return-value]


def iterate_resident(
    data: ImageData,
    positions: torch.Tensor,
    batch_size: int,
    normalize,
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
    """``loader.iterate`` with the data on ``device``; batch positions stay host tensors."""
    images, labels = resident(data, device)
    order = positions[epoch_order(len(positions), seed, epoch, shuffle)]
    on_device = order.to(device)
    spans = batch_spans(len(order), batch_size, merge_tail)
    sizes = [n for _, n in spans]
    draws = None
    if augment:
        draws = tuple(d.to(device) for d in epoch_draws(sizes, seed, epoch))
    for start, n in spans:
        lo, hi = start + (n * rank) // world_size, start + (n * (rank + 1)) // world_size
        idx = on_device[lo:hi]
        x = normalize(images[idx])
        if draws is not None:
            x = augment_batch(x, *(d[lo:hi] for d in draws))
        yield Batch(x, labels[idx], order[lo:hi], idx)
