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
      baseline.epochs:   declared    # the range each baseline declares for it (baselines/<unit>.py)
    sweep:                      # SweepConfig fields
      num_samples: 8

``when`` makes a dimension conditional: it exists only when its parent took one of the given
values (a value or a list). ``baseline`` picks the pre-unlearning method of a trial, and
``baseline.<hp>`` searches that method's hyperparameter (it must be declared by every method offered);
``declared`` in place of a range takes, for each method, the range the method itself declares, so a
baseline's search range is written once, beside its defaults.
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

from mcu_dist.baselines import BASELINES
from mcu_dist.config import ConfigError, ExperimentConfig, _coerce, flatten, from_dict, with_overrides
from mcu_dist.validation import validate

KINDS = ("float", "logfloat", "int", "categorical")


@dataclass
class SweepConfig:
    name: str = "mcu-sweep"
    num_samples: int = 8
    objective: str = "avg_gap"  # avg_gap (research, needs θ_r) | gap_cal (deployment, no retrained model)
    multi_objective: bool = False  # Pareto front over (objective, rte_min)
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # of gpu_resource; fractions pack trials (0.25: four on one GPU)
    reference_gpus: float = 0.0  # > 0: reference and baseline models are trained as Ray tasks (dispatch.py)
    reference_cpus: float = 1.0
    gpu_resource: str = "GPU"  # the resource a GPU request asks for (a custom one stands in on CPU machines)
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
        check(self.gpus_per_trial >= 0, "gpus_per_trial", "a number >= 0", self.gpus_per_trial)
        check(self.reference_gpus >= 0, "reference_gpus", "a number >= 0", self.reference_gpus)
        check(self.reference_cpus > 0, "reference_cpus", "a number > 0", self.reference_cpus)
        check(
            bool(self.gpu_resource),
            "gpu_resource",
            "a Ray resource name (GPU or a custom one)",
            self.gpu_resource,
        )
        check(
            not (self.asha and self.multi_objective), "asha", "false when multi_objective is true", self.asha
        )


@dataclass
class Dimension:
    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: list | None = None
    when: dict[str, list] = field(default_factory=dict)
    declared: dict[str, tuple] | None = (
        None  # baseline -> (low, high) its unit declares; low/high: their hull
    )

    def bounds(self, chosen: dict[str, Any]) -> tuple:
        if not self.declared:
            return self.low, self.high
        return self.declared.get(chosen.get("baseline"), next(iter(self.declared.values())))


@dataclass
class SearchSpace:
    fixed: dict[str, Any]
    dims: list[Dimension]
    sweep: SweepConfig
    source: str = ""
    grid: dict[str, list] | None = None  # an ablation grid: every cell of the cross product is a trial
    trial_kind: str = "mcu"  # what a trial runs: "mcu" (a path) or "baseline_tuning" (tuned's stage 1)

    def base_config(self) -> ExperimentConfig:
        return with_overrides(ExperimentConfig(), self.fixed)

    def methods(self) -> list[str]:
        """The registered baselines the trials wrap (none when they wrap the user's baselines.endpoint)."""
        dim = next((d for d in self.dims if d.key == "baseline"), None)
        if dim:
            return list(dim.choices)
        base = self.base_config().baselines
        return [] if base.endpoint is not None else list(base.methods)

    def suggest(self, trial) -> dict[str, Any]:
        """Optuna define-by-run: sample this space on ``trial``; parents before children."""
        chosen: dict[str, Any] = {}
        for d in self.dims:
            if any(chosen.get(parent) not in values for parent, values in d.when.items()):
                continue
            low, high = d.bounds(chosen)
            if d.kind == "float":
                chosen[d.key] = trial.suggest_float(d.key, low, high)
            elif d.kind == "logfloat":
                chosen[d.key] = trial.suggest_float(d.key, low, high, log=True)
            elif d.kind == "int":
                chosen[d.key] = trial.suggest_int(d.key, int(low), int(high))
            else:
                chosen[d.key] = trial.suggest_categorical(d.key, d.choices)
        return chosen

    def to_yaml(self) -> str:
        """The resolved space (flag overrides and defaults applied), as a grid file when it is one."""
        dims = {
            d.key: "declared"
            if d.declared
            else {
                k: v
                for k, v in (("type", d.kind), ("low", d.low), ("high", d.high), ("choices", d.choices))
                if v is not None
            }
            | ({"when": d.when} if d.when else {})
            for d in self.dims
        }
        body = {"grid": self.grid} if self.grid else {"search": dims}
        return yaml.safe_dump(
            {"fixed": dict(self.fixed), **body, "sweep": dataclasses.asdict(self.sweep)}, sort_keys=False
        )

    def trial_config(self, params: dict[str, Any]) -> ExperimentConfig:
        """What a trial runs: one baseline, one path under one β schedule (default adaptive_step)."""
        over = dict(self.fixed)
        method = params.get("baseline", (self.base_config().baselines.methods or [None])[0])
        hp = {k.split(".", 1)[1]: v for k, v in params.items() if k.startswith("baseline.")}
        over.update(
            {
                k: v
                for k, v in params.items()
                if k not in ("baseline", "seed") and not k.startswith("baseline.")
            }
        )
        if "seed" in params:
            over.update({f"seeds.{s}": params["seed"] for s in ("split", "model", "unlearn", "eval")})
        over["baselines.methods"] = [method] if method else []
        if hp:
            params_fixed = copy.deepcopy(over.get("baselines.params") or {})
            params_fixed.setdefault(method, {}).update(hp)
            over["baselines.params"] = params_fixed
        over.setdefault("mcu.beta_schedule", ["adaptive_step"])
        cfg = with_overrides(ExperimentConfig(), over)
        if len(cfg.mcu.beta_schedule) != 1:
            raise ConfigError(
                f"mcu.beta_schedule: got {cfg.mcu.beta_schedule!r}; allowed: one schedule per trial "
                "(search mcu.beta_schedule to compare several)"
            )
        return cfg


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


