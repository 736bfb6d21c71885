"""The Python API: MCU on a user's own model and data.

    result = mcu_dist.unlearn(original, endpoint, forget_set, retain_set, test_set)
    result.t_star, result.path_table, result.model  # θ(t*), BN recalibrated

``forget_set``, ``retain_set`` and ``test_set`` are ``(x, y)`` tensor pairs (x already
normalised, float) or map-style datasets yielding ``(x, y)``. ``endpoint`` is the output of any
unlearning method applied to ``original``; both must be of one architecture.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcu_dist.config import ConfigError, ExperimentConfig, with_overrides
from mcu_dist.data.forget import Splits, manifest_hash
from mcu_dist.data.registry import DatasetBundle, ImageData
from mcu_dist.lab import Lab
from mcu_dist.path.beta import check_schedule
from mcu_dist.pipeline import PathResult, run_path
from mcu_dist.references import prepare_references


def _tensors(data: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from an ``(x, y)`` pair or a map-style dataset; refused unless one label per image,
    integer labels >= 0 and at least one sample."""
    allowed = "an (x, y) pair of tensors of equal length or a map-style dataset of (x, y); labels ints >= 0"
    try:
        if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
            x, y = data[0].float(), torch.as_tensor(data[1])
        else:
            xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
            x, y = torch.stack([torch.as_tensor(v) for v in xs]).float(), torch.as_tensor(ys)
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError) as e:
        raise ConfigError(f"{name}: cannot read ({type(e).__name__}); allowed: {allowed}") from None
    if len(x) != len(y) or len(x) == 0 or y.ndim != 1:
        raise ConfigError(f"{name}: got {len(x)} images and {len(y)} labels; allowed: {allowed}")
    if y.is_floating_point() or y.dtype == torch.bool or (y < 0).any():
        raise ConfigError(f"{name}: got labels of dtype {y.dtype}, min {y.min().item()}; allowed: {allowed}")
    return x, y.to(torch.int64)


def unlearn(
    original: nn.Module,
    endpoint: nn.Module,
    forget_set: Any,
    retain_set: Any,
    test_set: Any,
    *,
    classwise: bool = False,
    num_classes: int | None = None,
    device: str = "cpu",
    out_dir: str | Path | None = None,
    **overrides: Any,
) -> PathResult:
    """Train the curve θ_o -> θ_p, evaluate the path, choose t*; returns the path and θ(t*).

    ``overrides`` are dotted config keys, e.g. ``**{"mcu.k": 0.1, "mcu.epochs": 5, "eval.t_points": 10}``.
    Class-wise: the forgotten classes are the labels of ``forget_set``; TA counts the others.
    """
    xf, yf = _tensors(forget_set, "forget_set")
    xr, yr = _tensors(retain_set, "retain_set")
    xt, yt = _tensors(test_set, "test_set")
    if not (xf.shape[1:] == xr.shape[1:] == xt.shape[1:]):
        raise ConfigError(
            f"retain_set: image shapes {tuple(xf.shape[1:])}, {tuple(xr.shape[1:])}, {tuple(xt.shape[1:])} "
            "(forget, retain, test); allowed: one image shape"
        )
    seen = int(max(yf.max(), yr.max(), yt.max())) + 1
    if num_classes is not None and num_classes < seen:
        raise ConfigError(
            f"num_classes: got {num_classes}; allowed: more than the largest label ({seen - 1})"
        )
    classes = num_classes or seen
    train = ImageData(torch.cat([xf, xr]), torch.cat([yf, yr]), torch.arange(len(yf) + len(yr)))
    test = ImageData(xt, yt, torch.arange(len(yt)))
    bundle = DatasetBundle(
        "user",
        f"user:{len(yf)}:{len(yr)}:{len(yt)}",
        train,
        test,
        classes,
        (0.0,) * xf.shape[1],
        (1.0,) * xf.shape[1],
        augment=False,
    )
    forget, retain = torch.arange(len(yf)), len(yf) + torch.arange(len(yr))
    forgotten = sorted(set(yf.tolist())) if classwise else None
    gone = torch.isin(yt, torch.tensor(forgotten)) if forgotten else torch.zeros(len(yt), dtype=torch.bool)
    splits = Splits(
        forget,
        retain,
        forgotten,
        torch.nonzero(~gone).flatten(),
        torch.nonzero(gone).flatten(),
        manifest_hash(bundle.dataset_id, forget),
    )
    cfg = with_overrides(
        ExperimentConfig(), {"device": device, "mcu.beta_schedule": "adaptive_step", **overrides}
    )
    if len(cfg.mcu.beta_schedule) != 1:
        raise ConfigError(f"mcu.beta_schedule: got {cfg.mcu.beta_schedule!r}; allowed: one schedule")
    cfg.mcu.validate()
    check_schedule(cfg.mcu)
    cfg.eval.validate()
    lab = Lab(cfg, bundle, splits, torch.device(device), model_factory=lambda: copy.deepcopy(original))
    original = copy.deepcopy(original).to(lab.device).eval()
    endpoint = copy.deepcopy(endpoint).to(lab.device).eval()
    refs = prepare_references(lab, original=original, retrain=False)
    return run_path(
        lab,
        original,
        endpoint,
        cfg.mcu.beta_schedule[0],
        refs.mask,
        refs.cal,
        None,
        Path(out_dir) if out_dir else None,
    )
