"""``python -m mcu_dist.tuned --space tune_spaces/tuned_<scenario>.yaml``: tuned baselines first.

A tuned file has ``fixed``, ``sweep`` and ``tuned``::

    tuned:
      mode: research            # research: objective avg_gap (needs θ_r) | deployment: gap_cal
      baselines: [ft, ga, rl]   # each tuned over every hyperparameter it declares (mcu_dist/baselines)
      num_samples: 12           # Optuna TPE trials per baseline, on the tuning seed
      tuning_seed: 0
      seeds: [0, 1, 2]          # stage 2: the grid seeds x baselines, each baseline at its tuned values

Stage 1 tunes each baseline on its own objective only (the MCU rows never enter it); stage 2 runs the
normal trial (baseline, +BN, +line, +budget, MCU) on top of the tuned endpoint; stage 3 is the report.
This module parses and checks the file (every refusal is one line naming the field, before Ray starts)
and builds the per-stage spaces.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mcu_dist.config import ConfigError, flatten
from mcu_dist.tune_space import SearchSpace, _read_yaml, grid_from_dict, parse_space

MODES = {"research": "avg_gap", "deployment": "gap_cal"}
TUNED_FIELDS = ("mode", "baselines", "num_samples", "tuning_seed", "seeds")


@dataclass
class TunedPlan:
    mode: str
    baselines: list[str]
    num_samples: int
    tuning_seed: int
    seeds: list[int]
    data: dict[str, Any] = field(default_factory=dict)  # fixed and sweep sections, as read
    source: str = ""

    @property
    def objective(self) -> str:
        return MODES[self.mode]

    def tuning_space(self, method: str) -> SearchSpace:
        """Stage 1 for one baseline: its declared hyperparameters, TPE, on the tuning seed."""
        from mcu_dist.baseline_trial import KIND
        from mcu_dist.baselines import BASELINES

        data = copy.deepcopy(self.data)
        data["fixed"] = {**(data.get("fixed") or {}), **_seeded(self.tuning_seed)}
        sweep = dict(data.get("sweep") or {})
        sweep.update(
            name=f"{sweep.get('name', 'tuned')}-tune-{method}",
            num_samples=self.num_samples,
            objective=self.objective,
            asha=False,
        )
        data["sweep"] = sweep
        data["search"] = {
            "baseline": {"type": "categorical", "choices": [method]},
            **{f"baseline.{hp}": "declared" for hp in BASELINES[method].space},
        }
        return dataclasses.replace(parse_space(data, f"{self.source} (tuning {method})"), trial_kind=KIND)

    def final_grid(self, tuned: dict[str, dict[str, Any]]) -> SearchSpace:
        """Stage 2: seeds x baselines, each baseline fixed at its tuned hyperparameters, the MCU path on."""
        data = copy.deepcopy(self.data)
        params = copy.deepcopy((data.get("fixed") or {}).get("baselines.params") or {})
        for method, hp in tuned.items():
            params.setdefault(method, {}).update(hp)
        data.setdefault("fixed", {})["baselines.params"] = params
        data["fixed"]["baselines.tuned"] = sorted(tuned)
        sweep = dict(data.get("sweep") or {})
        sweep.update(name=f"{sweep.get('name', 'tuned')}-final", objective=self.objective, asha=False)
        data["sweep"] = sweep
        data["grid"] = {"baseline": list(self.baselines), "seed": list(self.seeds)}
        return grid_from_dict(data, f"{self.source} (final)")


def _seeded(seed: int) -> dict[str, int]:
    return {f"seeds.{s}": seed for s in ("split", "model", "unlearn", "eval")}


def _int_list(value: Any, where: str) -> list[int]:
    if not isinstance(value, list) or not value or not all(isinstance(v, int) for v in value):
        raise ConfigError(f"{where}: got {value!r}; allowed: a non-empty list of integers")
    return value


def plan_from_dict(data: Any, source: str, seeds: list[int] | None = None) -> TunedPlan:
    """The tuned file, checked: each refusal is one line naming the field, before Ray starts."""
    from mcu_dist.baselines import BASELINES

    if not isinstance(data, dict) or not isinstance(data.get("tuned"), dict):
        raise ConfigError(f"{source}: tuned: allowed: a mapping with {', '.join(TUNED_FIELDS)}")
    data = copy.deepcopy(data)
    spec = data.pop("tuned")
    for key in ("search", "grid"):
        if key in data:
            raise ConfigError(f"{key}: not in a tuned file; allowed: fixed, sweep, tuned")
    if flatten(data.get("fixed") or {}).get("baselines.endpoint") is not None:
        raise ConfigError(
            "fixed.baselines.endpoint: a tuned file tunes registered baselines; allowed: no endpoint "
            "(wrap your own θ_p with python -m mcu_dist.sweep or ablate)"
        )
    for key in spec:
        if key not in TUNED_FIELDS:
            raise ConfigError(f"tuned.{key}: unknown field; allowed: {', '.join(TUNED_FIELDS)}")
    mode = spec.get("mode", "research")
    if mode not in MODES:
        raise ConfigError(f"tuned.mode: got {mode!r}; allowed: research (avg_gap), deployment (gap_cal)")
    methods = spec.get("baselines")
    if not isinstance(methods, list) or not methods:
        raise ConfigError(f"tuned.baselines: got {methods!r}; allowed: a non-empty list of baselines")
    known = sorted(BASELINES.names())
    for m in methods:
        if m not in known:
            raise ConfigError(f"tuned.baselines: unknown baseline {m!r}; allowed: {', '.join(known)}")
        if not BASELINES[m].space:
            raise ConfigError(
                f"tuned.baselines: {m} declares no hyperparameter range to tune; allowed: "
                f"{', '.join(k for k in known if BASELINES[k].space)}"
            )
    if len(set(methods)) != len(methods):
        raise ConfigError(f"tuned.baselines: got {methods!r}; allowed: each baseline once")
    n = spec.get("num_samples", 12)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ConfigError(f"tuned.num_samples: got {n!r}; allowed: an integer >= 1 (trials per baseline)")
    tuning_seed = spec.get("tuning_seed", 0)
    if not isinstance(tuning_seed, int) or isinstance(tuning_seed, bool):
        raise ConfigError(f"tuned.tuning_seed: got {tuning_seed!r}; allowed: an integer")
    seed_list = _int_list(seeds if seeds is not None else spec.get("seeds", [0, 1, 2]), "tuned.seeds")
    plan = TunedPlan(mode, list(methods), n, tuning_seed, seed_list, data, source)
    for m in methods:  # each stage's space parses (fixed fields, sweep fields, declared ranges) now
        plan.tuning_space(m)
    plan.final_grid({})
    return plan


def load_plan(path: str, seeds: list[int] | None = None) -> TunedPlan:
    return plan_from_dict(_read_yaml(path), str(path), seeds)


def tuning_trainable(config: dict, context: dict) -> None:
    """The Ray Tune function trainable of stage 1: one baseline-tuning trial."""
    from ray import tune

    from mcu_dist import sweep
    from mcu_dist.baseline_trial import run_baseline_trial

    space: SearchSpace = context["space"]
    tune.report(run_baseline_trial(sweep._searched(space, config), sweep.trial_context(context)))


def build_tuning_tuner(space: SearchSpace, storage: str, context: dict, resume: bool):
    """Stage 1's tuner: seeded Optuna TPE over one baseline's declared hyperparameters, no scheduler."""
    from ray import tune

    from mcu_dist import fs, sweep

    trainable = sweep.with_trial_resources(tune.with_parameters(tuning_trainable, context=context), space)
    path = fs.join(storage, space.sweep.name)
    if resume:
        sweep.check_resumable(path)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, restart_errored=False)
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=sweep.make_searcher(space),
            num_samples=space.sweep.num_samples,
            max_concurrent_trials=space.sweep.max_concurrent,
        ),
        run_config=sweep.run_config(space, storage, context),
    )


def best_of(storage: str, name: str, objective: str) -> dict[str, Any]:
    """The stage-1 record of one baseline, from the sweep's trials table (best first)."""
    import io

    import pyarrow.parquet as pq

    from mcu_dist import fs

    rows = pq.read_table(io.BytesIO(fs.read_bytes(fs.join(storage, name, "trials.parquet")))).to_pylist()
    ok = [r for r in rows if r.get("status") == "OK" and r.get(objective) is not None]
    if not ok:
        raise ConfigError(f"tuned: no tuning trial of {name} finished; see {storage}/{name}")
    best = min(ok, key=lambda r: r[objective])
    hp = {k.split(".", 2)[2]: v for k, v in best.items() if k.startswith("param.baseline.")}
    return {
        "hyperparameters": hp,
        objective: best[objective],
        "trial_id": best["trial_id"],
        "trials": len(rows),
    }