def _declared(key: str, methods: list[str]) -> dict[str, Any]:
    """``baseline.<hp>: declared``: each offered method's own declared range for ``hp``, as one dimension."""
    hp, where = key.split(".", 1)[1], f"search.{key}"
    for m in methods:
        if hp not in BASELINES[m].space:
            raise ConfigError(
                f"{where}: baseline {m} declares no search range for {hp!r}; allowed: "
                f"{', '.join(sorted(BASELINES[m].space)) or 'none'}, or a range written here"
            )
    specs = {m: BASELINES[m].space[hp] for m in methods}
    kinds = sorted({s["type"] for s in specs.values()})
    if len(kinds) != 1 or kinds[0] == "categorical":
        raise ConfigError(f"{where}: declared as {kinds}; allowed: one numeric type across {methods}")
    return {
        "type": kinds[0],
        "low": min(s["low"] for s in specs.values()),
        "high": max(s["high"] for s in specs.values()),
        "declared": {m: (s["low"], s["high"]) for m, s in specs.items()},
    }


def _dimension(key: str, spec: Any, leaves: dict[str, Any], methods: list[str]) -> Dimension:
    where = f"search.{key}"
    declared = None
    if spec == "declared" and key.startswith("baseline."):
        spec = _declared(key, methods)
        declared = spec.pop("declared")
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{where}: got {spec!r}; allowed: a mapping with type and its range or choices"
            + (", or 'declared' for a baseline.<hp>" if key.startswith("baseline.") else "")
        )
    unknown = set(spec) - {"type", "low", "high", "choices", "when"}
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown; allowed: type, low, high, choices, when")
    kind = spec.get("type")
    if kind not in KINDS:
        raise ConfigError(f"{where}.type: got {kind!r}; allowed: {', '.join(KINDS)}")
    if key == "baselines.endpoint":
        raise ConfigError(f"{where}: one checkpoint per space; allowed: baselines.endpoint in fixed")
    if key in ("baselines.methods", "baselines.params"):
        raise ConfigError(
            f"{where}: set per trial by the sweep; allowed: search 'baseline' and 'baseline.<hp>' instead"
        )
    raw_when = spec.get("when") or {}
    if not isinstance(raw_when, dict):
        raise ConfigError(
            f"{where}.when: got {raw_when!r}; allowed: a mapping parent -> value or list of values"
        )
    when = {p: v if isinstance(v, list) else [v] for p, v in raw_when.items()}
    if any(len(v) == 0 for v in when.values()):
        raise ConfigError(f"{where}.when: an empty list of parent values; allowed: at least one value")
    dim = Dimension(key, kind, spec.get("low"), spec.get("high"), spec.get("choices"), when, declared)
    if kind == "categorical":
        if not isinstance(dim.choices, list) or not dim.choices:
            raise ConfigError(f"{where}.choices: got {dim.choices!r}; allowed: a non-empty list")
    else:
        for bound in ("low", "high"):
            if isinstance(getattr(dim, bound), bool) or not isinstance(getattr(dim, bound), (int, float)):
                raise ConfigError(f"{where}.{bound}: got {getattr(dim, bound)!r}; allowed: a number")
        if kind == "int" and not (float(dim.low).is_integer() and float(dim.high).is_integer()):
            raise ConfigError(f"{where}: bounds {dim.low}, {dim.high}; allowed: integers for type int")
        if not dim.low < dim.high:
            raise ConfigError(f"{where}: low {dim.low} >= high {dim.high}; allowed: low < high")
        if kind == "logfloat" and dim.low <= 0:
            raise ConfigError(f"{where}.low: got {dim.low}; allowed: > 0 for logfloat")
    if key == "seed":
        for v in _extremes(dim):
            _coerce(int, v, where)
    elif key == "baseline":
        bad = [c for c in dim.choices or [] if c not in BASELINES]
        if kind != "categorical" or bad:
            raise ConfigError(
                f"{where}: got {bad or kind!r}; allowed: categorical over {', '.join(BASELINES.names())}"
            )
    elif key.startswith("baseline."):
        hp = key.split(".", 1)[1]
        lacking = [m for m in methods if hp not in BASELINES[m].defaults]
        if lacking:
            raise ConfigError(
                f"{where}: baseline {lacking[0]} has no hyperparameter {hp!r}; allowed: "
                f"{', '.join(sorted(BASELINES[lacking[0]].defaults)) or 'none'}"
            )
        for m in methods:
            if kind in ("float", "logfloat") and isinstance(BASELINES[m].defaults[hp], int):
                raise ConfigError(f"{where}.type: {m}.{hp} is an integer; allowed: int or categorical")
            for v in _extremes(dim):
                try:
                    BASELINES[m].resolve({hp: v})
                except ConfigError as e:
                    raise ConfigError(f"{where}: {v!r} is refused by {m} ({e})") from None
    elif key not in leaves:
        raise ConfigError(
            f"{where}: unknown config field; allowed: a dotted field of ExperimentConfig "
            "(e.g. mcu.k), baseline, baseline.<hyperparameter> or seed"
        )
    else:
        tp = leaves[key]
        target = int if kind == "int" else tp
        for v in _extremes(dim):
            _coerce(target, v, where)
        if kind in ("float", "logfloat") and tp is int:
            raise ConfigError(f"{where}.type: {key} is an integer field; allowed: int or categorical")
    return dim


