"""Accuracy-type metrics from one forward pass: logits -> accuracy and true-label confidences.

UA = 100 - accuracy on D_f, RA = accuracy on D_r, TA = accuracy on D_test (remaining classes in
class-wise runs); always with test-time transforms. Avg. Gap = mean over {UA, RA, TA, MIA} of
|metric - metric(θ_r)|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mcu_dist.data.loader import Normalizer, iterate
from mcu_dist.data.registry import ImageData
from mcu_dist.evaluate.names import GAP_METRICS


@dataclass
class Outputs:
    """Per-sample results of one evaluation pass."""

    correct: torch.Tensor  # bool
    confidence: torch.Tensor  # softmax probability of the true label
    probs: torch.Tensor  # full softmax (kept for the secondary MIA features)
    labels: torch.Tensor

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct.float().mean().item() if len(self.correct) else float("nan")


def batch_dependent(model: nn.Module) -> bool:
    """Whether an eval-mode output depends on the rest of the batch (BatchNorm without running stats)."""
    return any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None for m in model.modules()
    )


def forward_in_pieces(model: nn.Module, x: torch.Tensor, piece: int = 0) -> torch.Tensor:
    """``model(x)`` of an eval-mode model, run ``piece`` samples at a time (0: all at once).

    Per sample the same result up to rounding (eval mode: no sample sees another; a model where one
    does, BatchNorm without running statistics, runs whole batches). On a CPU the
    activations of a small piece stay in cache: the small CNN infers 1.6x faster at 128 than at 512.
    """
    if piece <= 0 or len(x) <= piece or batch_dependent(model):
        return model(x)
    return torch.cat([model(x[i : i + piece]) for i in range(0, len(x), piece)])


@torch.no_grad()
def predict(
    model: nn.Module,
    data: ImageData,
    positions: torch.Tensor,
    normalize: Normalizer,
    batch_size: int = 512,
    device: torch.device | str = "cpu",
    piece: int = 0,
) -> Outputs:
    model.eval()
    probs, labels = [], []
    for batch in iterate(data, positions, batch_size, normalize, device=device, merge_tail=False):
        probs.append(torch.softmax(forward_in_pieces(model, batch.x, piece).float(), dim=1).cpu())
        labels.append(batch.y.cpu())
    if not probs:
        empty = torch.empty(0)
        return Outputs(empty.bool(), empty, empty, empty.long())
    p, y = torch.cat(probs), torch.cat(labels)
    return Outputs(p.argmax(1) == y, p.gather(1, y.view(-1, 1)).flatten(), p, y)


def training_accuracy(row: dict[str, float], n_forget: int, n_retain: int) -> float:
    """Accuracy on the whole training set D = D_f ∪ D_r from a row's UA (100 − accuracy on D_f) and RA."""
    return ((100 - row["UA"]) * n_forget + row["RA"] * n_retain) / (n_forget + n_retain)


def avg_gap(row: dict[str, float], reference: dict[str, float]) -> float:
    return sum(abs(row[m] - reference[m]) for m in GAP_METRICS) / len(GAP_METRICS)
