"""Search spaces as YAML (``tune_spaces/*.yaml``), validated against the config dataclasses.

    fixed:                      # any config fields, dotted
      data.dataset: digits
      forget.spec: classes:1
    search:                     # dimensions: float | logfloat | int | categorical
      mcu.k:             {type: float, low: 0.1, high: 1.0}
      mcu.curve_order:   {type: int, low: 2, high: 4}
      mcu.beta_schedule: {type: categorical, choices: [fixed, adaptive_step]}
      mcu.beta:          {type: float, low: 0.05, high: 0.5, when: {mcu.beta_schedule: fixed}}
      baseline:          {type: categorical, choices: [ft, ga, rl]}
      baseline.lr:       {type: logfloat, low: 1e-3, high: 1e-1}   # the chosen baseline's hyperparameter
    sweep:                      # SweepConfig fields
      num_samples: 8

``when`` makes a dimension conditional: it exists only when its parent took one of the given
values (a value or a list). ``baseline`` picks the pre-unlearning method of a trial, and
``baseline.<hp>`` searches that method's hyperparameter (it must be declared by every method offered).
Every key is checked (field exists, range well-formed, values of the field's type) before Ray starts.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mcu_dist.config import ConfigError, ExperimentConfig, _coerce, flatten, with_overrides

KINDS = ("float", "logfloat", "int", "categorical")


@dataclass
class SweepConfig:
    name: str = "mcu-sweep"
    num_samples: int = 8
    objective: str = "avg_gap"  # avg_gap (research, needs θ_r) | gap_cal (deployment, no retrained model)
    multi_objective: bool = False  # Pareto front over (objective, rte_min)
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    seed: int = 0
    asha: bool = False  # prune on a cheap per-epoch proxy of gap_cal
    asha_grace_epochs: int = 2
    max_failures: int = 0  # per-trial retries by Tune
    experiment: str | None = None  # MLflow experiment; default: name

    def validate(self) -> None:
        def check(cond: bool, key: str, allowed: str, value: Any) -> None:
            if not cond:
                raise ConfigError(f"sweep.{key}: got {value!r}; allowed: {allowed}")

        check(self.num_samples >= 1, "num_samples", "an integer >= 1", self.num_samples)
        check(self.objective in ("avg_gap", "gap_cal"), "objective", "avg_gap, gap_cal", self.objective)
        check(self.max_concurrent >= 1, "max_concurrent", "an integer >= 1", self.max_concurrent)
        check(self.cpus_per_trial > 0, "cpus_per_trial", "a number > 0", self.cpus_per_trial)
        check(not (self.asha and self.multi_objective), "asha", "false when multi_objective is true", self.asha)


@dataclass
class Dimension:
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: list | None = None
    when: dict[str, list] = field(default_factory=dict)


@dataclass
class SearchSpace:
    fixed: dict[str, Any]
    dims: list[Dimension]
    sweep: SweepConfig
    source: str = ""

    def base_config(self) -> ExperimentConfig:
        return with_overrides(ExperimentConfig(), self.fixed)

    def methods(self) -> list[str]:
        dim = next((d for d in self.dims if d.key == "baseline"), None)
        return list(dim.choices) if dim else list(self.base_config().baselines.methods)

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample this space on ``trial``; parents before children."""
        chosen: dict[str, Any] = {}
        for d in self.dims:
            if any(chosen.get(parent) not in values for parent, values in d.when.items()):
                continue
            if d.kind == "float":
                chosen[d.key] = trial.suggest_float(d.key, d.low, d.high)
            elif d.kind == "logfloat":
                chosen[d.key] = trial.suggest_float(d.key, d.low, d.high, log=True)
            elif d.kind == "int":
                chosen[d.key] = trial.suggest_int(d.key, int(d.low), int(d.high))
            else:
                chosen[d.key] = trial.suggest_categorical(d.key, d.choices)
        return chosen

    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """The experiment one trial runs: one baseline, one path (variant mcu_beta under the chosen schedule)."""
        over = dict(self.fixed)
        method = params.get("baseline", (self.base_config().baselines.methods or [None])[0])
        hp = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("baseline.")}
        over.update({k: v for k, v in params.items() if k != "baseline" and not k.startswith("baseline.")})
        over["baselines.methods"] = [method] if method else []
        if hp:
            over["baselines.params"] = {method: hp}
        over["mcu.variants"] = ["mcu_beta"]
        return with_overrides(ExperimentConfig(), over)


def _leaf_types(cls: type = ExperimentConfig, prefix: str = "") -> dict[str, Any]:
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.update(_leaf_types(tp, prefix + f.name + "."))
        else:
            out[prefix + f.name] = tp
    return out


