"""The tensor-level parameter mask (k, k_r), computed once on θ_o in eval mode.

    G_r[W] = Σ_batches(D_r) ∇_W CE(θ_o)      s_r[W] = ‖G_r[W]‖₂ / numel(W)
    G_f[W] = Σ_batches(D_f) ∇_W (−CE(θ_o))   s_f[W] = ‖G_f[W]‖₂ / numel(W)

Stage 1 (k_r): walk tensors by s_r, highest first, excluding each while the excluded count is
below k_r·N. Stage 2 (k): walk the rest by s_f, highest first, selecting each while the selected
count is below k·N. ``k = 1`` selects everything. The ``random`` mask selects tensors in a seeded
random order up to the same count: the control for ablations.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from mcu_dist.lab import Lab


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


def select_tensors(
    sizes: dict[str, int], s_r: dict[str, float], s_f: dict[str, float], k: float, k_r: float
) -> list[str]:
    """The two-stage walk; returns the selected tensor names."""
    total = sum(sizes.values())
    if k >= 1:
        return list(sizes)
    excluded: set[str] = set()
    count = 0
    for n in sorted(sizes, key=lambda n: -s_r[n]):
        if count >= k_r * total:
            break
        excluded.add(n)
        count += sizes[n]
    selected, count = [], 0
    for n in sorted((n for n in sizes if n not in excluded), key=lambda n: -s_f[n]):
        if count >= k * total:
            break
        selected.append(n)
        count += sizes[n]
    return selected


def random_tensors(sizes: dict[str, int], k: float, seed: int) -> list[str]:
    total = sum(sizes.values())
    names = list(sizes)
    order = torch.randperm(len(names), generator=torch.Generator().manual_seed(seed)).tolist()
    selected, count = [], 0
    for i in order:
        if count >= k * total:
            break
        selected.append(names[i])
        count += sizes[names[i]]
    return selected


def compute_mask(
    original: nn.Module, lab: Lab, k: float, k_r: float, kind: str = "gradient", seed: int = 0
) -> dict:
    """The mask artifact: selected names, scores, counts and a content hash."""
    sizes = {n: p.numel() for n, p in original.named_parameters()}
    if kind == "random":
        selected = random_tensors(sizes, k, seed)
        s_r = s_f = {}
    elif k >= 1:
        selected, s_r, s_f = list(sizes), {}, {}
    else:
        s_r = tensor_scores(original, lab, lab.splits.retain, 1.0) if k_r > 0 else {n: 0.0 for n in sizes}
        s_f = tensor_scores(original, lab, lab.splits.forget, -1.0)
        selected = select_tensors(sizes, s_r, s_f, k, k_r)
    body = {"kind": kind, "k": k, "k_r": k_r, "selected": sorted(selected)}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    n_sel = sum(sizes[n] for n in selected)
    return {
        **body,
        "sha256": digest,
        "selected_params": n_sel,
        "total_params": sum(sizes.values()),
        "s_r": s_r,
        "s_f": s_f,
    }
