"""One experiment without Ray Tune: Original, Retrain, each baseline, baseline+MCU, baseline+MCU-β.

Comparisons: the baseline row is θ_p as the baseline produced it (its own BN buffers); the MCU rows
are θ(t*) with BN recalibrated at t*. RTE is in minutes; an MCU row's RTE is the total (baseline +
curve training + path evaluation) with the parts beside it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from mcu_dist.baselines import BASELINES
from mcu_dist.config import ExperimentConfig, save_yaml
from mcu_dist.data import write_manifest
from mcu_dist.evaluate.bootstrap import Outcomes, intervals
from mcu_dist.evaluate.metrics import avg_gap
from mcu_dist.evaluate.mia import FEATURES
from mcu_dist.evaluate.path_eval import write_table
from mcu_dist.evaluate.point import evaluate_outcomes
from mcu_dist.lab import Lab
from mcu_dist.path.mask import Mask, mask_for
from mcu_dist.pipeline import PathResult, run_path
from mcu_dist.train.mcu import calibration_targets, retain_prime_record
from mcu_dist.train.reference import load_checkpoint, load_into, original_model, retrained_model


@dataclass
class ExperimentResult:
    rows: list[dict]
    paths: dict[str, PathResult]
    out_dir: Path | None
    mask: Mask | None


def baseline_model(
    lab: Lab, method: str, original: nn.Module, more_epochs: int = 0
) -> tuple[nn.Module, float]:
    """θ_p for ``method`` from the cache (trained once per key); returns the model and its RTE in seconds.

    ``more_epochs > 0`` gives the compute-matched control instead: the baseline's own update (its loss,
    data stream and optimiser settings) run again from θ_p for that many epochs; its RTE includes θ_p's.
    """
    unit = BASELINES[method]
    hp = unit.resolve(lab.cfg.baselines.params.get(method))
    fields = {
        **lab.reference_key(),
        "forget": lab.splits.manifest_hash,
        "method": method,
        "hp": hp,
        "unlearn_seed": lab.cfg.seeds.unlearn,
    }
    start, kind, before = original, f"baseline-{method}", 0.0
    if more_epochs:
        start, before = baseline_model(lab, method, original)
        fields, kind, hp = (
            {**fields, "more_epochs": more_epochs},
            f"budget-{method}",
            {**hp, "epochs": more_epochs},
        )
    model, meta = lab.cache.get(
        kind,
        fields,
        lab.new_model(),
        lambda: unit.run(copy.deepcopy(start).train(), lab, hp, lab.cfg.seeds.unlearn),
    )
    return model.eval(), before + float(meta.get("seconds", 0.0))


def has_budget_control(method: str) -> bool:
    """Baselines with an iterative update (an ``epochs`` setting) can be continued for MCU's budget."""
    return method in BASELINES and "epochs" in BASELINES[method].defaults


def endpoints(lab: Lab, original: nn.Module) -> dict[str, tuple[nn.Module, float]]:
    out = {m: baseline_model(lab, m, original) for m in lab.cfg.baselines.methods}
    if lab.cfg.baselines.endpoint:
        state, _ = load_checkpoint(lab.cfg.baselines.endpoint, "baselines.endpoint")
        out["endpoint"] = (
            load_into(lab.new_model(), state, "baselines.endpoint", lab.cfg.baselines.endpoint).eval(),
            0.0,
        )
    return out


def curve_run_name(cfg: ExperimentConfig, lab: Lab, key: str) -> str:
    """A stable name per (config, path): a restarted driver finds its Ray Train checkpoints again."""
    from mcu_dist.train.reference import key_hash

    fields = {
        "config": {k: v for k, v in cfg.flat().items() if not k.startswith(("scale.", "out"))},
        "dataset": lab.bundle.dataset_id,
        "forget": lab.splits.manifest_hash,
        "path": key,
    }
    return f"curve-{key.replace('+', '-')}-{key_hash(fields)[:12]}"


