"""Typed configuration: the one source of truth for every knob.

YAML files, command-line flags (fields carrying ``cli`` metadata) and tracking params are all
derived from these dataclasses. ``validate()`` runs before any compute and raises
:class:`ConfigError` with one line naming the field and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad configuration value; the message names the field and what is allowed."""


def _cli(flag: str, help: str, **kw: Any) -> dict:
    return {"cli": flag, "help": help, **kw}


def _check(cond: bool, name: str, allowed: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{name}: got {value!r}; allowed: {allowed}")


@dataclass
class DataConfig:
    dataset: str = field(default="digits", metadata=_cli("--dataset", "dataset name (registry)"))
    data_root: str | None = field(default=None, metadata=_cli("--data-root", "folder holding the dataset"))
    subset: int | None = field(default=None, metadata=_cli("--subset", "keep N training images per class"))
    download: bool = False
    augment: bool | None = field(
        default=None, metadata=_cli("--augment", "training augmentation (crop+flip); default: the dataset's")
    )
    test_fraction: float = 0.25  # digits only: its seeded stratified test split

    def validate(self) -> None:
        """Values alone; the dataset name and its folder are checked by ``mcu_dist.data.check_data``."""
        _check(self.subset is None or self.subset >= 1, "data.subset", "an integer >= 1", self.subset)
        _check(0 < self.test_fraction < 1, "data.test_fraction", "a number in (0, 1)", self.test_fraction)


@dataclass
class ForgetConfig:
    """``random:F`` | ``class:C[,C...]`` | ``classes:N`` | ``file:PATH``.

    ``file:PATH`` holds sample indices: one per line, or a .npy / .parquet file.
    """

    spec: str = field(
        default="classes:1", metadata=_cli("--forget", "random:0.1 | class:3,5 | classes:1 | file:PATH")
    )

    def parsed(self) -> tuple[str, Any]:
        kind, _, arg = self.spec.partition(":")
        try:
            if kind == "random":
                value: Any = float(arg)
            elif kind == "class":
                value = [int(c) for c in arg.split(",") if c.strip()]
            elif kind == "classes":
                value = int(arg)
            elif kind == "file":
                value = arg
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"forget.spec: got {self.spec!r}; allowed: random:F with F in (0, 1), "
                "class:C[,C...], classes:N, file:PATH"
            ) from None
        return kind, value

    def validate(self, num_classes: int | None = None) -> None:
        kind, value = self.parsed()
        if kind == "random":
            _check(0 < value < 1, "forget.spec", "random:F with F in (0, 1)", self.spec)
        elif kind == "class":
            _check(len(value) > 0, "forget.spec", "class:C[,C...] naming at least one class", self.spec)
            if num_classes is not None:
                _check(
                    all(0 <= c < num_classes for c in value),
                    "forget.spec",
                    f"class ids in 0..{num_classes - 1}",
                    self.spec,
                )
                _check(
                    len(set(value)) < num_classes,
                    "forget.spec",
                    "fewer classes than the dataset has",
                    self.spec,
                )
        elif kind == "classes":
            hi = (num_classes - 1) if num_classes else "num_classes-1"
            _check(
                value >= 1 and (num_classes is None or value < num_classes),
                "forget.spec",
                f"classes:N with 1 <= N <= {hi}",
                self.spec,
            )
        else:
            _check(Path(value).is_file(), "forget.spec", "file:PATH naming an existing index file", self.spec)

    @property
    def classwise(self) -> bool:
        return self.parsed()[0] in ("class", "classes")


@dataclass
class ModelConfig:
    name: str = field(default="small_cnn", metadata=_cli("--model", "model name or package.module:factory"))
    original: str | None = field(
        default=None, metadata=_cli("--original", "checkpoint of the user's own original model")
    )

    def validate(self) -> None:
        """The checkpoint; the model name is checked by ``mcu_dist.models.check_model``."""
        if self.original is not None:
            _check(
                Path(self.original).is_file(), "model.original", "an existing checkpoint file", self.original
            )


