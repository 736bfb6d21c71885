"""Provenance: the manifest names D_r′; a curve checkpoint is refused against other endpoints."""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest
import torch

from mcu_dist.config import ConfigError, MCUConfig
from mcu_dist.data import write_manifest
from mcu_dist.data.forget import manifest_hash
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.bezier import curve_between
from mcu_dist.path.checkpoint import load_curve, save_curve
from mcu_dist.train.mcu import CurveState, retain_prime_record, train_curve


def _nudged(model, seed: int, scale: float = 0.02):
    torch.manual_seed(seed)
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.add_(scale * torch.randn_like(p))
    return out


def _names(model) -> list[str]:
    return [n for n, _ in model.named_parameters()]


def test_curve_checkpoint_is_refused_against_other_endpoints(tmp_path, digits_original):
    endpoint, other = _nudged(digits_original, 1), _nudged(digits_original, 2)
    curve = curve_between(digits_original, endpoint, 2, _names(digits_original))
    with torch.no_grad():
        for p in curve.trainable():
            p.add_(0.1)
    save_curve(curve, tmp_path / "curve.pt")
    same = load_curve(
        curve_between(digits_original, endpoint, 2, _names(digits_original)), tmp_path / "curve.pt"
    )
    for a, b in zip(same.trainable(), curve.trainable(), strict=True):
        assert torch.equal(a, b)
    for start, end in ((digits_original, other), (other, endpoint), (endpoint, digits_original)):
        with pytest.raises(ConfigError, match="curve checkpoint"):
            load_curve(curve_between(start, end, 2, _names(digits_original)), tmp_path / "curve.pt")
    with pytest.raises(ConfigError, match="order"):
        load_curve(
            curve_between(digits_original, endpoint, 3, _names(digits_original)), tmp_path / "curve.pt"
        )


def test_ray_train_checkpoints_are_refused_against_other_endpoints(tmp_path, digits_original):
    from mcu_dist.train.distributed import restore, save_state
    from mcu_dist.train.mcu import make_optimizer

    endpoint = _nudged(digits_original, 1)
    curve = curve_between(digits_original, endpoint, 2, _names(digits_original))
    path = tmp_path / "state.pt"
    save_state(path, curve, make_optimizer(curve, MCUConfig()), CurveState(epoch=1, attempts=[0]))
    state = restore(curve_between(digits_original, endpoint, 2, _names(digits_original)), None, path)
    assert state.epoch == 1
    with pytest.raises(ConfigError, match="curve checkpoint"):
        restore(
            curve_between(digits_original, _nudged(digits_original, 3), 2, _names(digits_original)),
            None,
            path,
        )


def test_manifest_records_the_retained_sample_the_curve_trains_on(tmp_path, digits_lab, digits_original):
    seen: list[torch.Tensor] = []

    class SpyLab(Lab):
        def batches(self, positions, batch_size, **kw):
            for b in super().batches(positions, batch_size, **kw):
                if kw.get("epoch") == 0:
                    seen.append(b.positions.cpu())
                yield b

    lab = SpyLab(digits_lab.cfg, digits_lab.bundle, digits_lab.splits, digits_lab.device, digits_lab.cache)
    record = retain_prime_record(lab)
    write_manifest(lab.bundle, lab.splits, tmp_path / "m.parquet", record)
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(tmp_path / "m.parquet").metadata.items()}
    assert meta["retain_prime_seed"] == str(lab.cfg.seeds.unlearn)
    assert meta["retain_prime_fraction"] == str(lab.cfg.mcu.retain_fraction)
    cfg = MCUConfig(epochs=1, batch_size=128)
    curve = curve_between(digits_original, _nudged(digits_original, 1), 2, _names(digits_original)[:2])
    train_curve(curve, lab, cfg, "fixed", CalTargets(0.0, 99.0), seed=lab.cfg.seeds.unlearn)
    streamed = torch.cat(seen)
    retained = streamed[~torch.isin(streamed, lab.splits.forget)]
    assert len(retained) == int(meta["retain_prime_size"])
    assert (
        manifest_hash(lab.bundle.dataset_id, lab.bundle.train.index[retained]) == meta["retain_prime_sha256"]
    )
