"""``python -m mcu_dist.report --experiment NAME``: from MLflow to the paper's tables and plots.

Rows per forgetting scenario: Original (θ_o, with its training accuracy on all of D, when the trials
evaluated it), Retrain, each baseline, its controls <baseline>+BN (θ_p with BN
re-estimated), <baseline>+line (the same t* selection on the untrained straight line; their RTE is
the baseline's) and <baseline>+budget (the compute-matched control: the baseline continued from θ_p
for the curve's epochs), and baseline+<path> per β schedule, named as in ``python -m mcu_dist.run``
(mcu: fixed β, mcu_beta: adaptive_step, mcu_<schedule> otherwise), marked "no path gain in k/n" when
k of its n seeds chose t* = 1 or had an empty effective region (``no_path_gain``); columns UA, RA,
TA, MIA-Efficacy, Avg. Gap, RTE as mean ± std over seeds with a 95% interval of the seed mean, the
mask's selected fraction and the β actually used. The interval combines each seed's bootstrap
interval (forget/test samples, MIA shadow draws) in quadrature:

    lo = mean − √(Σ_s (x_s − lo_s)²) / S,   hi = mean + √(Σ_s (hi_s − x_s)²) / S

(the sampling uncertainty of the mean over S seeds; ± std is the spread between seeds). A cell is
every trial that differs only in its seed; when a grid varies more than the scenario, the baseline
and the β schedule (curve order, k, ...), those values are part of the row's name, k with the
fraction the mask actually selected (a size-matched random control that could only pick the gradient
mask's own tensors is noted). Written
as Markdown, CSV and Parquet with plots (paths of each cell overlaid with their effective regions,
Avg. Gap by curve order / k / k_r / β schedule, the Avg. Gap–RTE Pareto front), and logged to MLflow
as artifacts of the experiment's sweep run.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from mcu_dist import fs
from mcu_dist.config import ConfigError
from mcu_dist.evaluate.names import GAP_METRICS
from mcu_dist.path.beta import variant_name
from mcu_dist.services import ServiceError, redact, writable_dir
from mcu_dist.store import atomic, write_table, write_text

METRICS = (*GAP_METRICS, "avg_gap", "rte_min")
WITH_INTERVALS = (*GAP_METRICS, "avg_gap")
EXTRAS = ("mask_fraction", "mask_overlap", "beta_0", "beta_low", "beta_high", "beta_fixed", "beta_other")
# trial metric prefix -> row suffix; +budget is the compute-matched control
CONTROLS = {"baseline_bn": "+BN", "line": "+line", "budget": "+budget"}
SWEPT = (
    "mcu.curve_order",
    "mcu.k",
    "mcu.k_r",
    "mcu.mask",
    "mcu.mask_mode",
    "mcu.lr",
    "mcu.beta",
    "mcu.epochs",
    "eval.t_star_range",
)
MASK_KEYS = ("mcu.k", "mcu.k_r", "mcu.mask", "mcu.mask_mode")


def _method(params: dict) -> str:
    """The baseline's name; ``ga (tuned)`` when its hyperparameters came from ``mcu_dist.tuned``."""
    if "baseline" in params:  # the θ_p the trial wrapped (trial.trial_params), the user's endpoint included
        method = params["baseline"]
    elif "search.baseline" in params:
        method = params["search.baseline"]
    else:
        methods = json.loads(params.get("baselines.methods", "[]"))
        method = methods[0] if methods else "endpoint"
    return f"{method} (tuned)" if method in json.loads(params.get("baselines.tuned", "[]")) else method


