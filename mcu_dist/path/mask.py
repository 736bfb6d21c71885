"""The tensor-level parameter mask (k, k_r), computed once on θ_o in eval mode.

    G_r[W] = Σ_batches(D_r) ∇_W CE(θ_o)      s_r[W] = ‖G_r[W]‖₂ / numel(W)
    G_f[W] = Σ_batches(D_f) ∇_W (−CE(θ_o))   s_f[W] = ‖G_f[W]‖₂ / numel(W)

Stage 1 (k_r): walk tensors by s_r, highest first, excluding each while the excluded count is
below k_r·N. Stage 2 (k): walk the rest by s_f, highest first, selecting each while the selected
count is below k·N. ``k = 1`` selects everything.

That walk (``mode: paper``, the default) can overshoot k by a whole tensor: on a small CNN whose
largest tensor holds most parameters, k = 0.5 selects 100%. ``mode: budget`` walks the same order
but takes a tensor only while it fits under the target count, then adds the one remaining tensor
that lands closest to the target if that is closer; the selected count is then within one tensor
of k·N (|count − k·N| is below the size of every tensor left out). Both stages use the mode.

Controls: ``kind: random`` selects tensors in a seeded random order up to k·N (same mode);
``kind: random_matched`` computes the gradient mask first and then draws random tensors, in
budget mode, to that mask's parameter count, so the control has the same size ± one tensor.
Every mask reports the fraction it actually selects, overall and per layer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from mcu_dist.config import MASK_KINDS, MASK_MODES, ConfigError
from mcu_dist.lab import Lab


@dataclass(frozen=True)
class Mask:
    """Which control-point tensors train; ``sizes`` lists every parameter tensor in model order."""

    kind: str
    mode: str
    k: float
    k_r: float
    sizes: dict[str, int]
    selected: tuple[str, ...]  # sorted names
    s_r: dict[str, float] = field(default_factory=dict)
    s_f: dict[str, float] = field(default_factory=dict)
    target_params: int | None = None  # random_matched: the gradient mask's count it matched
    overlap: float | None = None  # random_matched: parameter Jaccard with that gradient mask (1: the same)

    @property
    def sha256(self) -> str:
        body = {"kind": self.kind, "k": self.k, "k_r": self.k_r, "selected": list(self.selected)}
        if self.mode != "paper":  # paper-mode digests stay those of earlier runs
            body["mode"] = self.mode
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    @property
    def selected_params(self) -> int:
        return sum(self.sizes[n] for n in self.selected)

    @property
    def total_params(self) -> int:
        return sum(self.sizes.values())

    @property
    def fraction(self) -> float:
        """The share of parameters the mask actually selects (what k asked for, as it ran)."""
        return self.selected_params / self.total_params

    def layer_fractions(self) -> dict[str, float]:
        """Selected share of each layer's parameters (a layer: the module owning the tensors)."""
        chosen = set(self.selected)
        total: dict[str, int] = {}
        picked: dict[str, int] = {}
        for n, size in self.sizes.items():
            layer = n.rsplit(".", 1)[0] if "." in n else n
            total[layer] = total.get(layer, 0) + size
            picked[layer] = picked.get(layer, 0) + (size if n in chosen else 0)
        return {layer: picked[layer] / total[layer] for layer in total}

    def summary(self) -> dict[str, float]:
        """Scalars for run tables and tracking: the selected fraction beside the k it was asked for."""
        out = {
            "mask_fraction": self.fraction,
            "mask_tensors": float(len(self.selected)),
            "mask_params": float(self.selected_params),
        }
        if self.overlap is not None:  # a control that is the gradient mask itself tells nothing
            out["mask_overlap"] = self.overlap
        return out

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "mode": self.mode,
            "k": self.k,
            "k_r": self.k_r,
            "selected": list(self.selected),
            "sha256": self.sha256,
            "selected_params": self.selected_params,
            "total_params": self.total_params,
            "fraction": self.fraction,
            "layer_fractions": self.layer_fractions(),
            "target_params": self.target_params,
            "overlap": self.overlap,
            "s_r": self.s_r,
            "s_f": self.s_f,
        }


def tensor_scores(model: nn.Module, lab: Lab, positions: torch.Tensor, sign: float) -> dict[str, float]:
    model.eval()
    params = dict(model.named_parameters())
    for p in params.values():
        p.requires_grad_(True)
    model.zero_grad(set_to_none=True)
    for b in lab.batches(positions, 256, seed=0, epoch=0, shuffle=False, augment=False):
        (sign * nn.functional.cross_entropy(model(b.x), b.y)).backward()
    scores = {n: (p.grad.norm().item() / p.numel()) if p.grad is not None else 0.0 for n, p in params.items()}
    model.zero_grad(set_to_none=True)
    return scores