@dataclass
class TrainConfig:
    """Reference models (original, retrain): SGD + momentum, cosine. Each field left unset (None) takes the
    value of the reference recipe (``mcu_dist.recipes``: by name, or ``auto`` = chosen from the dataset
    and model); each one set overrides it."""

    epochs: int | None = field(
        default=None, metadata=_cli("--reference-epochs", "epochs of the original and retrained models")
    )
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    recipe: str = field(
        default="auto",
        metadata=_cli("--recipe", "reference recipe: auto (chosen from dataset and model) or a recipe name"),
    )

    BOUNDS = (  # (field, test of a set value, what is allowed); the recipe's name: recipes.check_recipe
        ("epochs", lambda v: v >= 1, "an integer >= 1"),
        ("lr", lambda v: v > 0, "a number > 0"),
        ("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"),
        ("weight_decay", lambda v: v >= 0, "a number >= 0"),
        ("batch_size", lambda v: v >= 1, "an integer >= 1"),
    )

    def validate(self, prefix: str = "reference") -> None:
        for name, ok, allowed in self.BOUNDS:
            value = getattr(self, name)
            if value is not None:
                _check(ok(value), f"{prefix}.{name}", allowed, value)


@dataclass
class BaselineConfig:
    methods: list[str] = field(
        default_factory=lambda: ["ft", "ga", "rl", "neggrad_plus", "salun", "negtv", "l1_sparse"],
        metadata=_cli("--methods", "comma-separated baseline names"),
    )
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # method -> hyperparameter overrides
    endpoint: str | None = field(
        default=None, metadata=_cli("--endpoint", "checkpoint of the user's own pre-unlearned model")
    )
    budget_control: bool = field(
        default=True,
        metadata=_cli(
            "--budget-control",
            "add <baseline>+budget: the baseline's own update continued from θ_p for mcu.epochs epochs",
        ),
    )

    tuned: list[str] = field(default_factory=list)  # methods whose params came from mcu_dist.tuned (a label)

    def primary(self) -> str:
        """The θ_p a sweep trial wraps: ``endpoint`` (the user's checkpoint) when ``baselines.endpoint`` is
        set, else the first method (the trial's ``baseline``)."""
        return USER_ENDPOINT if self.endpoint is not None else self.methods[0]

    def validate(self) -> None:
        """The endpoint; names and hyperparameters: ``mcu_dist.baselines.check_baselines``."""
        _check(
            len(self.methods) > 0 or self.endpoint is not None,
            "baselines.methods",
            "at least one method, or baselines.endpoint",
            self.methods,
        )
        _check(
            isinstance(self.tuned, list) and all(m in self.params for m in self.tuned),
            "baselines.tuned",
            "a list of methods with tuned values in baselines.params",
            self.tuned,
        )
        if self.endpoint is not None:
            _check(
                Path(self.endpoint).is_file(),
                "baselines.endpoint",
                "an existing checkpoint file",
                self.endpoint,
            )


USER_ENDPOINT = "endpoint"  # the name of the user's own θ_p in tables and trials

MASK_KINDS = ("gradient", "random", "random_matched")
MASK_MODES = ("paper", "budget")