def trial_records(runs: list) -> list[dict[str, Any]]:
    """One flat record per finished trial run: scenario, method, variant, seed, varying params, metrics."""
    out = []
    for r in runs:
        if r.info.status != "FINISHED" or "avg_gap" not in r.data.metrics:
            continue
        if r.data.tags.get("mcu.kind") == "baseline_tuning":  # stage 1 of mcu_dist.tuned: no path, no row
            continue
        p, m = r.data.params, r.data.metrics
        schedule = json.loads(p.get("mcu.beta_schedule", '["adaptive_step"]'))[0]
        rec = {
            "run_id": r.info.run_id,
            "scenario": p.get("forget.spec", "?"),
            "method": _method(p),
            "variant": variant_name(schedule),
            "schedule": schedule,
            "seed": int(p.get("seeds.unlearn", 0)),
            "effective_region": json.loads(r.data.tags.get("mcu.effective_region", "[]")),
        }
        rec.update({k: _num(p.get(k)) for k in SWEPT if k in p})
        bounds = [f"{k}_{side}" for k in WITH_INTERVALS for side in ("lo", "hi")]
        rec.update(
            {k: m.get(k) for k in METRICS + EXTRAS + ("t_star", "rte_curve_min", "rte_eval_min", "path_gain")}
        )
        rec.update({k: m.get(k) for k in bounds})
        rec["baseline"] = {k: m.get(f"baseline/{k}") for k in (*GAP_METRICS, *bounds)}
        rec["baseline"]["avg_gap"] = m.get("baseline_avg_gap")
        rec["baseline"]["rte_min"] = m["rte_min"] - m.get("rte_curve_min", 0) - m.get("rte_eval_min", 0)
        for control in CONTROLS:  # <method>+BN, +line, +budget: present when the trial evaluated them
            if m.get(f"{control}_avg_gap") is not None:
                rec[control] = {k: m.get(f"{control}/{k}") for k in (*GAP_METRICS, *bounds)}
                rte = m.get(f"{control}/rte_min", rec["baseline"]["rte_min"])
                rec[control].update({"avg_gap": m[f"{control}_avg_gap"], "rte_min": rte})
        if m.get("original/avg_gap") is not None:  # the trial evaluated θ_o (its training accuracy too)
            rec["original"] = {k: m.get(f"original/{k}") for k in (*METRICS, *bounds, "train_acc")}
        rec["retrain"] = {k: m.get(f"retrain/{k}") for k in (*GAP_METRICS, *bounds)}
        rec["retrain"].update({"avg_gap": 0.0, "rte_min": m.get("retrain_rte_min")})
        out.append(rec)
    return out


def _num(v: str | None) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


def varying(records: list[dict]) -> list[str]:
    return [k for k in SWEPT if len({r.get(k) for r in records}) > 1]


def _agg(values: list[float | None]) -> tuple[float, float, int]:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan"), 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def table(records: list[dict]) -> list[dict[str, Any]]:
    """The paper-style rows, mean ± std over seeds."""
    extra = varying(records)
    rows = []
    for scenario in sorted({r["scenario"] for r in records}):
        recs = [r for r in records if r["scenario"] == scenario]
        originals = list({r["seed"]: r["original"] for r in recs if "original" in r}.values())
        if originals:
            rows.append(_row(scenario, "Original", originals))
            rows[-1]["train_acc"] = _agg([o.get("train_acc") for o in originals])[0]
        by_seed = {r["seed"]: r["retrain"] for r in recs}
        rows.append(_row(scenario, "Retrain", list(by_seed.values())))
        for method in sorted({r["method"] for r in recs}):
            mine = [r for r in recs if r["method"] == method]
            base_by_seed = {r["seed"]: r["baseline"] for r in mine}
            rows.append(_row(scenario, method, list(base_by_seed.values())))
            for control, suffix in CONTROLS.items():
                by_seed = {r["seed"]: r[control] for r in mine if control in r}
                if by_seed:
                    rows.append(_row(scenario, method + suffix, list(by_seed.values())))
            cells: dict[tuple, list[dict]] = defaultdict(list)
            for r in mine:
                cells[(r["variant"], *(r.get(k) for k in extra))].append(r)
            for key in sorted(cells, key=str):
                label = f"{method}+{key[0]}" + _label(dict(zip(extra, key[1:], strict=True)), cells[key])
                row = _row(scenario, label, cells[key])
                row["no_path_gain"] = sum(1 for r in cells[key] if r.get("path_gain") == 0.0)
                rows.append(row)
    return rows


def _label(values: dict[str, Any], recs: list[dict]) -> str:
    """`` k=0.1 mask=random_matched (sel 24%)``: the varying values, and when the mask varies, the
    fraction it actually selected (mean over the cell's seeds)."""
    text = "".join(
        f" {k.split('.')[-1]}={v:g}" if isinstance(v, float) else f" {k.split('.')[-1]}={v}"
        for k, v in values.items()
    )
    selected = [r["mask_fraction"] for r in recs if r.get("mask_fraction") is not None]
    if any(k in MASK_KEYS for k in values) and selected:
        text += f" (sel {100 * statistics.fmean(selected):.0f}%)"
    return text


def pooled_interval(recs: list[dict], k: str) -> tuple[float, float]:
    """The seed mean's interval from each seed's (x, lo, hi), half-widths combined in quadrature."""
    trip = [(r[k], r[f"{k}_lo"], r[f"{k}_hi"]) for r in recs if r.get(f"{k}_lo") is not None]
    if not trip or len(trip) < len([r for r in recs if r.get(k) is not None]):
        return float("nan"), float("nan")
    mean, s = statistics.fmean(x for x, _, _ in trip), len(trip)
    below = math.sqrt(sum(max(x - lo, 0.0) ** 2 for x, lo, _ in trip)) / s
    above = math.sqrt(sum(max(hi - x, 0.0) ** 2 for x, _, hi in trip)) / s
    return mean - below, mean + above


