"""Accelerator settings of one process: bf16 autocast, channels_last conv nets, TF32 — on CUDA only.

The switches are ``accel.bf16``, ``accel.channels_last`` and ``accel.tf32`` (config.py). On a CPU
device each one is a no-op, so CPU runs give exactly what they gave before. Under autocast the
network's convolutions and matrix products run in bf16 while losses, softmax and BatchNorm
statistics stay fp32 (autocast's own op lists); the trained tensors themselves are always fp32.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mcu_dist.config import AccelConfig


def on_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def amp_dtype(cfg: AccelConfig, device: torch.device | str) -> torch.dtype | None:
    """bf16 where autocast is on (CUDA and ``accel.bf16``), else None."""
    return torch.bfloat16 if cfg.bf16 and on_cuda(device) else None


def autocast(cfg: AccelConfig, device: torch.device | str) -> contextlib.AbstractContextManager:
    dtype = amp_dtype(cfg, device)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=dtype)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_model(model: nn.Module, cfg: AccelConfig, device: torch.device | str) -> nn.Module:
    """channels_last for conv nets on CUDA: cuDNN's NHWC kernels, and bf16 tensor cores without transposes."""
    if cfg.channels_last and on_cuda(device) and has_conv(model):
        model = model.to(memory_format=torch.channels_last)
    return model


def configure_process(cfg: AccelConfig, device: torch.device | str) -> None:
    """TF32 for fp32 matrix products and convolutions (set per process; CUDA only)."""
    if on_cuda(device):
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True
