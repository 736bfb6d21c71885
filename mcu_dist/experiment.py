"""One experiment without Ray Tune: Original, Retrain, each baseline, baseline+MCU, baseline+MCU-β.

Comparisons: the baseline row is θ_p as the baseline produced it (its own BN buffers); the MCU rows
are θ(t*) with BN recalibrated at t*. So that a gain is attributed honestly, two controls sit beside
each baseline: ``<baseline>+BN`` (θ_p with BN re-estimated on the same BN set: the path's t = 1) and,
when paths run and ``eval.line_control`` is on, ``<baseline>+line`` (the same t* selection on the
untrained straight line θ_o -> θ_p). Each MCU row carries its Avg. Gap gain over all three
(``gain_vs_baseline``, ``gain_vs_bn``, ``gain_vs_line``; positive: MCU is closer to θ_r), whether the
path gained anything at all (``path_gain``: t* < 1 and a non-empty effective region) and its
``selection_regret``. RTE is in minutes; an MCU row's RTE is the total (baseline + curve training +
path evaluation) with the parts beside it.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from mcu_dist import fs
from mcu_dist.config import ExperimentConfig, to_yaml
from mcu_dist.data import write_manifest
from mcu_dist.evaluate.bootstrap import Outcomes, intervals
from mcu_dist.evaluate.metrics import avg_gap, training_accuracy
from mcu_dist.evaluate.mia import FEATURES
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.lab import Lab
from mcu_dist.path.beta import variant_name
from mcu_dist.path.mask import Mask
from mcu_dist.pipeline import PathResult, Selection, bn_control, line_control, run_path
from mcu_dist.references import baseline_model, endpoints, has_budget_control, prepare_references
from mcu_dist.store import key_hash, write_table, write_text
from mcu_dist.train.mcu import retain_prime_record
from mcu_dist.validation import validate


@dataclass
class ExperimentResult:
    rows: list[dict]
    paths: dict[str, PathResult]
    out_dir: Path | None
    mask: Mask | None
    lines: dict[str, Selection] = field(default_factory=dict)  # <baseline>+line controls, by baseline


def curve_run_name(cfg: ExperimentConfig, lab: Lab, key: str) -> str:
    """A stable name per (config, path): a restarted driver finds its Ray Train checkpoints again."""
    fields = {
        "config": {k: v for k, v in cfg.flat().items() if not k.startswith(("scale.", "out"))},
        "dataset": lab.bundle.dataset_id,
        "forget": lab.splits.manifest_hash,
        "path": key,
    }
    return f"curve-{key.replace('+', '-')}-{key_hash(fields)[:12]}"


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, log=print) -> ExperimentResult:
    validate(cfg)
    if cfg.scale.distributed:  # placement is checked before any compute
        from mcu_dist.train.distributed import connect

        connect(cfg)
    lab = Lab.build(cfg)
    log(
        f"data {lab.bundle.dataset_id}: |D_f| = {len(lab.splits.forget)}, |D_r| = {len(lab.splits.retain)}, "
        f"|D_test| = {len(lab.splits.test_eval)}; forget manifest {lab.splits.manifest_hash[:12]}"
    )
    log(lab.recipe.describe())
    # the references check the mask before θ_r is trained; the run folder exists only after that
    refs = prepare_references(lab, mask=bool(cfg.mcu.beta_schedule))
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_text(out / "config.yaml", to_yaml(cfg))
        write_manifest(lab.bundle, lab.splits, out / "forget_manifest.parquet", retain_prime_record(lab))
    original, retrain_row, cal, mask = refs.original, refs.retrain_row, refs.cal, refs.mask

    def with_intervals(row: dict, outcomes: Outcomes) -> dict:
        start = time.perf_counter()
        bounds = intervals(
            outcomes, refs.retrain_outcomes, cfg.eval.bootstrap, cfg.eval.ci_level, cfg.seeds.eval
        )
        return {**row, **bounds, "ci_s": row.get("ci_s", 0.0) + time.perf_counter() - start}

    def scored(model) -> dict:
        return with_intervals(
            *evaluate_outcomes(model, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws)
        )

    rows = [
        {
            "model": "Original",
            **scored(original),
            "RTE": refs.original_seconds / 60,
            "recipe": lab.recipe.name,
        },
        {
            "model": "Retrain",
            **with_intervals(retrain_row, refs.retrain_outcomes),
            "RTE": refs.retrain_seconds / 60,
        },
    ]
    log(f"calibration targets: Cal_r = {cal.cal_r:.2f}, Cal_f = {cal.cal_f:.2f}")
    if mask is not None:
        log(
            f"mask {mask.sha256[:12]} ({mask.kind}, {mask.mode}, k = {mask.k}): "
            f"{len(mask.selected)} tensors, {mask.selected_params}/{mask.total_params} parameters = "
            f"{100 * mask.fraction:.1f}% selected"
            + ("" if mask.overlap is None else f"; {100 * mask.overlap:.0f}% shared with the gradient mask")
        )
    paths: dict[str, PathResult] = {}
    lines: dict[str, Selection] = {}
    for name, (endpoint, seconds) in endpoints(lab, original).items():
        rows.append({"model": name, **scored(endpoint), "RTE": seconds / 60})
        baseline_row = rows[-1]
        bn_row = with_intervals(*bn_control(lab, endpoint))
        rows.append({"model": f"{name}+BN", **bn_row, "RTE": seconds / 60})
        if cfg.mcu.beta_schedule and cfg.eval.line_control:
            line = lines[name] = line_control(lab, original, endpoint, cal, retrain_row)
            rows.append(
                {
                    "model": f"{name}+line",
                    **with_intervals(line.row, line.outcomes),
                    "t_star": line.t_star,
                    "region_size": len(line.effective_region),
                    "RTE": (seconds + line.seconds) / 60,
                }
            )
        if cfg.baselines.budget_control and cfg.mcu.beta_schedule and has_budget_control(name):
            continued, total = baseline_model(lab, name, original, more_epochs=cfg.mcu.epochs)
            rows.append(
                {"model": f"{name}+budget", **scored(continued), "RTE": total / 60, "RTE_base": seconds / 60}
            )
            log(f"{name}+budget: {name} continued from θ_p for {cfg.mcu.epochs} epochs (MCU's curve budget)")
        for schedule in cfg.mcu.beta_schedule:
            key = f"{name}+{variant_name(schedule)}"
            result = run_path(
                lab,
                original,
                endpoint,
                schedule,
                mask,
                cal,
                retrain_row,
                out / "paths" / key if out is not None else None,
                curve_run_name(cfg, lab, key),
                plot={"baseline_row": baseline_row},
            )
            paths[key] = result
            rows.append(
                {
                    "model": key,
                    **with_intervals(result.row, result.outcomes),
                    "t_star": result.t_star,
                    "region_size": len(result.effective_region),
                    **mask.summary(),
                    "RTE": (seconds + result.seconds["curve"] + result.seconds["path_eval"]) / 60,
                    "RTE_base": seconds / 60,
                    "RTE_curve": result.seconds["curve"] / 60,
                    "RTE_eval": result.seconds["path_eval"] / 60,
                }
            )
            log(
                f"{key}: t* = {result.t_star:.2f}, effective region {len(result.effective_region)}/"
                f"{len(result.path_table)} grid points, Avg. Gap {result.row['avg_gap']:.2f}"
                + ("" if result.row["path_gain"] else " (no path gain)")
            )
    for row in rows:
        row["avg_gap"] = avg_gap(row, retrain_row)
    rows[0]["train_acc"] = training_accuracy(rows[0], len(lab.splits.forget), len(lab.splits.retain))
    add_gains(rows, paths)
    ci_s, eval_s = sum(r.get("ci_s", 0.0) for r in rows), sum(r.get("RTE_eval", 0.0) * 60 for r in rows)
    log(
        f"intervals ({cfg.eval.bootstrap} replicates, {cfg.eval.shadow_draws} shadow draws) cost "
        f"{ci_s:.1f} s for {len(rows)} rows; path evaluation took {eval_s:.1f} s"
    )
    if out is not None:
        write_table(
            rows,
            out / "results.parquet",
            {"dataset_id": lab.bundle.dataset_id, "forget_sha256": lab.splits.manifest_hash},
        )
    return ExperimentResult(rows, paths, out, mask, lines)


def add_gains(rows: list[dict], paths: dict[str, PathResult]) -> None:
    """Each MCU row's Avg. Gap gain over its baseline, baseline+BN and baseline+line (when present)."""
    by_name = {r["model"]: r for r in rows}
    for key in paths:
        base = key.rsplit("+", 1)[0]
        row = by_name[key]
        for suffix, col in (
            ("", "gain_vs_baseline"),
            ("+BN", "gain_vs_bn"),
            ("+line", "gain_vs_line"),
            ("+budget", "gain_vs_budget"),
        ):
            if base + suffix in by_name:
                row[col] = by_name[base + suffix]["avg_gap"] - row["avg_gap"]


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'model':<24}{'UA':>8}{'RA':>8}{'TA':>8}{'MIA':>8}{'AvgGap':>8}{'95% interval':>16}"
        f"{'RTE(min)':>10}{'t*':>6}{'mask%':>7}{'vs base':>9}{'vs +BN':>8}{'vs +line':>9}{'vs +budget':>11}"
        f"{'regret':>8}  note"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = [f"{r['t_star']:.2f}" if "t_star" in r else ""]
        cells.append(f"{100 * r['mask_fraction']:.1f}" if "mask_fraction" in r else "")
        cells.append(f"[{r['avg_gap_lo']:.2f}, {r['avg_gap_hi']:.2f}]" if "avg_gap_lo" in r else "")
        cells += [
            f"{r[k]:+.2f}" if k in r else ""
            for k in ("gain_vs_baseline", "gain_vs_bn", "gain_vs_line", "gain_vs_budget")
        ]
        cells.append(f"{r['selection_regret']:.2f}" if "selection_regret" in r else "")
        note = "no path gain" if r.get("path_gain") == 0.0 else ""
        lines.append(
            f"{r['model']:<24}{r['UA']:8.2f}{r['RA']:8.2f}{r['TA']:8.2f}{r['MIA']:8.2f}"
            f"{r['avg_gap']:8.2f}{cells[2]:>16}{r['RTE']:10.3f}{cells[0]:>6}{cells[1]:>7}{cells[3]:>9}"
            f"{cells[4]:>8}{cells[5]:>9}{cells[6]:>11}{cells[7]:>8}  {note}".rstrip()
        )
    if "train_acc" in rows[0]:
        lines.append(
            f"Original (reference recipe {rows[0].get('recipe', '?')}): training accuracy "
            f"{rows[0]['train_acc']:.2f}% on all of D, test accuracy {rows[0]['TA']:.2f}% (TA: the remaining "
            "classes when class-wise)"
        )
    lines.append(
        "vs base / +BN / +line: Avg. Gap gain of the MCU row over the baseline as produced, over θ_p with BN "
        "re-estimated (the path's t = 1), and over the same selection on the untrained line (> 0: MCU closer "
        "to θ_r); vs +budget: over the baseline continued for the curve's epochs; regret: Avg. Gap at "
        "t* / best Avg. Gap on the grid; no path gain: t* = 1 or an empty region"
    )
    return "\n".join(lines)


def run_folder(parent: str | Path, cfg: ExperimentConfig) -> fs.Location:
    """A new folder under ``parent`` (a local path or a URI) named after the time, dataset and forget set."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    # the forget spec may hold a user's file path: one safe path component, never a way out of --out
    scenario = re.sub(r"[^A-Za-z0-9.-]+", "_", cfg.forget.spec.replace(",", "-"))[:80]
    base = fs.join(parent, f"{stamp}-{cfg.data.dataset}-{scenario}")
    path, i = base, 1
    while fs.exists(path) or fs.list_names(path):
        path, i = f"{base}-{i}", i + 1
    return path if fs.is_remote(path) else Path(path)
