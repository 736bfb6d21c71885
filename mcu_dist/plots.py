"""The path plot: what happens along θ(t), and why t* was chosen.

Top: UA, RA, TA, MIA against t (0 = original θ_o, 1 = pre-unlearned θ_p), each with the Retrain model's
value as a dashed line of the same colour and the baseline's own values (its BatchNorm statistics) marked
at t = 1. Bottom: gap_cal(t) = ½(|RA(t) − Cal_r| + |FA(t) − Cal_f|) on the grid and its shape-preserving
(PCHIP) interpolant, the t* window and t*. The effective region (points that beat the endpoint's
gap_cal) is shaded in both panels; it comes from the grid through the same PCHIP interpolant, so it never
appears where the grid has none.
"""

from __future__ import annotations

from pathlib import Path

from mcu_dist.evaluate.names import GAP_METRICS
from mcu_dist.store import atomic

MARKERS = ("o", "s", "^", "D")  # one per metric: coinciding metrics stay distinguishable


def plot_path(
    rows: list[dict],
    t_star: float,
    intervals: list[tuple[float, float]],
    retrain_row: dict | None,
    path: str | Path,
    title: str = "",
    *,
    baseline_row: dict | None = None,
    t_window: tuple[float, float] = (0.75, 1.0),
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.interpolate import PchipInterpolator

    ts = [r["t"] for r in rows]
    fig, (ax, axg) = plt.subplots(
        2, 1, figsize=(7.5, 6.2), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    for a in (ax, axg):
        for lo, hi in intervals:
            a.axvspan(lo, hi, color="tab:green", alpha=0.12, lw=0)
    for i, (metric, marker) in enumerate(zip(GAP_METRICS, MARKERS, strict=True)):
        color = f"C{i}"
        # hollow markers and a thin line: a metric that coincides with another stays visible under it
        ax.plot(
            ts,
            [r[metric] for r in rows],
            marker=marker,
            ms=5,
            mfc="none",
            lw=1.3,
            color=color,
            label=metric,
            zorder=3 + i,
        )
        if retrain_row is not None:
            ax.axhline(
                retrain_row[metric],
                color=color,
                ls=(i * 2, (4, 4)),
                lw=1.1,
                zorder=2,
                label=f"Retrain {metric} {retrain_row[metric]:.1f}",
            )
        if baseline_row is not None:
            ax.plot(
                [1.0],
                [baseline_row[metric]],
                marker="*",
                ms=11,
                color=color,
                ls="none",
                zorder=8,
                clip_on=False,
            )
    if baseline_row is not None:
        ax.plot([], [], marker="*", ms=9, color="grey", ls="none", label="baseline (own BN), t = 1")
    ax.axvline(t_star, color="k", ls="--", lw=1)
    ax.set_ylabel("%")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=3, loc="best", framealpha=0.85)

    gaps = [r["gap_cal"] for r in rows]
    axg.axvspan(
        *t_window, color="grey", alpha=0.12, lw=0, label=f"t* window [{t_window[0]:g}, {t_window[1]:g}]"
    )
    fine = np.linspace(0, 1, 201)
    order = np.argsort(ts)
    x, y = np.asarray(ts, float)[order], np.asarray(gaps, float)[order]
    if len(x) >= 2:
        axg.plot(fine, PchipInterpolator(x, y)(fine), color="C4", lw=1, alpha=0.7)
    axg.plot(ts, gaps, "o", ms=4, color="C4", label="gap_cal")
    axg.axvline(t_star, color="k", ls="--", lw=1, label=f"t* = {t_star:.2f}")
    axg.set_xlabel("t  (0 = original, 1 = pre-unlearned; green: effective region)")
    axg.set_ylabel("gap_cal")
    axg.set_xlim(0, 1.02)
    axg.legend(fontsize=7, loc="best")
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