@dataclass
class MCUConfig:
    """Curve training (MCU_METHOD.md sections 2-5); defaults are the paper's."""

    curve_order: int = field(default=2, metadata=_cli("--curve-order", "Bezier degree n >= 2"))
    k: float = field(default=0.5, metadata=_cli("--k", "fraction of parameters selected (1 = no mask)"))
    k_r: float = field(default=0.0, metadata=_cli("--k-r", "fraction excluded first by retain saliency"))
    mask: str = field(
        default="gradient",
        metadata=_cli(
            "--mask", "gradient | random | random_matched (random, same size as the gradient mask)"
        ),
    )
    mask_mode: str = field(
        default="paper",
        metadata=_cli("--mask-mode", "paper (select while below k, may overshoot) | budget (nearest to k)"),
    )
    beta: float = field(default=0.2, metadata=_cli("--beta", "beta of the fixed schedule"))
    # The β schedules to run, one path each; a path is named after its schedule (path.beta.variant_name):
    # fixed -> mcu (the paper's MCU), adaptive_step -> mcu_beta (the paper's MCU-β).
    beta_schedule: list[str] = field(
        default_factory=lambda: ["fixed", "adaptive_step"],
        metadata=_cli(
            "--beta-schedule", "beta schedules to run, one path each (fixed, adaptive_step, ...); empty: none"
        ),
    )
    beta_low: float = 0.01
    beta_high: float = 0.5
    beta_tau: float = 0.1  # temperature of the smooth schedule
    retain_fraction: float = 0.5
    lr: float = field(default=0.01, metadata=_cli("--curve-lr", "curve learning rate"))
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = field(default=10, metadata=_cli("--curve-epochs", "curve training epochs"))
    batch_size: int = 128

    def validate(self) -> None:
        """Values alone; the schedule name is checked by ``mcu_dist.path.beta.check_schedule``."""
        _check(
            len(set(self.beta_schedule)) == len(self.beta_schedule),
            "mcu.beta_schedule",
            "each schedule at most once",
            self.beta_schedule,
        )
        _check(self.curve_order >= 2, "mcu.curve_order", "an integer >= 2", self.curve_order)
        # k = 0 selects no tensor: nothing to train (refused only when a curve is asked for)
        _check(0 < self.k <= 1 or not self.beta_schedule, "mcu.k", "a number in (0, 1]", self.k)
        _check(0 <= self.k_r <= 1, "mcu.k_r", "a number in [0, 1]", self.k_r)
        _check(self.k + self.k_r <= 1, "mcu.k_r", f"k + k_r <= 1 (k is {self.k})", self.k_r)
        _check(self.mask in MASK_KINDS, "mcu.mask", ", ".join(MASK_KINDS), self.mask)
        _check(self.mask_mode in MASK_MODES, "mcu.mask_mode", ", ".join(MASK_MODES), self.mask_mode)
        _check(self.beta >= 0, "mcu.beta", "a number >= 0", self.beta)
        _check(
            0 <= self.beta_low <= self.beta_high, "mcu.beta_low", "0 <= beta_low <= beta_high", self.beta_low
        )
        _check(self.beta_tau > 0, "mcu.beta_tau", "a number > 0", self.beta_tau)
        _check(
            0 < self.retain_fraction <= 1, "mcu.retain_fraction", "a number in (0, 1]", self.retain_fraction
        )
        TrainConfig(self.epochs, self.lr, self.momentum, self.weight_decay, self.batch_size).validate("mcu")


@dataclass
class EvalConfig:
    t_points: int = 20  # evenly spaced over [0, 1], both ends included
    t_dense_near_one: int = 0  # extra points evenly spaced over [0.75, 1]
    t_grid: list[float] | None = None  # an explicit grid overrides the two above
    t_star_range: list[float] = field(  # the window t* is chosen in (paper: [0.75, 1])
        default_factory=lambda: [0.75, 1.0], metadata=_cli("--t-star-range", "window of t*: lo,hi")
    )
    # <baseline>+line: the same t* selection on the untrained straight line θ_o -> θ_p (one more path
    # evaluation per baseline), the control that shows what training the curve adds
    line_control: bool = field(
        default=True, metadata=_cli("--line-control", "evaluate the <baseline>+line control row")
    )
    bn_set: str = field(  # the samples BatchNorm statistics are re-estimated on at each θ(t)
        default="subset", metadata=_cli("--bn-set", "BN re-estimation set: train | retain | subset")
    )
    bn_set_size: int = 2000
    mia_cap: int = 2000
    bootstrap: int = field(
        default=1000,
        metadata=_cli("--bootstrap", "bootstrap replicates of the final rows' intervals (0: none)"),
    )
    shadow_draws: int = field(
        default=5,
        metadata=_cli("--shadow-draws", "MIA shadow-set draws of the final rows (1: the headline's only)"),
    )
    ci_level: float = 0.95  # percentile bootstrap interval
    batch_size: int = 512
    workers: int = 1  # processes evaluating t points in parallel; 0 = one per core

    def grid(self) -> list[float]:
        if self.t_grid is not None:
            return sorted(set(float(t) for t in self.t_grid))
        pts = [i / (self.t_points - 1) for i in range(self.t_points)]
        if self.t_dense_near_one:
            pts += [0.75 + 0.25 * i / (self.t_dense_near_one - 1) for i in range(self.t_dense_near_one)]
        return sorted(set(round(t, 10) for t in pts))

    def validate(self) -> None:
        _check(self.t_points >= 2, "eval.t_points", "an integer >= 2", self.t_points)
        _check(
            self.t_dense_near_one == 0 or self.t_dense_near_one >= 2,
            "eval.t_dense_near_one",
            "0 or >= 2",
            self.t_dense_near_one,
        )
        if self.t_grid is not None:
            _check(
                len(self.t_grid) >= 2 and all(0 <= t <= 1 for t in self.t_grid),
                "eval.t_grid",
                "at least two values in [0, 1]",
                self.t_grid,
            )
            _check(
                1.0 in [float(t) for t in self.t_grid],
                "eval.t_grid",
                "a grid that includes t = 1",
                self.t_grid,
            )
        _check(
            len(self.t_star_range) == 2,
            "eval.t_star_range",
            "[lo, hi] with 0 <= lo < hi <= 1",
            self.t_star_range,
        )
        lo, hi = self.t_star_range
        _check(0 <= lo < hi <= 1, "eval.t_star_range", "[lo, hi] with 0 <= lo < hi <= 1", self.t_star_range)
        _check(
            self.bn_set in ("train", "retain", "subset"),
            "eval.bn_set",
            "train, retain, subset",
            self.bn_set,
        )
        _check(self.bn_set_size >= 1, "eval.bn_set_size", "an integer >= 1", self.bn_set_size)
        _check(self.mia_cap >= 10, "eval.mia_cap", "an integer >= 10", self.mia_cap)
        _check(
            self.bootstrap == 0 or self.bootstrap >= 100,
            "eval.bootstrap",
            "0 or an integer >= 100",
            self.bootstrap,
        )
        _check(self.shadow_draws >= 1, "eval.shadow_draws", "an integer >= 1", self.shadow_draws)
        _check(0 < self.ci_level < 1, "eval.ci_level", "a number in (0, 1)", self.ci_level)
        _check(self.workers >= 0, "eval.workers", "an integer >= 0", self.workers)