def walk(order: Iterable[str], sizes: dict[str, int], target: float, mode: str) -> list[str]:
    """Tensors in ``order`` toward ``target`` parameters (``paper``: while below it; ``budget``: nearest)."""
    taken, count = [], 0
    order = list(order)
    if mode == "paper":
        for n in order:
            if count >= target:
                break
            taken.append(n)
            count += sizes[n]
        return taken
    for n in order:
        if count + sizes[n] <= target:
            taken.append(n)
            count += sizes[n]
    left = [n for n in order if n not in set(taken)]
    if left and count < target:
        best = min(left, key=lambda n: abs(count + sizes[n] - target))
        if abs(count + sizes[best] - target) < target - count:
            taken.append(best)
    return taken


def select_tensors(
    sizes: dict[str, int],
    s_r: dict[str, float],
    s_f: dict[str, float],
    k: float,
    k_r: float,
    mode: str = "paper",
) -> list[str]:
    """The two-stage walk; returns the selected tensor names."""
    total = sum(sizes.values())
    if k >= 1:
        return list(sizes)
    excluded = set(walk(sorted(sizes, key=lambda n: -s_r[n]), sizes, k_r * total, mode)) if k_r > 0 else set()
    rest = sorted((n for n in sizes if n not in excluded), key=lambda n: -s_f[n])
    return walk(rest, sizes, k * total, mode)


def random_tensors(sizes: dict[str, int], target: float, seed: int, mode: str = "paper") -> list[str]:
    """Tensors in a seeded random order toward ``target`` parameters."""
    names = list(sizes)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    return walk([names[i] for i in order], sizes, target, mode)


def compute_mask(
    original: nn.Module,
    lab: Lab,
    k: float,
    k_r: float,
    kind: str = "gradient",
    seed: int = 0,
    mode: str = "paper",
) -> Mask:
    """The mask of ``kind`` (gradient, random, random_matched) in ``mode`` (paper, budget)."""
    if kind not in MASK_KINDS or mode not in MASK_MODES:
        raise ConfigError(
            f"mcu.mask / mcu.mask_mode: got {kind!r} / {mode!r}; allowed: {', '.join(MASK_KINDS)} / "
            f"{', '.join(MASK_MODES)}"
        )
    sizes = {n: p.numel() for n, p in original.named_parameters()}
    total = sum(sizes.values())
    target = overlap = None
    if kind == "random":
        selected, s_r, s_f = random_tensors(sizes, k * total, seed, mode), {}, {}
    elif kind == "random_matched":
        gradient = compute_mask(original, lab, k, k_r, "gradient", seed, mode)
        target = gradient.selected_params
        selected, s_r, s_f = random_tensors(sizes, target, seed, "budget"), {}, {}
        overlap = parameter_jaccard(sizes, selected, gradient.selected)
    elif k >= 1:
        selected, s_r, s_f = list(sizes), {}, {}
    else:
        s_r = tensor_scores(original, lab, lab.splits.retain, 1.0) if k_r > 0 else {n: 0.0 for n in sizes}
        s_f = tensor_scores(original, lab, lab.splits.forget, -1.0)
        selected = select_tensors(sizes, s_r, s_f, k, k_r, mode)
    return Mask(kind, mode, k, k_r, sizes, tuple(sorted(selected)), s_r, s_f, target, overlap)


def parameter_jaccard(sizes: dict[str, int], a: Iterable[str], b: Iterable[str]) -> float:
    """Parameters both tensor sets select ÷ parameters either selects (1: the same set). A model with few
    tensors of very different sizes (the small CNN: one tensor holds 76%) leaves a size-matched random
    control no other choice than the gradient mask; this says so."""
    a, b = set(a), set(b)
    union = sum(sizes[n] for n in a | b)
    return sum(sizes[n] for n in a & b) / union if union else 1.0


def mask_for(original: nn.Module, lab: Lab) -> Mask:
    """The configured mask (``mcu.k``, ``mcu.k_r``, ``mcu.mask``, ``mcu.mask_mode``, the unlearn seed)."""
    m = lab.cfg.mcu
    return compute_mask(original, lab, m.k, m.k_r, m.mask, lab.cfg.seeds.unlearn, m.mask_mode)
