"""What a sweep prints: one line per finished trial and per shared model, nothing a user cannot act on.

Tune's progress tables, Ray's and MLflow's start-up INFO logs and Optuna's ExperimentalWarning are for
``--verbose`` only; errors and warnings of every library still reach the console.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

NOISY_LOGGERS = ("ray", "ray.tune", "ray.train", "mlflow", "alembic", "optuna")


def quiet(verbose: bool) -> None:
    # the sweep prints its own MLflow URL (the runs table, sorted) at the end, not one per run
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    if verbose:
        return
    # Tune's classic reporter at verbose=0 prints nothing; the new one prints its boxes and a TensorBoard hint
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def say(line: str) -> None:
    """The console's default output. Not the builtin itself: Tune pickles its callbacks, and a Ray Train
    run in the same process replaces ``builtins.print``, after which the original cannot be pickled."""
    print(line)


class Progress:
    """``[i/n] what  (elapsed)`` lines for the shared models trained before trials fan out."""

    def __init__(self, total: int, log: Callable[[str], None] = say):
        self.total, self.done, self.log, self.start = total, 0, log, time.perf_counter()

    def step(self, what: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        self.log(f"  shared model {self.done}/{self.total}: {what} ready ({elapsed:.0f} s)")


def trial_lines(objective: str, total: int, name_of: Callable[[dict], str], log: Callable[[str], None] = say):
    """A Tune callback printing ``[k/n] name  objective  seconds`` as each trial finishes or fails."""
    from ray.tune import Callback

    class TrialLines(Callback):
        def __init__(self):
            self.finished = 0

        def _line(self, trial: Any, status: str) -> None:
            self.finished += 1
            result = trial.last_result or {}
            params = dict(trial.config or {})
            name = name_of(params) or trial.trial_id
            value = result.get(objective)
            score = (
                f"{objective} {value:.3f}"
                if isinstance(value, (int, float)) and result.get("final") == 1
                else status
            )
            seconds = result.get("trial_s") or result.get("time_total_s") or 0.0
            log(f"  [{self.finished}/{total}] {name:<48} {score:<18} {seconds:5.1f} s")

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._line(trial, "pruned (ASHA)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._line(trial, "FAILED")

    return TrialLines()


def registry_epilog() -> str:
    """The registered names every ``--help`` lists: what ``--dataset``, ``--model``, ``--methods`` and
    ``--beta-schedule`` (or a space's keys of the same names) accept."""
    from mcu_dist.baselines import BASELINES
    from mcu_dist.data import sources  # noqa: F401  (registers the datasets)
    from mcu_dist.data.registry import DATASETS
    from mcu_dist.models.zoo import MODELS
    from mcu_dist.path.beta import BETA_SCHEDULES

    return (
        "\n".join(
            f"{title:<20}{', '.join(reg.names())}"
            for title, reg in (
                ("datasets:", DATASETS),
                ("models:", MODELS),
                ("baselines:", BASELINES),
                ("beta schedules:", BETA_SCHEDULES),
            )
        )
        + "\n(a model may also be package.module:factory)"
    )
