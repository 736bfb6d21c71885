"""``python -m mcu_dist.summarize RUN_DIR...``: mean ± std over seeds of ``results.parquet``, as Markdown.

Rows keep the first run's order; a run folder is one seed of one scenario. Each cell also shows the
seed mean's 95% interval (each run's bootstrap interval, combined as ``mcu_dist.report`` does), and
MCU rows the share of parameters their mask selected.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

from mcu_dist.evaluate.names import GAP_METRICS
from mcu_dist.report import pooled_interval

METRICS = (*GAP_METRICS, "avg_gap", "RTE")


def summarize(run_dirs: list[Path]) -> list[dict]:
    runs = [pq.read_table(Path(d) / "results.parquet").to_pylist() for d in run_dirs]
    order = [r["model"] for r in runs[0]]
    out = []
    for model in order:
        rows = [r for run in runs for r in run if r["model"] == model]
        entry = {"model": model, "n": len(rows)}
        for m in METRICS:
            values = [r[m] for r in rows if r.get(m) is not None]
            entry[m] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0)
            if m != "RTE":
                entry[f"{m}_ci"] = pooled_interval(rows, m)
        fractions = [r["mask_fraction"] for r in rows if r.get("mask_fraction") is not None]
        entry["mask_fraction"] = statistics.fmean(fractions) if fractions else None
        out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    lines = [
        "| model | UA | RA | TA | MIA | Avg. Gap | RTE (min) | mask % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for e in summary:
        cells = [_cell(e, m) for m in METRICS[:-1]] + [f"{e['RTE'][0]:.2f}"]
        sel = f"{100 * e['mask_fraction']:.1f}" if e["mask_fraction"] is not None else ""
        lines.append(f"| {e['model']} | " + " | ".join(cells) + f" | {sel} |")
    return "\n".join(lines)


def _cell(e: dict, m: str) -> str:
    lo, hi = e[f"{m}_ci"]
    return f"{e[m][0]:.2f} ± {e[m][1]:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if lo == lo else "")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m mcu_dist.summarize", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path)
    args = p.parse_args(argv)
    missing = [str(d) for d in args.runs if not (d / "results.parquet").is_file()]
    if missing:
        print(
            f"error: runs: {missing[0]} has no results.parquet; "
            "allowed: run folders of python -m mcu_dist.run",
            file=sys.stderr,
        )
        return 2
    print(markdown(summarize(args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