def _row(scenario: str, name: str, recs: list[dict]) -> dict[str, Any]:
    row: dict[str, Any] = {"scenario": scenario, "model": name}
    for k in METRICS:
        mean, std, n = _agg([r.get(k) for r in recs])
        row[k], row[f"{k}_std"], row["n"] = mean, std, max(n, row.get("n", 0))
    for k in WITH_INTERVALS:
        row[f"{k}_lo"], row[f"{k}_hi"] = pooled_interval(recs, k)
    for k in EXTRAS:
        row[k] = _agg([r.get(k) for r in recs])[0]
    return row


def markdown(rows: list[dict]) -> str:
    lines = []
    for scenario in dict.fromkeys(r["scenario"] for r in rows):
        lines += [
            f"### {scenario}",
            "",
            "| model | UA | RA | TA | MIA | Avg. Gap | RTE (min) | mask % | β = 0 / low / high (% steps) "
            "| seeds | note |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in rows if r["scenario"] == scenario):
            cells = [_cell(r, k) for k in METRICS[:-1]]
            notes = [f"no path gain in {r['no_path_gain']}/{r['n']} seeds"] if r.get("no_path_gain") else []
            if r.get("mask_overlap") == 1.0:  # a size-matched random control with no other choice
                notes.append("random control = the gradient mask")
            if r.get("train_acc") is not None:
                notes.append(f"training accuracy {r['train_acc']:.1f}%")
            note = "; ".join(notes)
            lines.append(
                f"| {r['model']} | "
                + " | ".join(cells)
                + f" | {r['rte_min']:.2f} | {_pct(r['mask_fraction'])} | "
                f"{_betas(r)} | {r['n']} | {note} |"
            )
        lines.append("")
    return "\n".join(lines)


def _cell(r: dict, k: str) -> str:
    text = f"{r[k]:.2f} ± {r[k + '_std']:.2f}"
    lo, hi = r.get(f"{k}_lo"), r.get(f"{k}_hi")
    return text + (f" [{lo:.2f}, {hi:.2f}]" if lo == lo and lo is not None else "")


def _pct(v: float | None) -> str:
    return f"{100 * v:.1f}" if v is not None and v == v else ""


def _betas(r: dict) -> str:
    if r.get("beta_fixed") == r.get("beta_fixed") and r.get("beta_fixed") is not None:
        return f"fixed β {_pct(r['beta_fixed'])}, β = 0 {_pct(r['beta_0'])}"
    if r.get("beta_0") is None or r["beta_0"] != r["beta_0"]:
        return ""
    return " / ".join(_pct(r.get(k)) for k in ("beta_0", "beta_low", "beta_high"))


def plots(records: list[dict], histories: dict[str, dict[str, list]], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["scenario"], r["method"], r["variant"])].append(r)
    keys = sorted(groups, key=str)
    fig, axes = plt.subplots(len(keys), 1, figsize=(7, 2.6 * len(keys)), squeeze=False)
    for ax, key in zip(axes[:, 0], keys, strict=True):
        for i, r in enumerate(groups[key]):
            h = histories[r["run_id"]]
            for t in r["effective_region"]:
                ax.axvspan(t - 0.02, t + 0.02, color="tab:green", alpha=0.06, lw=0)
            ax.plot(h["t"], h["UA"], color="C0", alpha=0.8, label="UA" if i == 0 else None)
            ax.plot(h["t"], h["RA"], color="C1", alpha=0.8, label="RA" if i == 0 else None)
            ax.axhline(r["retrain"]["UA"], color="C0", ls=":", lw=1)
        ax.set_title(" / ".join(key), fontsize=9)
        ax.set_xlim(0, 1)
        ax.legend(fontsize=7)
    axes[-1, 0].set_xlabel("t")
    fig.tight_layout()
    made.append(_save(fig, out / "paths.png"))
    for param in ("mcu.curve_order", "mcu.k", "mcu.k_r", "schedule"):
        values = sorted({r.get(param) for r in records if r.get(param) is not None}, key=str)
        if len(values) < 2:
            continue
        if param in ("mcu.k", "mcu.k_r"):  # the axis is what the mask selected, not what k asked for
            made.append(_by_selected_fraction(records, param, out))
            continue
        fig, ax = plt.subplots(figsize=(5, 3.2))
        if len(values) > 6 and all(isinstance(v, float) for v in values):  # continuous: one dot per trial
            have = [r for r in records if r.get(param) is not None]
            ax.scatter([r[param] for r in have], [r["avg_gap"] for r in have], s=14)
        else:
            data = [[r["avg_gap"] for r in records if r.get(param) == v] for v in values]
            ax.boxplot(data, tick_labels=[str(v) for v in values])
        ax.set_xlabel(param)
        ax.set_ylabel("Avg. Gap (lower is better)")
        fig.tight_layout()
        made.append(_save(fig, out / f"avg_gap_by_{param.split('.')[-1]}.png"))
    fig, ax = plt.subplots(figsize=(5, 3.6))
    xs, ys = [r["rte_min"] for r in records], [r["avg_gap"] for r in records]
    ax.scatter(xs, ys, s=14, alpha=0.6, label="trials")
    front = sorted(
        (x, y)
        for x, y in zip(xs, ys, strict=True)
        if not any(a <= x and b <= y and (a < x or b < y) for a, b in zip(xs, ys, strict=True))
    )
    ax.plot([f[0] for f in front], [f[1] for f in front], "r.-", label="Pareto front")
    ax.set_xlabel("RTE (min)")
    ax.set_ylabel("Avg. Gap")
    ax.legend(fontsize=8)
    fig.tight_layout()
    made.append(_save(fig, out / "pareto.png"))
    return made