def run_experiment(cfg: ExperimentConfig, out_dir: str | Path | None = None, log=print) -> ExperimentResult:
    cfg.validate()
    if cfg.scale.distributed:  # placement is checked before any compute
        from mcu_dist.train.distributed import connect

        connect(cfg)
    lab = Lab.build(cfg)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, out / "config.yaml")
        write_manifest(lab.bundle, lab.splits, out / "forget_manifest.parquet", retain_prime_record(lab))
    log(
        f"data {lab.bundle.dataset_id}: |D_f| = {len(lab.splits.forget)}, |D_r| = {len(lab.splits.retain)}, "
        f"|D_test| = {len(lab.splits.test_eval)}; forget manifest {lab.splits.manifest_hash[:12]}"
    )
    original, o_meta = original_model(lab, lab.cache)
    retrained, r_meta = retrained_model(lab, lab.cache)
    retrain_row, retrain_outcomes = evaluate_outcomes(
        retrained, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws
    )

    def with_intervals(row: dict, outcomes: Outcomes) -> dict:
        start = time.perf_counter()
        bounds = intervals(outcomes, retrain_outcomes, cfg.eval.bootstrap, cfg.eval.ci_level, cfg.seeds.eval)
        return {**row, **bounds, "ci_s": row.get("ci_s", 0.0) + time.perf_counter() - start}

    def scored(model: nn.Module) -> dict:
        return with_intervals(
            *evaluate_outcomes(model, lab, features=FEATURES, shadow_draws=cfg.eval.shadow_draws)
        )

    rows = [
        {"model": "Original", **scored(original), "RTE": o_meta.get("seconds", 0) / 60},
        {
            "model": "Retrain",
            **with_intervals(retrain_row, retrain_outcomes),
            "RTE": r_meta.get("seconds", 0) / 60,
        },
    ]
    cal = calibration_targets(original, lab, lab.splits.classwise, cfg.eval.batch_size)
    log(f"calibration targets: Cal_r = {cal.cal_r:.2f}, Cal_f = {cal.cal_f:.2f}")
    mask = mask_for(original, lab) if cfg.mcu.variants else None
    if mask is not None:
        log(
            f"mask {mask.sha256[:12]} ({mask.kind}, {mask.mode}, k = {mask.k}): {len(mask.selected)} tensors, "
            f"{mask.selected_params}/{mask.total_params} parameters = {100 * mask.fraction:.1f}% selected"
        )
    paths: dict[str, PathResult] = {}
    for name, (endpoint, seconds) in endpoints(lab, original).items():
        rows.append({"model": name, **scored(endpoint), "RTE": seconds / 60})
        if cfg.baselines.budget_control and cfg.mcu.variants and has_budget_control(name):
            continued, total = baseline_model(lab, name, original, more_epochs=cfg.mcu.epochs)
            rows.append(
                {"model": f"{name}+budget", **scored(continued), "RTE": total / 60, "RTE_base": seconds / 60}
            )
            log(f"{name}+budget: {name} continued from θ_p for {cfg.mcu.epochs} epochs (MCU's curve budget)")
        for variant in cfg.mcu.variants:
            key = f"{name}+{variant}"
            result = run_path(
                lab,
                original,
                endpoint,
                variant,
                mask,
                cal,
                retrain_row,
                out / "paths" / key if out is not None else None,
                curve_run_name(cfg, lab, key),
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
            )
    for row in rows:
        row["avg_gap"] = avg_gap(row, retrain_row)
    ci_s, eval_s = sum(r["ci_s"] for r in rows), sum(r.get("RTE_eval", 0.0) * 60 for r in rows)
    log(
        f"intervals ({cfg.eval.bootstrap} replicates, {cfg.eval.shadow_draws} shadow draws) cost {ci_s:.1f} s "
        f"for {len(rows)} rows; path evaluation took {eval_s:.1f} s"
    )
    if out is not None:
        write_table(
            rows,
            out / "results.parquet",
            {"dataset_id": lab.bundle.dataset_id, "forget_sha256": lab.splits.manifest_hash},
        )
    return ExperimentResult(rows, paths, out, mask)


def format_table(rows: list[dict]) -> str:
    head = (
        f"{'model':<24}{'UA':>8}{'RA':>8}{'TA':>8}{'MIA':>8}{'AvgGap':>8}{'95% interval':>16}"
        f"{'RTE(min)':>10}{'t*':>6}{'mask%':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        ts = f"{r['t_star']:.2f}" if "t_star" in r else ""
        sel = f"{100 * r['mask_fraction']:.1f}" if "mask_fraction" in r else ""
        ci = f"[{r['avg_gap_lo']:.2f}, {r['avg_gap_hi']:.2f}]" if "avg_gap_lo" in r else ""
        lines.append(
            f"{r['model']:<24}{r['UA']:8.2f}{r['RA']:8.2f}{r['TA']:8.2f}{r['MIA']:8.2f}"
            f"{r['avg_gap']:8.2f}{ci:>16}{r['RTE']:10.3f}{ts:>6}{sel:>7}"
        )
    return "\n".join(lines)


def run_folder(parent: str | Path, cfg: ExperimentConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path(parent) / f"{stamp}-{cfg.data.dataset}-{cfg.forget.spec.replace(':', '_').replace(',', '-')}"
    path, i = base, 1
    while path.exists():
        path, i = Path(f"{base}-{i}"), i + 1
    return path