def _finished(path: str) -> bool:
    """A stage that ended with every trial done (its summary written, no failed trial): nothing to resume."""
    import json

    from mcu_dist import fs

    summary = fs.join(path, "summary.json")
    return fs.exists(summary) and json.loads(fs.read_bytes(summary)).get("failed", 1) == 0


def tune_can_restore(path: str) -> bool:
    from ray import tune

    return tune.Tuner.can_restore(path)


def parse_args(argv: list[str] | None):
    import argparse

    p = argparse.ArgumentParser(prog="python -m mcu_dist.tuned", description=__doc__.splitlines()[0])
    p.add_argument("--space", required=True, help="a tuned file (tune_spaces/tuned_*.yaml)")
    p.add_argument("--seeds", help="stage-2 seeds, comma separated (default: the file's tuned.seeds)")
    p.add_argument("--storage", help="as for mcu_dist.sweep (default ~/mcu_dist_runs)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, made absolute)")
    p.add_argument("--experiment", help="MLflow experiment of stage 2 (default: the sweep name)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    p.add_argument("--resume", action="store_true", help="continue the stages stored under --storage")
    p.add_argument("--smoke-test", action="store_true", help="everything shrunk, on digits")
    p.add_argument("--verbose", action="store_true", help="Tune's progress tables")
    return p.parse_args(argv)


def _seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()] or None
    except ValueError:
        raise ConfigError(f"--seeds: got {text!r}; allowed: integers separated by commas (0,1,2)") from None


