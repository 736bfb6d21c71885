"""Every metric of one model from one pass per set: RA, FA/UA, TA, forgotten-class TA, MIA-Efficacy."""

from __future__ import annotations

from torch import nn

from mcu_dist.evaluate.metrics import Outputs, predict
from mcu_dist.evaluate.mia import mia_efficacy
from mcu_dist.lab import Lab


def evaluate_model(
    model: nn.Module, lab: Lab, *, features: tuple[str, ...] = ("confidence",)
) -> dict[str, float]:
    cfg, s, b = lab.cfg.eval, lab.splits, lab.bundle
    kw = {"normalize": lab.normalize, "batch_size": cfg.batch_size, "device": lab.device}
    retain = predict(model, b.train, s.retain, **kw)
    forget = predict(model, b.train, s.forget, **kw)
    test = predict(model, b.test, s.test_eval, **kw)
    forgotten = predict(model, b.test, s.test_forgotten, **kw) if s.classwise else None
    return row_from_outputs(retain, forget, test, forgotten, lab, features)


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
