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

from mcu_dist.config import ExperimentConfig, with_overrides
from mcu_dist.data.forget import Splits, manifest_hash
from mcu_dist.data.registry import DatasetBundle, ImageData
from mcu_dist.lab import Lab
from mcu_dist.path.mask import mask_for
from mcu_dist.pipeline import PathResult, run_path
from mcu_dist.train.mcu import calibration_targets


def _tensors(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0].float(), torch.as_tensor(data[1], dtype=torch.int64)
    xs, ys = zip(*(data[i] for i in range(len(data))), strict=True)
    return torch.stack([torch.as_tensor(x) for x in xs]).float(), torch.as_tensor(ys, dtype=torch.int64)


def unlearn(
    original: nn.Module,
    endpoint: nn.Module,
    forget_set: Any,
    retain_set: Any,
    test_set: Any,
    *,
    variant: str = "mcu_beta",
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
    xf, yf = _tensors(forget_set)
    xr, yr = _tensors(retain_set)
    xt, yt = _tensors(test_set)
    classes = num_classes or int(max(yf.max(), yr.max(), yt.max())) + 1
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
    cfg = with_overrides(ExperimentConfig(), {"device": device, **overrides})
    cfg.mcu.validate()
    cfg.eval.validate()
    lab = Lab(cfg, bundle, splits, torch.device(device), model_factory=lambda: copy.deepcopy(original))
    original = copy.deepcopy(original).to(lab.device).eval()
    endpoint = copy.deepcopy(endpoint).to(lab.device).eval()
    cal = calibration_targets(original, lab, classwise, cfg.eval.batch_size)
    mask = mask_for(original, lab)
    return run_path(lab, original, endpoint, variant, mask, cal, None, Path(out_dir) if out_dir else None)