def _extremes(d: Dimension) -> list:
    if d.kind == "categorical":
        return list(d.choices)
    return [int(d.low), int(d.high)] if d.kind == "int" else [d.low, d.high]


def parse_space(data: dict, source: str = "<dict>") -> SearchSpace:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: allowed: a YAML mapping with fixed, search and sweep")
    unknown = set(data) - {"fixed", "search", "sweep"}
    if unknown:
        raise ConfigError(f"{sorted(unknown)[0]}: unknown section; allowed: fixed, search, sweep")
    for section in ("fixed", "search", "sweep"):
        if data.get(section) is not None and not isinstance(data[section], dict):
            raise ConfigError(f"{section}: got {type(data[section]).__name__}; allowed: a mapping")
    fixed = flatten(data.get("fixed") or {})
    base = with_overrides(ExperimentConfig(), fixed)  # names a bad fixed key, checks its type
    validate(base)
    sweep_data = data.get("sweep") or {}
    names = {f.name for f in dataclasses.fields(SweepConfig)}
    for key in sweep_data:
        if key not in names:
            raise ConfigError(f"sweep.{key}: unknown field; allowed: {', '.join(sorted(names))}")
    sweep = from_dict(SweepConfig, sweep_data, "sweep.")
    sweep.validate()
    leaves = _leaf_types()
    search = data.get("search") or {}
    offered = search.get("baseline")
    if offered is not None and not isinstance(offered, dict):
        raise ConfigError(f"search.baseline: got {offered!r}; allowed: a mapping with type and choices")
    methods = list((offered or {}).get("choices") or base.baselines.methods)
    both = sorted(set(search) & set(fixed))
    if both:
        raise ConfigError(f"search.{both[0]}: also in fixed; allowed: a field either fixed or searched")
    if base.baselines.endpoint is not None:
        check_endpoint_dimensions(list(search))
    dims = [_dimension(k, v, leaves, methods) for k, v in search.items()]
    seen: dict[str, Dimension] = {}
    for d in dims:
        for parent, values in d.when.items():
            if parent not in seen:
                raise ConfigError(
                    f"search.{d.key}.when: parent {parent!r} is not a dimension declared before it; "
                    "allowed: an earlier categorical dimension"
                )
            p = seen[parent]
            if p.kind != "categorical" or any(v not in p.choices for v in values):
                raise ConfigError(
                    f"search.{d.key}.when: {values!r} are not choices of {parent}; allowed: {p.choices}"
                )
        seen[d.key] = d
    space = SearchSpace(fixed, dims, sweep, source)
    for culprit, params in _probe_points(dims):
        try:
            validate(space.trial_config(params))
        except ConfigError as e:
            raise ConfigError(f"search.{culprit}: the point {params} gives an invalid trial ({e})") from None
    return space


