"""How a model runs when it is evaluated: BatchNorm folded into the convolutions, conv nets in
channels_last. Both are exact up to float rounding, and both make inference cheaper: folding drops a
pass per BatchNorm, and on a CPU oneDNN's NHWC kernels halve the small CNN's inference time.

The caller's model is never changed in layout: a folded model is a new module, and a model that
needs only the layout change is copied first.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
from torch import nn

from mcu_dist.accel import has_conv
from mcu_dist.lab import Lab
from mcu_dist.path.bezier import has_batchnorm

_FOLDED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.modules.batchnorm._BatchNorm)  # what fuse rewrites


def in_eval_layout(model: nn.Module, lab: Lab) -> nn.Module:
    """``model`` (changed in place) in channels_last when ``accel.channels_last`` and it has convolutions."""
    if lab.cfg.accel.channels_last and has_conv(model):
        model = model.to(memory_format=torch.channels_last)
    return model


def folded(model: nn.Module) -> nn.Module:
    """The eval-mode model with each BatchNorm folded into the convolution before it (one pass less).

    Exact up to float rounding: BN at fixed statistics is an affine map per channel. A model that
    torch.fx cannot trace (some user architectures), or that calls one module in several places, is
    returned as it is.
    """
    from torch.fx import symbolic_trace
    from torch.fx.experimental.optimization import fuse

    try:
        modules = dict(model.named_modules())
        calls = Counter(
            n.target
            for n in symbolic_trace(model.eval()).graph.nodes
            if n.op == "call_module" and isinstance(modules[n.target], _FOLDED)
        )
        if any(count > 1 for count in calls.values()):  # fuse would give every call of a shared conv
            return model  # the weights folded for one of its calls: keep the plain model
        return fuse(model)
    except Exception:  # fx tracing fails on data-dependent control flow: keep the plain model
        return model


def _is_channels_last(model: nn.Module) -> bool:
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return bool(convs) and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)


def eval_copy(model: nn.Module, lab: Lab) -> nn.Module:
    """``model`` as evaluation runs it (eval mode, BN folded, channels_last), leaving ``model`` as it was
    except for being put in eval mode."""
    model.eval()
    net = folded(model) if has_batchnorm(model) else model
    if lab.cfg.accel.channels_last and has_conv(net) and not _is_channels_last(net):
        net = in_eval_layout(copy.deepcopy(net) if net is model else net, lab)
    return net
