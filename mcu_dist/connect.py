"""``python -m mcu_dist.connect``: is mode connectivity there? A check of the premise MCU rests on.

Two models trained independently by the same recipe (seeds ``seeds.model`` and ``seeds.model + 1``)
are joined by a Bézier curve whose control points are trained with the project's own curve loop,
the forget term off and no mask: min over θ_c of E_{t~U(0,1)} CE(D; θ(t)) on the whole training set.
At each t of the grid, the straight line (1−t)θ_a + tθ_b (the untrained curve) and the trained curve
are evaluated alike, BN re-estimated at θ(t): training loss and accuracy, test accuracy. The barrier
of a path (Garipov et al. 2018; Frankle et al. 2020) is

    barrier = max_t [ L(θ(t)) − ((1−t)·L(θ_a) + t·L(θ_b)) ]

(training loss L; the same with accuracy, sign flipped). The line should have a large one and the
trained curve almost none. Knobs are the experiment's: ``reference.*`` trains the endpoints,
``mcu.curve_order / lr / epochs / batch_size`` the curve, ``eval.*`` the grid and the BN set.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from mcu_dist.config import ConfigError, ExperimentConfig, with_overrides
from mcu_dist.evaluate.bn import bn_set_positions
from mcu_dist.evaluate.metrics import predict
from mcu_dist.evaluate.path_eval import model_at
from mcu_dist.lab import Lab
from mcu_dist.path.beta import CalTargets
from mcu_dist.path.bezier import BezierCurve, curve_between
from mcu_dist.store import write_table
from mcu_dist.train.mcu import train_curve
from mcu_dist.train.reference import original_model
from mcu_dist.validation import validate


@dataclass
class Connectivity:
    rows: list[dict]  # one per t: line_* and curve_* loss/accuracy
    barrier: dict[str, float]  # line_loss, curve_loss, line_acc, curve_acc
    worst_loss: dict[str, float]  # line, curve: the largest training loss along each path


def whole_training_set(lab: Lab) -> Lab:
    """The same data with nothing to forget: every training sample is a retain sample."""
    splits = dataclasses.replace(lab.splits, forget=torch.empty(0, dtype=torch.long), retain=lab.all_train)
    return dataclasses.replace(lab, splits=splits)


def point_metrics(curve: BezierCurve, t: float, lab: Lab, calib: torch.Tensor) -> dict[str, float]:
    model = model_at(curve, t, lab, calib)
    kw = {"batch_size": lab.cfg.eval.batch_size, "device": lab.device, "piece": lab.forward_piece}
    train = predict(model, lab.bundle.train, lab.all_train, lab.normalize, **kw)
    test = predict(model, lab.bundle.test, torch.arange(len(lab.bundle.test)), lab.normalize, **kw)
    loss = -train.confidence.clamp_min(1e-12).log().mean().item()
    return {"loss": loss, "acc": train.accuracy, "test_acc": test.accuracy}


def barrier(ts: list[float], values: list[float], sign: float = 1.0) -> float:
    """max_t sign·[v(t) − ((1−t)v(0) + t·v(1))]: the bump above the endpoints' chord."""
    v0, v1 = values[0], values[-1]
    return max(sign * (v - ((1 - t) * v0 + t * v1)) for t, v in zip(ts, values, strict=True))


def connect(cfg: ExperimentConfig, log=print) -> Connectivity:
    validate(cfg)
    lab = whole_training_set(Lab.build(cfg))
    theta_a, _ = original_model(lab, lab.cache)
    lab_b = dataclasses.replace(lab, cfg=with_overrides(cfg, {"seeds.model": cfg.seeds.model + 1}))
    theta_b, _ = original_model(lab_b, lab.cache)
    names = [n for n, _ in theta_a.named_parameters()]
    curve = curve_between(theta_a, theta_b, cfg.mcu.curve_order, names).to(lab.device)
    line = copy.deepcopy(curve)  # the initial curve is the straight line
    # No forget samples: every batch has n_f = 0, so β is 0 whatever the schedule and Cal targets say.
    state = train_curve(curve, lab, cfg.mcu, "fixed", CalTargets(0.0, 100.0), cfg.seeds.unlearn)
    log(f"curve trained: {state.epoch} epochs, {len(state.steps)} steps, {state.seconds:.1f} s")
    calib = bn_set_positions(lab, cfg.eval, cfg.seeds.eval)
    ts = cfg.eval.grid()
    rows = []
    for t in ts:
        a, b = point_metrics(line, t, lab, calib), point_metrics(curve, t, lab, calib)
        rows.append(
            {"t": t, **{f"line_{k}": v for k, v in a.items()}, **{f"curve_{k}": v for k, v in b.items()}}
        )
    col = lambda key: [r[key] for r in rows]  # noqa: E731
    return Connectivity(
        rows,
        {
            "line_loss": barrier(ts, col("line_loss")),
            "curve_loss": barrier(ts, col("curve_loss")),
            "line_acc": barrier(ts, col("line_acc"), sign=-1.0),
            "curve_acc": barrier(ts, col("curve_acc"), sign=-1.0),
        },
        {"line": max(col("line_loss")), "curve": max(col("curve_loss"))},
    )


def format_connectivity(c: Connectivity) -> str:
    head = (
        f"{'t':>6}{'line loss':>11}{'curve loss':>12}{'line acc':>10}{'curve acc':>11}"
        f"{'line TA':>9}{'curve TA':>10}"
    )
    lines = [head, "-" * len(head)]
    for r in c.rows:
        lines.append(
            f"{r['t']:6.2f}{r['line_loss']:11.3f}{r['curve_loss']:12.3f}{r['line_acc']:10.2f}"
            f"{r['curve_acc']:11.2f}{r['line_test_acc']:9.2f}{r['curve_test_acc']:10.2f}"
        )
    b = c.barrier
    lines.append(
        f"\nbarrier (above the endpoints' chord): loss line {b['line_loss']:.3f} "
        f"vs curve {b['curve_loss']:.3f}; "
        f"train accuracy line {b['line_acc']:.2f} vs curve {b['curve_acc']:.2f} points"
    )
    lines.append(f"worst training loss: line {c.worst_loss['line']:.3f} vs curve {c.worst_loss['curve']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from mcu_dist.experiment import run_folder
    from mcu_dist.run import build_parser, config_from_args

    parser = build_parser()
    parser.prog = "python -m mcu_dist.connect"
    parser.description = __doc__.splitlines()[0]
    args = parser.parse_args(argv)
    try:
        cfg, _ = config_from_args(args)
        validate(cfg)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = connect(cfg)
    out = Path(str(run_folder(cfg.out, cfg)) + "-connect")
    write_table(result.rows, out / "connectivity.parquet", result.barrier)
    print(format_connectivity(result))
    print(f"\nrun folder: {out}  (connectivity.parquet: one row per t)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
