"""Path plots: UA, RA, TA, MIA against t, the effective region shaded, t* marked."""

from __future__ import annotations

from pathlib import Path

from mcu_dist.evaluate.names import GAP_METRICS
from mcu_dist.store import atomic


def plot_path(
    rows: list[dict],
    t_star: float,
    intervals: list[tuple[float, float]],
    retrain_row: dict | None,
    path: str | Path,
    title: str = "",
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ts = [r["t"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for lo, hi in intervals:
        ax.axvspan(lo, hi, color="tab:green", alpha=0.12, lw=0)
    for i, metric in enumerate(GAP_METRICS):
        color = f"C{i}"
        ax.plot(ts, [r[metric] for r in rows], "o-", ms=3, color=color, label=metric)
        if retrain_row is not None:
            ax.axhline(retrain_row[metric], color=color, ls=":", lw=1)
    ax.axvline(t_star, color="k", ls="--", lw=1, label=f"t* = {t_star:.2f}")
    ax.set_xlabel("t  (0 = original, 1 = pre-unlearned)")
    ax.set_ylabel("%")
    ax.set_xlim(0, 1)
    ax.set_title(title + ("  (dotted: Retrain; shaded: effective region)" if retrain_row else ""), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
