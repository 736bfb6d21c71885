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