@dataclass
class ScaleConfig:
    """Where curve training runs: in-process (1 CPU worker) or Ray Train DDP (>= 2 workers or a GPU)."""

    workers: int = field(
        default=1, metadata=_cli("--workers", "curve-training workers (>= 2: Ray Train DDP)")
    )
    gpu: bool = field(default=False, metadata=_cli("--gpu", "one GPU per worker (NCCL, SyncBatchNorm)"))
    cpus_per_worker: float = 1.0
    per_rank_t: bool = False  # default: the same t on every rank at each step
    storage: str | None = field(
        default=None,
        metadata=_cli("--storage", "Ray Train storage: a local dir, an NFS mount, or s3://bucket/prefix"),
    )
    max_failures: int = 2  # worker-group restarts from the latest checkpoint
    address: str | None = None  # Ray cluster to join; None: RAY_ADDRESS or a new local instance

    @property
    def distributed(self) -> bool:
        return self.workers >= 2 or self.gpu

    def validate(self) -> None:
        _check(self.workers >= 1, "scale.workers", "an integer >= 1", self.workers)
        _check(self.cpus_per_worker > 0, "scale.cpus_per_worker", "a number > 0", self.cpus_per_worker)
        _check(self.max_failures >= 0, "scale.max_failures", "an integer >= 0", self.max_failures)


@dataclass
class AccelConfig:
    """Accelerator switches, each for CUDA devices: on CPU training stays fp32 and NCHW (evaluation
    alone uses channels_last and small forward pieces on CPU too, where they halve inference time)."""

    bf16: bool = field(default=True, metadata=_cli("--bf16", "bf16 autocast of forward passes on CUDA"))
    channels_last: bool = field(
        default=True, metadata=_cli("--channels-last", "channels_last memory format for conv nets on CUDA")
    )
    tf32: bool = True  # TF32 matrix products and convolutions on CUDA (fp32 accumulate)
    eval_chunk: int = 0  # t points sharing one pass over the data; 0: the whole grid, 1: per point
    # eval-mode forward passes on a CPU run this many samples at a time, so activations stay in cache
    # (small CNN: 1.6x faster at 128 than at 512); 0: whole evaluation batches. Never changes BN
    # re-estimation, whose batches are eval.batch_size.
    cpu_forward_batch: int = 128

    def validate(self) -> None:
        _check(self.eval_chunk >= 0, "accel.eval_chunk", "an integer >= 0", self.eval_chunk)
        _check(
            self.cpu_forward_batch >= 0, "accel.cpu_forward_batch", "an integer >= 0", self.cpu_forward_batch
        )


