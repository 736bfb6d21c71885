"""BatchNorm recalibration at a point of the path.

The running statistics are reset and re-estimated by a train-mode, no-grad pass over the
BN set (``eval.bn_set``) with a cumulative average (momentum None), as ``torch.optim.swa_utils.update_bn``
does. The BN set is an explicit choice: ``train`` (all of D, the paper's), ``retain``
(D_r only) or ``subset`` (a seeded subset of D of ``bn_set_size`` samples).
"""

from __future__ import annotations

import torch
from torch import nn

from mcu_dist.config import EvalConfig
from mcu_dist.data.loader import iterate
from mcu_dist.lab import Lab
from mcu_dist.path.bezier import has_batchnorm


def bn_set_positions(lab: Lab, cfg: EvalConfig, seed: int) -> torch.Tensor:
    if cfg.bn_set == "train":
        return lab.all_train
    if cfg.bn_set == "retain":
        return lab.splits.retain
    n = len(lab.bundle.train)
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(n, generator=g)[: min(cfg.bn_set_size, n)]).values


@torch.no_grad()
def recalibrate_bn(model: nn.Module, lab: Lab, positions: torch.Tensor, batch_size: int = 512) -> nn.Module:
    if not has_batchnorm(model):
        return model
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in iterate(lab.bundle.train, positions, batch_size, lab.normalize, device=lab.device):
        model(batch.x)
    for m, mom in zip(norms, saved, strict=True):
        m.momentum = mom
    return model.eval()
