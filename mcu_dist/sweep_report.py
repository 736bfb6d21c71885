"""The end of a sweep: the answer in the console, in the parent run's description and under its ``report/``.

Written for every sweep and ablation grid: the paper-style table (``report.md``, from the trials' MLflow
runs), ``best_config.yaml`` (a space file whose only point is the winner: ``python -m mcu_dist.sweep
--space best_config.yaml`` reruns it), ``trials.csv`` (every trial: params, metrics, status), and
``sweep.png`` (the objective against trial order and against each searched dimension: a scatter for a
numeric one, a box per value for a categorical one), plus ``pareto.png`` when the sweep is multi-objective.
Per baseline, the gain is baseline Avg. Gap − best MCU Avg. Gap (> 0: MCU moved closer to Retrain),
shown beside the controls of that trial: the baseline with BN re-estimated (+BN, the path's t = 1) and
the same selection on the untrained line (+line); a trial whose t* is 1 or whose effective region is
empty is marked "no path gain".
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import yaml

COLUMNS = ("avg_gap", "gain", "gap_cal", "UA", "RA", "TA", "MIA", "t_star", "rte_min")


def params_of(row: dict) -> dict[str, Any]:
    return {k[len("param.") :]: v for k, v in row.items() if k.startswith("param.")}


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def per_baseline(ok: list[dict], objective: str) -> list[tuple[str, float, dict]]:
    """For each baseline, its own Avg. Gap and the best trial wrapping it (``ok`` sorted best first)."""
    best: dict[str, dict] = {}
    for r in ok:
        # searched, else the first word of the trial's name (trial.trial_name: the θ_p it wrapped)
        named = (r.get("name") or "?").split(" · ")[0]
        best.setdefault(str(params_of(r).get("baseline", r.get("baseline", named))), r)
    return [(name, r.get("baseline_avg_gap"), r) for name, r in best.items()]


def console_table(rows: list[dict], objective: str, n: int = 5) -> str:
    """The top ``n`` trials of all, labelled, then baseline → best MCU per baseline."""
    ok = [r for r in rows if r.get(objective) is not None]
    lines = [
        f"Top {min(n, len(ok))} of {len(rows)} trials by {objective} (Avg. Gap to Retrain; lower is better):",
        f"  {'trial':<60}{objective:>9}{'gain':>8}{'UA':>7}{'RA':>7}{'TA':>7}{'MIA':>7}{'t*':>6}",
    ]
    for r in ok[:n]:
        lines.append(
            f"  {r.get('name') or r['trial_id']:<60.60}{r[objective]:9.3f}{r.get('gain') or 0:8.2f}"
            f"{r['UA']:7.1f}{r['RA']:7.1f}{r['TA']:7.1f}{r['MIA']:7.1f}{_t(r.get('t_star')):>6}"
        )
    failed = [r for r in rows if r.get(objective) is None]
    for r in failed:
        lines.append(f"  {r.get('name') or r['trial_id']:<60.60} failed: {r.get('error') or ''}"[:160])
    lines.append("Per baseline, Avg. Gap: baseline alone [+BN, +line] → best MCU trial (gain):")
    for name, base, r in per_baseline(ok, objective):
        controls = ", ".join(
            f"{label} {r[k]:.2f}"
            for label, k in (("+BN", "baseline_bn_avg_gap"), ("+line", "line_avg_gap"))
            if r.get(k) is not None
        )
        lines.append(
            f"  {name:<14}{base or float('nan'):8.2f} [{controls}] → {r['avg_gap']:7.2f}  "
            f"({base - r['avg_gap']:+.2f})  {r.get('name') or r['trial_id']}"
            + ("  no path gain" if r.get("path_gain") == 0.0 else "")
        )
    return "\n".join(lines)


def best_config(raw: dict, best: dict, name: str) -> dict:
    """A space file that reruns the winner: its values as one-choice dimensions, one sample."""
    out = {k: v for k, v in raw.items() if k not in ("search", "grid", "sweep")}
    fixed = dict(raw.get("fixed") or {})
    search = {}
    for key, value in params_of(best).items():
        if key == "seed":  # a grid key: every stage's seed
            fixed.update({f"seeds.{s}": value for s in ("split", "model", "unlearn", "eval")})
        else:
            search[key] = {"type": "categorical", "choices": [value]}
    sweep = dict(raw.get("sweep") or {})
    sweep.update({"name": f"{name}-best", "num_samples": 1, "multi_objective": False, "asha": False})
    sweep.pop("experiment", None)
    return {**out, "fixed": fixed, "search": search, "sweep": sweep}


def _t(t_star: float | None) -> str:
    """t*, or "-" for a trial with no path (a baseline-tuning trial of mcu_dist.tuned)."""
    return "-" if t_star is None else f"{t_star:.2f}"


def summary_markdown(rows: list[dict], objective: str, summary: dict, best: dict | None, n: int = 5) -> str:
    """The parent run's description: counts, the top-n table, per-baseline gains, the best config."""
    ok = [r for r in rows if r.get(objective) is not None]
    lines = [
        f"**{summary['completed']} of {summary['trials']} trials completed** ({summary['failed']} failed) in "
        f"{summary['wall_s']:.0f} s; objective **{objective}** (lower is better). "
        "The report is under Artifacts → `report/` "
        "(`report.md`, `sweep.png`, `best_config.yaml`, `trials.csv`).",
        "",
        f"| trial | {objective} | gain | UA | RA | TA | MIA | t* |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in ok[:n]:
        lines.append(
            f"| {r.get('name') or r['trial_id']} | {r[objective]:.3f} | {r.get('gain') or 0:+.2f} | "
            + " | ".join(f"{r[k]:.1f}" for k in ("UA", "RA", "TA", "MIA"))
            + f" | {_t(r.get('t_star'))} |"
        )
    lines += ["", "| baseline | Avg. Gap alone | best MCU | gain |", "|---|---|---|---|"]
    for name, base, r in per_baseline(ok, objective):
        lines.append(f"| {name} | {base:.2f} | {r['avg_gap']:.2f} | {base - r['avg_gap']:+.2f} |")
    if best is not None:
        lines += [
            "",
            "**Best config** (`report/best_config.yaml` reruns it): "
            + ", ".join(f"`{k}` = {_fmt(v)}" for k, v in params_of(best).items()),
        ]
    failed = [r for r in rows if r.get(objective) is None]
    if failed:
        lines += [
            "",
            "**Failed:** " + "; ".join(f"{r['trial_id']}: {(r.get('error') or '')[:200]}" for r in failed),
        ]
    return "\n".join(lines)


def sweep_plot(rows: list[dict], objective: str, out: Path) -> Path:
    """The objective against trial order and against each searched dimension."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r.get(objective) is not None]
    keys = sorted({k for r in ok for k in params_of(r)})
    cols = min(3, 1 + len(keys))
    nrows = -(-(1 + len(keys)) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.3 * nrows), squeeze=False)
    axes = axes.ravel()
    for ax in axes[1 + len(keys) :]:
        ax.set_visible(False)
    order = sorted(ok, key=lambda r: r.get("order", 0))
    ys = [r[objective] for r in order]
    ax = axes[0]
    ax.plot(range(1, len(ys) + 1), ys, "o", ms=4)
    ax.plot(range(1, len(ys) + 1), [min(ys[: i + 1]) for i in range(len(ys))], "-", lw=1, label="best so far")
    ax.set_xlabel("trial (in order of finishing)")
    ax.set_ylabel(f"{objective} (lower is better)")
    ax.legend(fontsize=7)
    for ax, key in zip(axes[1 : 1 + len(keys)], keys, strict=True):
        have = [r for r in ok if params_of(r).get(key) is not None]
        values = [params_of(r)[key] for r in have]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            ax.scatter(values, [r[objective] for r in have], s=14)
        else:
            names = sorted({str(v) for v in values})
            ax.boxplot(
                [[r[objective] for r in have if str(params_of(r)[key]) == n] for n in names],
                tick_labels=names,
            )
            ax.tick_params(axis="x", labelrotation=20)
        ax.set_xlabel(key)
    fig.tight_layout()
    path = out / "sweep.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_report(
    tracker, parent: str, rows: list[dict], raw: dict, objective: str, name: str, out: Path
) -> Path:
    """Everything above into ``out`` and the parent run's ``report/``; returns ``out``."""
    from mcu_dist.report import trial_records
    from mcu_dist.report import write_report as paper_tables

    out.mkdir(parents=True, exist_ok=True)
    ok = [r for r in rows if r.get(objective) is not None]
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    if ok:
        (out / "best_config.yaml").write_text(yaml.safe_dump(best_config(raw, ok[0], name), sort_keys=False))
        sweep_plot(rows, objective, out)
        children = tracker.children(parent)
        if trial_records(children):  # a baseline-tuning sweep (mcu_dist.tuned) has no path rows
            paper_tables(tracker, children, out)
    tracker.log_artifacts(parent, out, "report")
    return out
