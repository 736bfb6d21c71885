"""Every metric of one model from one pass per set: RA, FA/UA, TA, forgotten-class TA, MIA-Efficacy.

``evaluate_outcomes`` also keeps the per-sample results the metrics are means of (correctness on
D_r, D_f, D_test; the attack's verdict on each D_f sample for each of ``shadow_draws`` shadow-set
draws, the first being the headline's), so confidence intervals resample them without running the
network again (``mcu_dist.evaluate.bootstrap``).
"""

from __future__ import annotations

import time

from torch import nn

from mcu_dist.evaluate.bootstrap import Outcomes
from mcu_dist.evaluate.metrics import Outputs, predict
from mcu_dist.evaluate.mia import attack_verdicts, mia_efficacy, shadow_seeds
from mcu_dist.lab import Lab


def evaluate_outcomes(
    model: nn.Module, lab: Lab, *, features: tuple[str, ...] = ("confidence",), shadow_draws: int = 1
) -> tuple[dict[str, float], Outcomes]:
    cfg, s, b = lab.cfg.eval, lab.splits, lab.bundle
    kw = {"normalize": lab.normalize, "batch_size": cfg.batch_size, "device": lab.device}
    retain = predict(model, b.train, s.retain, **kw)
    forget = predict(model, b.train, s.forget, **kw)
    test = predict(model, b.test, s.test_eval, **kw)
    forgotten = predict(model, b.test, s.test_forgotten, **kw) if s.classwise else None
    seed = lab.cfg.seeds.eval
    verdicts = []
    for i, sd in enumerate(shadow_seeds(seed, shadow_draws)):
        if i == 1:  # the draws beyond the headline's are the intervals' cost
            start = time.perf_counter()
        verdicts.append(attack_verdicts(retain, test, forget, "confidence", cfg.mia_cap, sd))
    others = tuple(f for f in features if f != "confidence")
    row = row_from_outputs(retain, forget, test, forgotten, lab, others)
    row["MIA"] = row["MIA_confidence"] = 100.0 * verdicts[0].double().mean().item()
    if shadow_draws > 1:
        draws = [100.0 * v.double().mean().item() for v in verdicts]
        row["MIA_shadow_min"], row["MIA_shadow_max"] = min(draws), max(draws)
        row["ci_s"] = time.perf_counter() - start
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
    row = {"RA": retain.accuracy, "FA": forget.accuracy, "UA": 100.0 - forget.accuracy, "TA": test.accuracy}
    if forgotten is not None:
        row["TA_forgotten"] = forgotten.accuracy
    row.update(mia_efficacy(retain, test, forget, lab.cfg.eval.mia_cap, lab.cfg.seeds.eval, features))
    return row
