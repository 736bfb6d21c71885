"""Every metric of one model from one pass per set: RA, FA/UA, TA, forgotten-class TA, MIA-Efficacy."""

from __future__ import annotations

from torch import nn

from mcu_dist.evaluate.metrics import predict
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
    row = {"RA": retain.accuracy, "FA": forget.accuracy, "UA": 100.0 - forget.accuracy, "TA": test.accuracy}
    if s.classwise:
        row["TA_forgotten"] = predict(model, b.test, s.test_forgotten, **kw).accuracy
    row.update(mia_efficacy(retain, test, forget, cfg.mia_cap, lab.cfg.seeds.eval, features))
    return row
