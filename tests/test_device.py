"""Device-resident batches and the accelerator switches (CPU: the resident code path run on the host)."""

from __future__ import annotations

import gc

import pytest
import torch
from torch import nn

from mcu_dist import accel
from mcu_dist.config import AccelConfig, ConfigError, DataConfig
from mcu_dist.data import load_dataset
from mcu_dist.data.device import _RESIDENT, iterate_resident, resident
from mcu_dist.data.loader import Normalizer, iterate
from mcu_dist.data.registry import ImageData
from mcu_dist.models import create_model


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_dataset(DataConfig(dataset="digits"), 0, str(tmp_path_factory.mktemp("dev_cache")))


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("world_size", [1, 3])
@pytest.mark.parametrize("shuffle", [False, True])
def test_resident_batches_equal_loader_batches(digits, augment, world_size, shuffle):
    """Same seed, same arguments: the same positions, labels and pixels, augmentation on or off."""
    normalize = Normalizer(digits.mean, digits.std)
    positions = torch.arange(5, 5 + 301) * 2  # not in order, 301 = 9 * 32 + 13: a short tail, merged
    kw = {"shuffle": shuffle, "seed": 3, "epoch": 4, "augment": augment, "world_size": world_size}
    for rank in range(world_size):
        host = list(iterate(digits.train, positions, 32, normalize, rank=rank, **kw))
        dev = list(iterate_resident(digits.train, positions, 32, normalize, rank=rank, device="cpu", **kw))
        assert len(host) == len(dev) == 9
        for a, b in zip(host, dev, strict=True):
            assert torch.equal(a.positions, b.positions)
            assert torch.equal(b.device_positions(), b.positions)
            assert torch.equal(a.y, b.y)
            assert torch.equal(a.x, b.x)


def test_resident_augmentation_changes_with_epoch_and_has_the_loader_distribution(digits):
    """Across epochs the crop offsets are uniform over 0..8 and flips are fair, as the loader's draws."""
    from mcu_dist.data.device import epoch_draws

    sizes = [128] * 40
    dy, dx, flip = epoch_draws(sizes, seed=0, epoch=0)
    assert len(dy) == sum(sizes)
    counts = torch.bincount(torch.cat([dy, dx]), minlength=9).float()
    assert counts.numel() == 9 and (counts / counts.sum() - 1 / 9).abs().max() < 0.02
    assert abs(flip.float().mean().item() - 0.5) < 0.03
    other = epoch_draws(sizes, seed=0, epoch=1)[0]
    assert not torch.equal(dy, other)
    normalize = Normalizer(digits.mean, digits.std)
    positions = torch.arange(64)
    e0 = next(iterate_resident(digits.train, positions, 64, normalize, augment=True, epoch=0))
    e1 = next(iterate_resident(digits.train, positions, 64, normalize, augment=True, epoch=1))
    assert not torch.equal(e0.x, e1.x)


def test_resident_upload_happens_once_and_is_released_with_the_data():
    data = ImageData(
        torch.randint(0, 255, (20, 3, 8, 8), dtype=torch.uint8), torch.arange(20), torch.arange(20)
    )
    images, labels = resident(data, "cpu")
    again, _ = resident(data, "cpu")
    assert again is images and torch.equal(labels, data.labels)
    key = (id(data), "cpu")
    assert key in _RESIDENT
    del data, images, again, labels
    gc.collect()
    assert key not in _RESIDENT


def test_accel_switches_are_no_ops_on_cpu():
    model = create_model("small_cnn", 10, 3, 32)
    cfg = AccelConfig()
    assert accel.prepare_model(model, cfg, "cpu") is model
    assert model.features[0].weight.is_contiguous()
    assert accel.amp_dtype(cfg, "cpu") is None
    with accel.autocast(cfg, "cpu"):
        assert not torch.is_autocast_enabled("cpu")


def test_accel_switches_on_cuda_and_each_can_be_turned_off():
    """Decided from the device name alone: checked here without a GPU."""
    cfg = AccelConfig()
    assert accel.amp_dtype(cfg, "cuda") is torch.bfloat16
    assert accel.amp_dtype(AccelConfig(bf16=False), "cuda:0") is None
    cl = accel.prepare_model(create_model("small_cnn", 10, 3, 32), cfg, "cuda")
    assert cl.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = accel.prepare_model(
        create_model("small_cnn", 10, 3, 32), AccelConfig(channels_last=False), "cuda"
    )
    assert plain.features[0].weight.is_contiguous()
    mlp = nn.Sequential(nn.Linear(4, 2))
    assert accel.prepare_model(mlp, cfg, "cuda") is mlp  # no conv: nothing to reformat


def test_accel_eval_chunk_is_checked():
    with pytest.raises(ConfigError, match=r"accel.eval_chunk: got -1; allowed"):
        AccelConfig(eval_chunk=-1).validate()
