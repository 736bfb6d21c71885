"""β follows each schedule's rule on hand-made accuracy inputs."""

from __future__ import annotations

import pytest

from mcu_dist.config import MCUConfig
from mcu_dist.path.beta import BETA_SCHEDULES, CalTargets

P = MCUConfig(beta=0.2, beta_low=0.01, beta_high=0.5, beta_tau=0.1)
CAL = CalTargets(cal_f=80.0, cal_r=95.0)


def beta(name, acc_f, acc_r, cal=CAL):
    return BETA_SCHEDULES[name](acc_f, acc_r, cal, P)


def test_fixed_ignores_accuracies():
    assert beta("fixed", 100, 0) == beta("fixed", 0, 100) == 0.2


@pytest.mark.parametrize("name", ["adaptive_step", "adaptive_abs", "adaptive_smooth"])
def test_forgotten_enough_gives_zero(name):
    assert beta(name, 80.0, 50.0) == 0.0
    assert beta(name, 10.0, 99.0) == 0.0


def test_adaptive_step_as_released():
    # rel_f = (88-80)/80 = 0.1 ; rel_r = (99.75-95)/95 = 0.05 -> rel_f >= rel_r -> high
    assert beta("adaptive_step", 88.0, 99.75) == 0.5
    # rel_f = 0.1 ; rel_r = (104.5-95)/95 = 0.1 + ... choose acc_r = 114 -> rel_r = 0.2 -> low
    assert beta("adaptive_step", 88.0, 114.0) == 0.01
    # retain below its target: rel_r < 0 < rel_f -> high (the released rule compares signed gaps)
    assert beta("adaptive_step", 81.0, 50.0) == 0.5


def test_adaptive_abs_compares_magnitudes():
    # rel_f = 0.0125, rel_r = (50-95)/95 = -0.47: signed rule says high, magnitudes say low
    assert beta("adaptive_step", 81.0, 50.0) == 0.5
    assert beta("adaptive_abs", 81.0, 50.0) == 0.01
    assert beta("adaptive_abs", 96.0, 94.0) == 0.5


@pytest.mark.parametrize("name", ["adaptive_step", "adaptive_abs"])
def test_cal_f_zero_is_handled(name):
    cal = CalTargets(cal_f=0.0, cal_r=95.0)
    assert beta(name, 0.0, 90.0, cal) == 0.0
    assert beta(name, 0.5, 200.0, cal) == 0.5  # any forget accuracy left: the forget gap is infinite
    assert beta("adaptive_smooth", 0.0, 90.0, cal) == 0.0


def test_smooth_schedule_is_continuous_and_bounded():
    values = [beta("adaptive_smooth", 80.0 + d, 95.0) for d in (0.0, 0.01, 0.1, 1.0, 5.0, 20.0)]
    assert values[0] == 0.0 and values[1] < 1e-3  # no jump at the boundary
    assert all(a <= b for a, b in zip(values, values[1:], strict=False))
    assert all(0.0 <= v <= P.beta_high for v in values)
    assert values[-1] > 0.4


@pytest.mark.parametrize("name", ["fixed", "adaptive_step", "adaptive_abs"])
@pytest.mark.parametrize("cal", [CalTargets(60.0, 95.0), CalTargets(0.0, 95.0), CalTargets(60.0, 0.0)])
def test_device_rules_give_the_host_rules_beta_bitwise(name, cal):
    import itertools

    import torch

    from mcu_dist.path.beta import DEVICE_RULES
    from mcu_dist.train.mcu import accuracies

    p = MCUConfig(beta=0.7, beta_low=0.13, beta_high=0.91)
    host, device = BETA_SCHEDULES[name], DEVICE_RULES[name]
    seen = set()
    # (n_f, n_r, c_f, c_r): acc_f below, at (60 of 100) and above Cal_f; an empty retain side
    for n_f, n_r, c_f, c_r in itertools.product(
        [1.0, 7.0, 100.0], [0.0, 9.0, 128.0], [0.0, 1.0, 60.0, 61.0], [0.0, 5.0, 122.0, 128.0]
    ):
        if c_f > n_f or c_r > n_r:
            continue
        values = [n_f, n_r, c_f, c_r, 3.2, 1.1]
        want = host(*accuracies(values, cal), cal, p)
        got = device(torch.tensor(values, dtype=torch.float64), cal, p)
        got = float(got) if isinstance(got, torch.Tensor) else got
        assert got == want, (values, got, want)
        seen.add(want)
    if cal.cal_f and cal.cal_r:  # every level of the rule was reached (the degenerate targets skip β_low)
        assert len(seen) == (1 if name == "fixed" else 3)
