"""Percentile bootstrap intervals for UA, RA, TA, MIA-Efficacy and Avg. Gap of one evaluated model.

Every metric is a mean over samples: UA = 100 − mean(correct on D_f), RA and TA likewise on D_r and
D_test, MIA = 100 · mean(attack says non-member, over D_f). Replicate b resamples each set with
replacement (the same size), and takes the attack's verdicts from shadow draw b mod R, so the
interval covers both the finite forget/test samples and the choice of MIA shadow sets:

    m_b = metric(resampled outcomes, shadow draw b mod R)
    interval = [q_{(1−level)/2}, q_{(1+level)/2}] of {m_b}

Avg. Gap_b = ¼ Σ_{m ∈ UA,RA,TA,MIA} |m_b − m_b(θ_r)| is *paired*: θ_r's outcomes are resampled with
the same indices and the same shadow draw. Nothing here runs a network: the per-sample outcomes come
from the one evaluation pass (``mcu_dist.evaluate.point.evaluate_outcomes``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mcu_dist.evaluate.metrics import GAP_METRICS

_CHUNK = 200  # replicates resampled at a time (bounds memory at 200 x |D_test| indices)


@dataclass
class Outcomes:
    """Per-sample results of one model: correctness on D_r, D_f, D_test; MIA verdicts per shadow draw."""

    retain: torch.Tensor  # bool [|D_r|]
    forget: torch.Tensor  # bool [|D_f|]
    test: torch.Tensor  # bool [|D_test|]
    mia: list[torch.Tensor]  # R x bool [|D_f|]: True = called non-member; draw 0 is the headline's


def _resampled_means(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return values.double()[idx].mean(1) if values.numel() else torch.full((len(idx),), float("nan"))


def _metrics(o: Outcomes, idx: dict[str, torch.Tensor], replicate: torch.Tensor) -> dict[str, torch.Tensor]:
    mia = torch.stack([v.double() for v in o.mia])
    which = (replicate % len(mia)).unsqueeze(1)
    return {
        "UA": 100.0 - 100.0 * _resampled_means(o.forget, idx["forget"]),
        "RA": 100.0 * _resampled_means(o.retain, idx["retain"]),
        "TA": 100.0 * _resampled_means(o.test, idx["test"]),
        "MIA": 100.0 * mia[which, idx["forget"]].mean(1),
    }


def replicates(
    outcomes: Outcomes, reference: Outcomes | None = None, n: int = 1000, seed: int = 0
) -> dict[str, torch.Tensor]:
    """``{metric: tensor [n]}``: replicates of UA, RA, TA, MIA (and avg_gap, given θ_r's outcomes)."""
    g = torch.Generator().manual_seed(seed)
    sizes = {"retain": len(outcomes.retain), "forget": len(outcomes.forget), "test": len(outcomes.test)}
    out: dict[str, list[torch.Tensor]] = {k: [] for k in (*GAP_METRICS, "avg_gap")}
    for start in range(0, n, _CHUNK):
        b = min(_CHUNK, n - start)
        idx = {k: torch.randint(0, max(v, 1), (b, v), generator=g) for k, v in sizes.items()}
        replicate = torch.arange(start, start + b)
        mine = _metrics(outcomes, idx, replicate)
        for k in GAP_METRICS:
            out[k].append(mine[k])
        if reference is not None:
            ref = _metrics(reference, idx, replicate)
            out["avg_gap"].append(sum((mine[k] - ref[k]).abs() for k in GAP_METRICS) / len(GAP_METRICS))
    return {k: torch.cat(v) for k, v in out.items() if v}


def intervals(
    outcomes: Outcomes,
    reference: Outcomes | None = None,
    n: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """``{"UA_lo": ..., "UA_hi": ..., ...}``: each metric's percentile interval (none for n = 0)."""
    if n == 0:
        return {}
    lo, hi = (1 - level) / 2, (1 + level) / 2
    result = {}
    for k, values in replicates(outcomes, reference, n, seed).items():
        q = torch.quantile(values, torch.tensor([lo, hi], dtype=values.dtype)).tolist()
        result[f"{k}_lo"], result[f"{k}_hi"] = q
    return result
