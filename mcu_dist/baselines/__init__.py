"""Pre-unlearning methods θ_o -> θ_p, each a small registered unit with its defaults.

The registry and the ``Baseline`` type live in ``base``; importing this package registers every unit.
"""

from mcu_dist.baselines import methods as _methods  # noqa: F401  (registers the units)
from mcu_dist.baselines.base import BASELINES, Baseline, baseline, check_baselines

__all__ = ["BASELINES", "Baseline", "baseline", "check_baselines"]
