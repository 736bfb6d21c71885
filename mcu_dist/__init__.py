"""mcu_dist: Mode Connectivity Unlearning (MCU) at cluster scale.

Importing the package is cheap; the heavy pieces load on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["run_experiment", "unlearn"]


def unlearn(*args: Any, **kwargs: Any):
    from mcu_dist.api import unlearn as _unlearn

    return _unlearn(*args, **kwargs)


unlearn.__doc__ = "See mcu_dist.api.unlearn."


def run_experiment(*args: Any, **kwargs: Any):
    from mcu_dist.experiment import run_experiment as _run

    return _run(*args, **kwargs)


run_experiment.__doc__ = "See mcu_dist.experiment.run_experiment."
