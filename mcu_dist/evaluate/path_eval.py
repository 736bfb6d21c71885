"""Path evaluation: at each t of the grid, BN recalibration at θ(t), then every metric in one pass.

The path table (one row per t) is the main artifact of a run; it is written as Parquet.
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from mcu_dist.evaluate.bn import calibration_positions, recalibrate_bn
from mcu_dist.evaluate.metrics import avg_gap
from mcu_dist.evaluate.point import evaluate_model
from mcu_dist.evaluate.selection import gap_cal
from mcu_dist.lab import Lab
from mcu_dist.path.beta import Calibration
from mcu_dist.path.bezier import BezierCurve


def model_at(curve: BezierCurve, t: float, lab: Lab, calib: torch.Tensor):
    """θ(t) as a plain model with BN statistics re-estimated at θ(t)."""
    return recalibrate_bn(curve.materialize(t), lab, calib, lab.cfg.eval.batch_size)


def evaluate_path(curve: BezierCurve, lab: Lab, grid: list[float], cal: Calibration,
                  retrain_row: dict[str, float] | None) -> list[dict]:
    calib = calibration_positions(lab, lab.cfg.eval, lab.cfg.seeds.eval)
    rows = []
    for t in grid:
        start = time.perf_counter()
        row = {"t": float(t), **evaluate_model(model_at(curve, t, lab, calib), lab)}
        row["gap_cal"] = gap_cal(row["RA"], row["FA"], cal)
        if retrain_row is not None:
            row["avg_gap"] = avg_gap(row, retrain_row)
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
    return rows


def write_table(rows: list[dict], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """Rows of scalars -> Parquet, atomically; a key missing from some rows is null there."""
    keys = list(dict.fromkeys(k for row in rows for k in row))
    table = pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in rows])
    if metadata:
        table = table.replace_schema_metadata({k: str(v) for k, v in metadata.items()})
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)
