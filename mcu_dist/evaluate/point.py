"""Every metric of one model from one pass per set: RA, FA/UA, TA, forgotten-class TA, MIA-Efficacy.

``evaluate_outcomes`` also keeps the per-sample results the metrics are means of (correctness on
D_r, D_f, D_test; the attack's verdict on each D_f sample for each of ``shadow_draws`` shadow-set
draws, the first being the headline's), so confidence intervals resample them without running the
network again (``mcu_dist.evaluate.bootstrap``). The model runs as every evaluated model does
(``mcu_dist.evaluate.inference``: a BN-folded, channels_last copy), and the attacks of several shadow
draws and features are fitted on host threads side by side.
"""

from __future__ import annotations

import time

from torch import nn

from mcu_dist.evaluate.bootstrap import Outcomes
from mcu_dist.evaluate.inference import eval_copy
from mcu_dist.evaluate.metrics import Outputs, predict
from mcu_dist.evaluate.mia import attacks, efficacy, mia_efficacy, mia_n, shadow_seeds
from mcu_dist.lab import Lab


def evaluate_outcomes(
    model: nn.Module, lab: Lab, *, features: tuple[str, ...] = ("confidence",), shadow_draws: int = 1
) -> tuple[dict[str, float], Outcomes]:
    cfg, s, b = lab.cfg.eval, lab.splits, lab.bundle
    net = eval_copy(model, lab)
    kw = {
        "normalize": lab.normalize,
        "batch_size": cfg.batch_size,
        "device": lab.device,
        "piece": lab.forward_piece,
    }
    retain = predict(net, b.train, s.retain, **kw)
    forget = predict(net, b.train, s.forget, **kw)
    test = predict(net, b.test, s.test_eval, **kw)
    forgotten = predict(net, b.test, s.test_forgotten, **kw) if s.classwise else None
    # the headline's shadow draw, the further draws (the intervals' cost), the other features' attacks
    others = tuple(f for f in features if f != "confidence")
    jobs = [("confidence", sd) for sd in shadow_seeds(lab.cfg.seeds.eval, shadow_draws)]
    jobs += [(f, lab.cfg.seeds.eval) for f in others]
    start = time.perf_counter()
    done = attacks(retain, test, forget, jobs, cfg.mia_cap)
    wall = time.perf_counter() - start
    verdicts = [v for v, _ in done[:shadow_draws]]
    row = accuracy_row(retain, forget, test, forgotten)
    row["mia_n"] = mia_n(retain, test, cfg.mia_cap)
    row["MIA"] = row["MIA_confidence"] = efficacy(verdicts[0])
    for name, (v, _) in zip(others, done[shadow_draws:], strict=True):
        row[f"MIA_{name}"] = efficacy(v)
    if shadow_draws > 1:
        draws = [efficacy(v) for v in verdicts]
        row["MIA_shadow_min"], row["MIA_shadow_max"] = min(draws), max(draws)
        # the extra draws' share of the attacks' wall time (the fits overlap on threads)
        fits = sum(seconds for _, seconds in done) or 1.0
        row["ci_s"] = wall * sum(seconds for _, seconds in done[1:shadow_draws]) / fits
    return row, Outcomes(retain.correct, forget.correct, test.correct, verdicts)


def evaluate_model(
    model: nn.Module, lab: Lab, *, features: tuple[str, ...] = ("confidence",)
) -> dict[str, float]:
    return evaluate_outcomes(model, lab, features=features)[0]


def row_from_outputs(
    retain: Outputs,
    forget: Outputs,
    test: Outputs,
    forgotten: Outputs | None,
    lab: Lab,
    features: tuple[str, ...] = ("confidence",),
) -> dict[str, float]:
    """The metric row from one model's outputs on D_r, D_f, D_test (and the forgotten classes' test set)."""
    row = accuracy_row(retain, forget, test, forgotten)
    row.update(mia_efficacy(retain, test, forget, lab.cfg.eval.mia_cap, lab.cfg.seeds.eval, features))
    return row


def accuracy_row(
    retain: Outputs, forget: Outputs, test: Outputs, forgotten: Outputs | None
) -> dict[str, float]:
    row = {"RA": retain.accuracy, "FA": forget.accuracy, "UA": 100.0 - forget.accuracy, "TA": test.accuracy}
    if forgotten is not None:
        row["TA_forgotten"] = forgotten.accuracy
    return row