def _by_selected_fraction(records: list[dict], param: str, out: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for v in sorted({r[param] for r in records if r.get(param) is not None}):
        mine = [r for r in records if r.get(param) == v and r.get("mask_fraction") is not None]
        ax.scatter(
            [100 * r["mask_fraction"] for r in mine],
            [r["avg_gap"] for r in mine],
            s=16,
            label=f"{param}={v:g}",
        )
    ax.set_xlabel("parameters selected by the mask (%)")
    ax.set_ylabel("Avg. Gap (lower is better)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, out / f"avg_gap_by_{param.split('.')[-1]}.png")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    with atomic(path) as tmp:
        fig.savefig(tmp, dpi=100)
    plt.close(fig)
    return path


def write_report(tracker, runs: list, out: Path) -> str:
    """The tables (Markdown, CSV, Parquet) and plots of these trial runs into ``out``; returns the Markdown.
    A path's t comes from its metrics' step (``step = round(100·t)``)."""
    records = trial_records(runs)
    out.mkdir(parents=True, exist_ok=True)
    rows = table(records)
    text = markdown(rows)
    write_text(out / "report.md", text)
    write_table(rows, out / "report.parquet")
    csv_text = io.StringIO()
    # rows differ in their keys (e.g. a no-path gain only where a path exists): every key is a column
    writer = csv.DictWriter(csv_text, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "report.csv", csv_text.getvalue())
    histories = {}
    for r in records:
        series = {
            k: sorted(tracker.client.get_metric_history(r["run_id"], f"path/{k}"), key=lambda m: m.step)
            for k in ("UA", "RA")
        }
        histories[r["run_id"]] = {
            "t": [m.step / 100 for m in series["UA"]],
            **{k: [m.value for m in v] for k, v in series.items()},
        }
    plots(records, histories, out)
    return text


def main(argv: list[str] | None = None) -> int:
    from mcu_dist.tracking import KIND_TAG, PARENT_TAG, Tracker

    p = argparse.ArgumentParser(prog="python -m mcu_dist.report", description=__doc__.splitlines()[0])
    p.add_argument("--experiment", required=True, help="MLflow experiment (the sweep or grid name)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, made absolute)")
    p.add_argument("--out", default="report", help="folder for report.md/.csv/.parquet and the plots")
    args = p.parse_args(argv)
    try:
        if not fs.is_remote(args.out):
            writable_dir(args.out, "--out")
        tracker = Tracker(args.tracking_uri, args.experiment)
        runs = tracker.client.search_runs([tracker.experiment_id], max_results=50000)
    except ServiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        print(
            f"error: --tracking-uri: cannot read {redact(args.tracking_uri or 'sqlite:///mlflow.db')} "
            f"({type(e).__name__}); allowed: a reachable MLflow store",
            file=sys.stderr,
        )
        return 2
    records = [r for r in runs if PARENT_TAG in r.data.tags]
    if not trial_records(records):
        print(
            f"error: --experiment: {args.experiment!r} has no finished trial runs; allowed: an experiment "
            "written by python -m mcu_dist.sweep or mcu_dist.ablate",
            file=sys.stderr,
        )
        return 2
    sweeps = [r for r in runs if r.data.tags.get(KIND_TAG) == "sweep"]
    with fs.staged(args.out) as out:  # a URI gets the finished report's files
        text = write_report(tracker, records, out)
        if sweeps:
            tracker.log_artifacts(sweeps[0].info.run_id, out, "report")
    print(text)
    print(
        f"report written to {args.out}/"
        + (f" and logged to MLflow run {sweeps[0].info.run_id}" if sweeps else "")
    )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