# what a user's θ_p was made from: its original (data, model, reference training, seeds of the split and
# of θ_o) and its forget set; a dimension that changes any of them would wrap the checkpoint around
# references it was not made from
ENDPOINT_FIXES = (
    "baseline",
    "seed",
    "seeds.split",
    "seeds.model",
    "data.",
    "forget.",
    "model.",
    "reference.",
)


def check_endpoint_dimensions(keys: list[str]) -> None:
    """With ``baselines.endpoint`` fixed: refuse dimensions that change what the endpoint was made from."""
    for key in keys:
        if any(key == f or key.startswith(f.rstrip(".") + ".") for f in ENDPOINT_FIXES):
            raise ConfigError(
                f"search.{key}: fixed sets baselines.endpoint, a θ_p made from one original and one forget "
                "set; allowed: dimensions that leave both alone (mcu.*, eval.*, seeds.unlearn, seeds.eval)"
            )


def _probe_points(dims: list[Dimension]) -> list[tuple[str, dict[str, Any]]]:
    """(dimension to blame, point): each extreme of each dimension alone, then all dimensions at their first
    and at their last extremes; every trial config there must validate, checked before Ray starts."""

    def point(pick) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for d in dims:
            if any(params.get(p) not in v for p, v in d.when.items()):
                continue
            params[d.key] = pick(d)
        return params

    points = []
    for target in dims:
        for value in _extremes(target):
            points.append((target.key, point(lambda d, t=target, v=value: v if d is t else _extremes(d)[0])))
    first = dims[0].key if dims else "fixed"
    return points + [(first, point(lambda d: _extremes(d)[0])), (first, point(lambda d: _extremes(d)[-1]))]


def grid_from_dict(data: Any, path: str) -> SearchSpace:
    """An ablation grid: ``grid: {key: [values...]}`` (keys as in ``search``, plus ``seed``); the cross
    product of the values is the set of trials."""
    data = copy.deepcopy(data)
    if not isinstance(data, dict) or not isinstance(data.get("grid"), dict) or not data["grid"]:
        raise ConfigError(f"{path}: grid: allowed: a mapping of keys to non-empty lists of values")
    grid = data.pop("grid")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"grid.{key}: got {values!r}; allowed: a non-empty list of values")
    data["search"] = {k: {"type": "categorical", "choices": v} for k, v in grid.items()}
    sweep = dict(data.get("sweep") or {})
    sweep["num_samples"] = 1
    for values in grid.values():
        sweep["num_samples"] *= len(values)
    data["sweep"] = sweep
    space = parse_space(data, str(path))
    space.grid = grid
    return space


def space_from_dict(data: Any, source: str) -> SearchSpace:
    """A search space, or an ablation grid when the mapping has a ``grid`` section."""
    if isinstance(data, dict) and "grid" in data:
        return grid_from_dict(data, source)
    return parse_space(copy.deepcopy(data), source)


def _read_yaml(path: str | Path) -> Any:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"--space: {path} does not exist; allowed: a YAML file such as tune_spaces/default.yaml"
        )
    try:
        with open(p) as f:
            return yaml.safe_load(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}; allowed: a YAML mapping of fixed, search, sweep"
        ) from None


def load_space(path: str | Path) -> SearchSpace:
    return space_from_dict(_read_yaml(path), str(path))
