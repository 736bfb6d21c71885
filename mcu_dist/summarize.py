"""``python -m mcu_dist.summarize RUN_DIR...``: mean ± std over seeds of ``results.parquet``, as Markdown.

Rows keep the first run's order; a run folder is one seed of one scenario.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import pyarrow.parquet as pq

from mcu_dist.evaluate.names import GAP_METRICS

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
        out.append(entry)
    return out


def markdown(summary: list[dict]) -> str:
    lines = ["| model | UA | RA | TA | MIA | Avg. Gap | RTE (min) |", "|---|---|---|---|---|---|---|"]
    for e in summary:
        cells = [f"{e[m][0]:.2f} ± {e[m][1]:.2f}" for m in METRICS[:-1]] + [f"{e['RTE'][0]:.2f}"]
        lines.append(f"| {e['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


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
