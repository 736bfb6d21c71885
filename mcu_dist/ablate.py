"""``python -m mcu_dist.ablate --grid tune_spaces/<grid>.yaml``: an ablation grid, each cell a trial.

A grid file has ``fixed``, ``sweep`` and ``grid: {key: [values...]}`` (keys as in a search space:
``baseline``, ``baseline.<hp>``, any dotted config field, and ``seed``, which sets every stage's
seed). The cross product is run with Ray Tune (no sampler), one MLflow parent run with a child per
cell; reference models are trained once per (data, model, forget scenario, seed) before the cells
fan out. ``--resume`` continues a grid whose driver died. ``python -m mcu_dist.report`` turns the
experiment into the paper's tables.
"""

from __future__ import annotations

import sys

from mcu_dist import sweep
from mcu_dist.tune_space import SearchSpace


def build_grid_tuner(space: SearchSpace, storage: str, context: dict, resume: bool):
    from ray import tune

    if resume:
        return sweep.build_tuner(space, storage, context, resume=True)
    trainable = sweep.with_trial_resources(tune.with_parameters(sweep.tune_trainable, context=context), space)
    return tune.Tuner(
        trainable,
        param_space={key: tune.grid_search(values) for key, values in space.grid.items()},
        tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=space.sweep.max_concurrent),
        run_config=sweep.run_config(space, storage, context),
    )


def load_grid_file(path: str) -> SearchSpace:
    from mcu_dist.config import ConfigError
    from mcu_dist.tune_space import load_space

    space = load_space(path)
    if not space.grid:
        raise ConfigError(
            f"--grid: {path} has no grid section; allowed: a grid file (tune_spaces/ablation_smoke.yaml)"
        )
    return space


def main(argv: list[str] | None = None) -> int:
    return sweep.main(argv, loader=load_grid_file, tuner_factory=build_grid_tuner)


if __name__ == "__main__":
    sys.exit(main())