@dataclass
class SeedConfig:
    """One seed per stage; ``--seed`` sets them all."""

    split: int = 0  # data split, subset and forget set
    model: int = 0  # initialisation and reference training
    unlearn: int = 0  # baselines and curve training
    eval: int = 0  # BN re-estimation subsets and MIA shadow sets

    def validate(self) -> None:
        for name in ("split", "model", "unlearn", "eval"):
            value = getattr(self, name)
            _check(0 <= value < 2**31, f"seeds.{name}", "an integer in [0, 2**31)", value)


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    forget: ForgetConfig = field(default_factory=ForgetConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    reference: TrainConfig = field(default_factory=TrainConfig)
    baselines: BaselineConfig = field(default_factory=BaselineConfig)
    mcu: MCUConfig = field(default_factory=MCUConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seeds: SeedConfig = field(default_factory=SeedConfig)
    scale: ScaleConfig = field(default_factory=ScaleConfig)
    accel: AccelConfig = field(default_factory=AccelConfig)
    cache_dir: str = field(
        default_factory=lambda: default_cache_dir(),
        metadata=_cli("--cache-dir", "model cache: a local dir or a URI (s3://...)"),
    )
    out: str = field(default="runs", metadata=_cli("--out", "parent folder of run folders (or s3://...)"))
    device: str = "cpu"
    max_loss: float = field(
        default=1e4,
        metadata=_cli(
            "--max-loss", "a training loss beyond this (or non-finite) stops the stage as diverged"
        ),
    )

    def validate(self) -> None:
        self.data.validate()
        self.forget.validate()
        self.model.validate()
        self.reference.validate()
        self.baselines.validate()
        self.mcu.validate()
        self.eval.validate()
        self.scale.validate()
        self.accel.validate()
        self.seeds.validate()
        _check(
            self.device == "cpu" or self.device.startswith("cuda"), "device", "cpu, cuda, cuda:N", self.device
        )
        _check(self.max_loss > 0, "max_loss", "a number > 0", self.max_loss)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """Every leaf field as ``section.field`` -> value (unset reference fields are None: the recipe's,
        which ``mcu_dist.recipes.resolved_params`` fills in for tracking)."""
        return flatten(self.to_dict())


SMOKE = {  # --smoke-test: everything shrunk so that a run takes seconds
    "reference.epochs": 2,
    "mcu.epochs": 1,
    "eval.t_points": 5,
    "eval.mia_cap": 200,
    "eval.bn_set_size": 256,
}


def default_cache_dir() -> str:
    return os.environ.get("MCU_DIST_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mcu_dist"
    )


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and all(isinstance(x, str) for x in v) and not key.endswith("params"):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, name)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: got {value!r}; allowed: a mapping of {tp.__name__} fields")
        return from_dict(tp, value, name + ".")
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: got {value!r}; allowed: a list")
        return [_coerce(args[0], v, name) for v in value]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: got {value!r}; allowed: a mapping")
        return dict(value)
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; allowed: true or false")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{name}: got {value!r}; allowed: a number")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(
                f"{name}: got {value!r}; allowed: {'an integer' if tp is int else 'a number'}"
            ) from None
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name}: got {value!r}; allowed: an integer")
        if tp is float and not math.isfinite(out):
            raise ConfigError(f"{name}: got {value!r}; allowed: a finite number")
        return out
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{name}: got {value!r}; allowed: a string")
        return str(value)
    return value


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) mapping; unknown keys are an error naming the key."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{prefix}{key}: unknown field; allowed: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in data.items()}
    return cls(**kwargs)


def merge(base: dict, overrides: dict) -> dict:
    out = dict(base)
    for k, v in overrides.items():
        out[k] = (
            merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params" else v
        )
    return out


def with_overrides(cfg: Any, dotted: dict[str, Any]) -> Any:
    """A copy of ``cfg`` with ``{"mcu.k": 0.1, ...}`` applied (types coerced, keys checked)."""
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return from_dict(type(cfg), merge(dataclasses.asdict(cfg), nested))


def load_yaml(path: str | Path, cls: type = ExperimentConfig) -> Any:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"--config: cannot read {path} ({getattr(e, 'strerror', None) or type(e).__name__}); "
            "allowed: a readable YAML file"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"--config: {path} is not valid YAML{where}; allowed: a YAML mapping") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: allowed: a YAML mapping of config sections")
    return from_dict(cls, data)


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)


def cli_fields(cls: type = ExperimentConfig, prefix: str = "") -> list[tuple[str, dataclasses.Field, Any]]:
    """(dotted name, field, type) of every field that carries a ``cli`` flag."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += cli_fields(tp, prefix + f.name + ".")
        elif "cli" in f.metadata:
            out.append((prefix + f.name, f, tp))
    return out