def _dimension(key: str, spec: Any, leaves: dict[str, Any], methods: list[str]) -> Dimension:
    where = f"search.{key}"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: got {spec!r}; allowed: a mapping with type and its range or choices")
    unknown = set(spec) - {"type", "low", "high", "choices", "when"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown; allowed: type, low, high, choices, when")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type: got {kind!r}; allowed: {', '.join(KINDS)}")
    when = {p: v if isinstance(v, list) else [v] for p, v in (spec.get("when") or {}).items()}
    dim = Dimension(key, kind, spec.get("low"), spec.get("high"), spec.get("choices"), when)
    if kind == "categorical":
        if not isinstance(dim.choices, list) or not dim.choices:
            raise ConfigError(f"{where}.choices: got {dim.choices!r}; allowed: a non-empty list")
    else:
        for bound in ("low", "high"):
            if isinstance(getattr(dim, bound), bool) or not isinstance(getattr(dim, bound), (int, float)):
                raise ConfigError(f"{where}.{bound}: got {getattr(dim, bound)!r}; allowed: a number")
        if not dim.low < dim.high:
            raise ConfigError(f"{where}: low {dim.low} >= high {dim.high}; allowed: low < high")
        if kind == "logfloat" and dim.low <= 0:
            raise ConfigError(f"{where}.low: got {dim.low}; allowed: > 0 for logfloat")
    if key == "baseline":
        from mcu_dist.baselines import BASELINES

        bad = [c for c in dim.choices or [] if c not in BASELINES]
        if kind != "categorical" or bad:
            raise ConfigError(f"{where}: got {bad or kind!r}; allowed: categorical over {', '.join(BASELINES.names())}")
    elif key.startswith("baseline."):
        from mcu_dist.baselines import BASELINES

        hp = key.split(".", 1)[1]
        lacking = [m for m in methods if hp not in BASELINES[m].defaults]
        if lacking:
            raise ConfigError(f"{where}: baseline {lacking[0]} has no hyperparameter {hp!r}; allowed: "
                              f"{', '.join(sorted(BASELINES[lacking[0]].defaults)) or 'none'}")
    elif key not in leaves:
        raise ConfigError(f"{where}: unknown config field; allowed: a dotted field of ExperimentConfig "
                          "(e.g. mcu.k), baseline or baseline.<hyperparameter>")
    else:
        tp = leaves[key]
        values = dim.choices if kind == "categorical" else [dim.low, dim.high]
        target = int if kind == "int" else tp
        for v in values:
            _coerce(target, v, where)
        if kind in ("float", "logfloat") and tp is int:
            raise ConfigError(f"{where}.type: {key} is an integer field; allowed: int or categorical")
    return dim


def parse_space(data: dict, source: str = "<dict>") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: allowed: a YAML mapping with fixed, search and sweep")
    unknown = set(data) - {"fixed", "search", "sweep"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section; allowed: fixed, search, sweep")
    fixed = flatten(data.get("fixed") or {})
    base = with_overrides(ExperimentConfig(), fixed)  # names a bad fixed key, checks its type
    sweep_data = data.get("sweep") or {}
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    for key in sweep_data:
        if key not in names:
            raise ConfigError(f"sweep.{key}: unknown field; allowed: {', '.join(sorted(names))}")
    from mcu_dist.config import from_dict

    sweep = from_dict(SweepConfig, sweep_data, "sweep.")
    sweep.validate()
    leaves = _leaf_types()
    search = data.get("search") or {}
    methods = list((search.get("baseline") or {}).get("choices") or base.baselines.methods)
    dims = [_dimension(k, v, leaves, methods) for k, v in search.items()]
    seen: dict[str, Dimension] = {}
    for d in dims:
        for parent, values in d.when.items():
            if parent not in seen:
                raise ConfigError(f"search.{d.key}.when: parent {parent!r} is not a dimension declared before it; "
                                  "allowed: an earlier categorical dimension")
            p = seen[parent]
            if p.kind != "categorical" or any(v not in p.choices for v in values):
                raise ConfigError(f"search.{d.key}.when: {values!r} are not choices of {parent}; allowed: "
                                  f"{p.choices}")
        seen[d.key] = d
    space = SearchSpace(fixed, dims, sweep, source)
    space.trial_config(_probe_params(dims)).validate()
    return space


def _probe_params(dims: list[Dimension]) -> dict[str, Any]:
    """One point of the space (first choices, lower bounds) to validate a whole trial config before Ray starts."""
    params: dict[str, Any] = {}
    for d in dims:
        if any(params.get(p) not in v for p, v in d.when.items()):
            continue
        params[d.key] = d.choices[0] if d.kind == "categorical" else (int(d.low) if d.kind == "int" else d.low)
    return params


def load_space(path: str | Path) -> SearchSpace:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space: {path} does not exist; allowed: a YAML file such as tune_spaces/default.yaml")
    with open(p) as f:
        data = yaml.safe_load(f)
    return parse_space(copy.deepcopy(data), str(p))