CONTROLS = (  # (trial metric, row label): what MCU's mean Avg. Gap is held against
    ("baseline_avg_gap", "tuned baseline"),
    ("baseline_bn_avg_gap", "+BN"),
    ("line_avg_gap", "+line"),
    ("budget_avg_gap", "+budget"),
)


def _gain_lines(storage: str, name: str, baselines: list[str]) -> list[str]:
    """Per baseline: MCU's mean Avg. Gap against the tuned baseline and its control rows."""
    import io
    import statistics

    import pyarrow.parquet as pq

    from mcu_dist import fs

    rows = pq.read_table(io.BytesIO(fs.read_bytes(fs.join(storage, name, "trials.parquet")))).to_pylist()
    lines = []
    for m in baselines:
        done = [r for r in rows if r.get("param.baseline") == m and r.get("avg_gap") is not None]
        if not done:
            lines.append(f"  {m}: no finished seed")
            continue

        def ms(key: str, done: list = done) -> str:
            vals = [float(r[key]) for r in done if r.get(key) is not None]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            return f"{statistics.fmean(vals):.2f} ± {sd:.2f}" if vals else "n/a"

        mcu = statistics.fmean(float(r["avg_gap"]) for r in done)
        versus = []
        for key, label in CONTROLS:
            vals = [float(r[key]) for r in done if r.get(key) is not None]
            if vals:
                versus.append(f"{'beats' if mcu < statistics.fmean(vals) else 'not'} {label}")
        shown = [(key, label) for key, label in CONTROLS[1:] if any(r.get(key) is not None for r in done)]
        controls = "".join(f", {label} {ms(key)}" for key, label in shown)
        lines.append(
            f"  {m}: tuned baseline {ms('baseline_avg_gap')}{controls}, +MCU {ms('avg_gap')} "
            f"over {len(done)} seeds: {'; '.join(versus)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    import sys

    import yaml

    from mcu_dist import ablate, fs, report, sweep

    args = parse_args(argv)
    try:
        plan = load_plan(args.space, _seeds(args.seeds))
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    common = [args.space]
    for flag, value in (("--storage", args.storage), ("--tracking-uri", args.tracking_uri)):
        if value:
            common += [flag, value]
    if args.address:
        common += ["--address", args.address]
    for flag in ("smoke_test", "verbose"):
        if getattr(args, flag):
            common.append("--" + flag.replace("_", "-"))
    name = (plan.data.get("sweep") or {}).get("name", "tuned")
    experiment = args.experiment or name
    storage = str(fs.check_location(args.storage or sweep.default_storage(), "--storage"))

    def stage(space: SearchSpace, experiment: str, factory) -> int | None:
        """One stage's sweep: skipped when ``--resume`` finds it finished, continued when it was cut off."""
        path = fs.join(storage, space.sweep.name)
        if args.resume and _finished(path):
            print(f"  {space.sweep.name}: finished earlier, kept", flush=True)
            return 0
        resume = ["--resume"] if args.resume and tune_can_restore(path) else []
        return sweep.main(
            ["--space", *common, *resume, "--experiment", experiment],
            loader=lambda _: space,
            tuner_factory=factory,
        )

    tuned: dict[str, dict[str, Any]] = {}
    for method in plan.baselines:  # stage 1: each baseline on its own objective, MCU nowhere in sight
        space = plan.tuning_space(method)
        print(f"stage 1/3: tuning {method} on {plan.objective} ({plan.num_samples} trials)", flush=True)
        if stage(space, f"{experiment}-tuning", build_tuning_tuner) == 2:
            return 2
        tuned[method] = best_of(storage, space.sweep.name, plan.objective)
        print(f"  {method}: {tuned[method]}", flush=True)
    record = {
        "mode": plan.mode,
        "objective": plan.objective,
        "tuning_seed": plan.tuning_seed,
        "baselines": tuned,
    }
    with fs.staged(fs.join(storage, name)) as out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuned.yaml").write_text(yaml.safe_dump(record, sort_keys=False))
    grid = plan.final_grid({m: r["hyperparameters"] for m, r in tuned.items()})
    print(
        f"stage 2/3: {len(plan.seeds)} seeds x {len(plan.baselines)} tuned baselines, MCU on top", flush=True
    )
    rc = stage(grid, experiment, ablate.build_grid_tuner)
    if rc == 2:
        return 2
    _log_tuned(args.tracking_uri, experiment, fs.join(storage, name, "tuned.yaml"))
    print("stage 3/3: tuned baseline vs tuned baseline + MCU", flush=True)
    rargs = ["--experiment", experiment, "--out", fs.join(storage, name, "report")]
    if args.tracking_uri:
        rargs += ["--tracking-uri", args.tracking_uri]
    report.main(rargs)
    lines = _gain_lines(storage, grid.sweep.name, plan.baselines)
    print("\n".join(lines))
    with fs.staged(fs.join(storage, name, "report")) as out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "tuned_vs_mcu.txt").write_text("\n".join(lines) + "\n")
    return rc


def _log_tuned(uri: str | None, experiment: str, path: str) -> None:
    """tuned.yaml on stage 2's parent (sweep) run."""
    from mcu_dist import fs
    from mcu_dist.tracking import KIND_TAG, Tracker, resolve_tracking_uri

    tracker = Tracker(resolve_tracking_uri(uri), experiment)
    runs = tracker.client.search_runs([tracker.experiment_id], f"tags.`{KIND_TAG}` = 'sweep'", max_results=1)
    if runs:
        tracker.log_text(runs[0].info.run_id, fs.read_bytes(path).decode(), "tuned.yaml")


if __name__ == "__main__":
    import sys

    sys.exit(main())
