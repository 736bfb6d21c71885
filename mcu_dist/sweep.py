"""``python -m mcu_dist.sweep``: Ray Tune + Optuna (TPE) over a YAML search space, every path in MLflow.

Works the same locally (starts a local Ray) and under ``ray job submit`` (joins the cluster). Before
any trial starts: the space is validated, the tracking store is reached, and the original, retrained
and default-setting baseline models are trained once into the shared cache. Each trial is one
baseline + one MCU path, reported to Tune and logged as a nested MLflow child run; a failing trial is
recorded (Tune: ERROR, MLflow: FAILED) and the sweep goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from mcu_dist.config import SMOKE, ConfigError
from mcu_dist.evaluate.names import SUMMARY_METRICS
from mcu_dist.guard import DivergenceError
from mcu_dist.services import (
    ServiceError,
    hold_sweep_lock,
    probe_tracking,
    redact,
    redact_text,
    safe_name,
    use_credentials,
    writable_dir,
)
from mcu_dist.tune_space import SearchSpace, load_space
from mcu_dist.validation import validate

DEFAULT_SPACE = Path(__file__).resolve().parent.parent / "tune_spaces" / "default.yaml"


def default_storage() -> str:
    return str(Path(os.environ.get("MCU_DIST_STORAGE", Path.home() / "mcu_dist_runs")).resolve())


def in_ray_job() -> bool:
    return "RAY_JOB_ID" in os.environ or "runtime_resources" in str(Path.cwd())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m mcu_dist.sweep", description=__doc__.splitlines()[0])
    p.add_argument(
        "--space",
        "--grid",
        dest="space",
        default=str(DEFAULT_SPACE),
        help="YAML search space or ablation grid (tune_spaces/*.yaml)",
    )
    p.add_argument("--num-samples", type=int, help="trials (overrides the space's sweep.num_samples)")
    p.add_argument("--max-concurrent", type=int, help="trials at once")
    p.add_argument(
        "--storage",
        help="storage for Tune, Train checkpoints and the model cache: a local path, or an "
        "NFS mount on multi-node clusters (default ~/mcu_dist_runs)",
    )
    p.add_argument("--name", help="sweep name (default: the space's sweep.name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep stored under --storage/--name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, made absolute)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep name)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    p.add_argument("--smoke-test", action="store_true", help="2 tiny trials on digits, in seconds")
    return p.parse_args(argv)


def resolve(args: argparse.Namespace, loader=load_space) -> tuple[SearchSpace, str, str, str]:
    """Space (flag overrides applied), storage path, tracking URI, experiment; checked before Ray starts."""
    from mcu_dist.tracking import resolve_tracking_uri

    space = loader(args.space)
    sweep = space.sweep
    if args.num_samples is not None:
        sweep.num_samples = args.num_samples
    if args.max_concurrent is not None:
        sweep.max_concurrent = args.max_concurrent
    if args.name:
        sweep.name = args.name
    safe_name(sweep.name, "--name")  # a folder under --storage and an MLflow filter value
    if args.experiment:
        safe_name(args.experiment, "--experiment")
    if args.smoke_test:
        space.fixed.update({**SMOKE, "data.dataset": "digits"})
        space.fixed.setdefault("model.name", "small_cnn")
        if args.num_samples is None:
            sweep.num_samples = min(sweep.num_samples, 2)
        sweep.asha = False
    sweep.validate()
    storage = args.storage or default_storage()
    if "://" in storage:
        raise ConfigError(
            f"--storage: got {storage!r}; allowed: a local path or a shared (NFS) mount, since the "
            "model cache and the curve checkpoints live under it"
        )
    storage = str(writable_dir(Path(storage).resolve(), "--storage"))
    if args.resume:
        check_resumable(f"{storage.rstrip('/')}/{sweep.name}")
    space.fixed.setdefault("cache_dir", str(Path(storage) / "cache"))
    space.fixed.setdefault("scale.storage", str(Path(storage) / "train"))
    base = space.base_config()
    from mcu_dist.data.registry import DATASETS, default_root

    if (
        DATASETS[base.data.dataset].needs_root
        and base.data.data_root is None
        and default_root(base.data.dataset)
    ):
        space.fixed["data.data_root"] = str(
            Path(default_root(base.data.dataset)).resolve()
        )  # workers see it too
    validate(space.base_config())
    writable_dir(space.base_config().cache_dir, "cache_dir")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and in_ray_job():
        uri = f"sqlite:///{Path(storage) / 'mlflow.db'}"  # a job's working directory is thrown away
    return space, storage, resolve_tracking_uri(uri), args.experiment or sweep.experiment or sweep.name


REFERENCE_KEYS = ("forget.spec", "seed")
REFERENCE_PREFIXES = ("data.", "model.", "reference.", "seeds.")


def check_resumable(path: str) -> None:
    """``--resume`` is checked before anything is trained or opened in MLflow."""
    from ray import tune

    if not tune.Tuner.can_restore(path):
        raise ConfigError(
            f"--resume: no sweep to resume at {path}; allowed: the --storage and --name of an earlier sweep"
        )


def reference_cells(space: SearchSpace) -> list[dict[str, Any]]:
    """One params dict per distinct set of reference models: the grid's categorical dimensions that change
    the data, the forget set, the model or the seeds (for a sampled space: the base config only)."""
    import itertools

    if not space.grid:
        return [{}]
    keys = [k for k in space.grid if k in REFERENCE_KEYS or k.startswith(REFERENCE_PREFIXES)]
    return [
        dict(zip(keys, values, strict=True)) for values in itertools.product(*(space.grid[k] for k in keys))
    ]


def prepare_shared_models(space: SearchSpace, log=print) -> None:
    """Original, retrained, and every offered baseline at its default settings, per reference cell: trained
    once, before trials fan out, into the shared cache."""
    from mcu_dist.lab import Lab
    from mcu_dist.references import endpoints, prepare_references

    trained = 0
    for cell in reference_cells(space):
        lab = Lab.build(space.trial_config(cell))
        endpoints(lab, prepare_references(lab, mask=False).original, space.methods())
        trained += len(lab.cache.trained)
    log(
        f"shared models ready ({trained} trained now, "
        f"the rest from the cache {space.base_config().cache_dir})"
    )


def make_searcher(space: SearchSpace, sampler=None):
    """OptunaSearch over the space (define-by-run): seeded TPE, or NSGA-II over (objective, RTE)."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    sweep = space.sweep
    metric: Any = [sweep.objective, "rte_min"] if sweep.multi_objective else sweep.objective
    mode: Any = ["min", "min"] if sweep.multi_objective else "min"
    if sampler is None:
        sampler = (
            optuna.samplers.NSGAIISampler(seed=sweep.seed)
            if sweep.multi_objective
            else optuna.samplers.TPESampler(seed=sweep.seed, multivariate=True, group=True)
        )
    return OptunaSearch(space=space.suggest, metric=metric, mode=mode, sampler=sampler)


def build_tuner(space: SearchSpace, storage: str, context: dict, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    sweep = space.sweep
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, context=context), {"CPU": sweep.cpus_per_trial}
    )
    path = f"{storage.rstrip('/')}/{sweep.name}"
    if resume:
        check_resumable(path)
        return tune.Tuner.restore(path, trainable=trainable, resume_errored=True, restart_errored=False)
    searcher = make_searcher(space)
    scheduler = None
    if sweep.asha:
        scheduler = ASHAScheduler(
            metric=sweep.objective,
            mode="min",
            time_attr="epoch",
            grace_period=sweep.asha_grace_epochs,
            max_t=space.base_config().mcu.epochs + 1,
        )
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=sweep.num_samples,
            max_concurrent_trials=sweep.max_concurrent,
        ),
        run_config=tune.RunConfig(
            name=sweep.name,
            storage_path=storage,
            verbose=1,
            failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
        ),
    )


def tune_trainable(config: dict, context: dict) -> None:
    """The Ray Tune function trainable: one trial."""
    from ray import tune

    from mcu_dist.trial import TrialContext, run_trial

    trial_id = tune.get_context().get_trial_id()
    space: SearchSpace = context["space"]  # parsed and checked once, by the driver
    ctx = TrialContext(
        space,
        context["tracking_uri"],
        context["experiment"],
        context["parent_run_id"],
        trial_id,
        Path(context["storage_dir"]) / "trials" / trial_id,
    )
    params = {k: v for k, v in config.items() if k in {d.key for d in space.dims}}
    tune.report(run_trial(params, ctx, report=tune.report))


def reachable(address: str, timeout: float = 5.0) -> bool:
    """A cheap TCP probe of a ``host:port`` Ray address, so that a wrong address fails in seconds."""
    import socket

    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or "://" in address:
        return True  # "auto", ray:// client addresses: let Ray resolve them
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return True
    except OSError:
        return False


def pareto_front(rows: list[dict], keys: tuple[str, str]) -> list[dict]:
    a, b = keys
    done = [r for r in rows if r.get(a) is not None and r.get(b) is not None]
    return [
        r
        for r in done
        if not any(o[a] <= r[a] and o[b] <= r[b] and (o[a] < r[a] or o[b] < r[b]) for o in done)
    ]


def summarize(results, space: SearchSpace) -> list[dict]:
    rows = []
    for r in results:
        m = r.metrics or {}
        row = {
            "trial_id": m.get("trial_id") or Path(r.path).name,
            "status": "ERROR" if r.error else "OK",
            "error": str(r.error)[:500] if r.error else None,
        }
        row.update({f"param.{k}": v for k, v in (r.config or {}).items()})
        if m.get("final") == 1:
            row.update({k: m.get(k) for k in SUMMARY_METRICS})
        rows.append(row)
    key = space.sweep.objective
    return sorted(rows, key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else 0))


def format_best(rows: list[dict], objective: str, n: int = 5) -> str:
    head = (
        f"{'trial':<14}{objective:>9}{'base':>8}{'budget':>8}{'UA':>7}{'RA':>7}{'TA':>7}{'MIA':>7}{'t*':>6}"
        f"{'mask%':>7}  params"
    )
    lines = [head, "-" * len(head)]
    for r in rows[:n]:
        if r.get(objective) is None:
            lines.append(f"{r['trial_id']:<14}{'failed':>9}  {r.get('error') or ''}"[:160])
            continue
        params = ", ".join(
            f"{k[6:]}={v:.3g}" if isinstance(v, float) else f"{k[6:]}={v}"
            for k, v in r.items()
            if k.startswith("param.")
        )
        budget = f"{r['budget/avg_gap']:8.2f}" if r.get("budget/avg_gap") is not None else f"{'':8}"
        sel = f"{100 * r['mask_fraction']:7.1f}" if r.get("mask_fraction") is not None else f"{'':7}"
        lines.append(
            f"{r['trial_id']:<14}{r[objective]:9.3f}{r['baseline_avg_gap'] or 0:8.2f}{budget}{r['UA']:7.1f}"
            f"{r['RA']:7.1f}{r['TA']:7.1f}{r['MIA']:7.1f}{r['t_star']:6.2f}{sel}  {params}"
        )
    return "\n".join(lines)


class _Refused(Exception):
    """A sweep refused before its first trial; the message is the one error line."""


def main(argv: list[str] | None = None, *, loader=load_space, tuner_factory=None) -> int:
    """The sweep (and, with a grid loader and tuner, the ablation grid of ``mcu_dist.ablate``)."""
    try:
        return _run(parse_args(argv), loader, tuner_factory or build_tuner)
    except (ConfigError, _Refused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _connect_ray(address: str | None, uri: str) -> None:
    import ray

    if not ray.is_initialized():
        if address and not reachable(address):
            raise _Refused(
                f"--address: nothing answers at {address}; allowed: the address of a running Ray cluster "
                "(ray start --head), or none for a local instance"
            )
        try:
            ray.init(address=address, log_to_driver=False) if address else ray.init(log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise _Refused(
                f"--address: cannot reach the Ray cluster at {address} ({type(e).__name__}); allowed: the "
                "address of a running cluster (ray start --head), or none for a local instance"
            ) from None
    if uri.startswith("sqlite:") and sum(n["Alive"] for n in ray.nodes()) > 1:
        raise _Refused(
            f"--tracking-uri: {uri} is a file on one node, and this cluster has several; allowed: an MLflow "
            "tracking server every node reaches (http://...)"
        )


def _run(args: argparse.Namespace, loader, tuner_factory) -> int:
    space, storage, uri, experiment = resolve(args, loader)
    from mcu_dist.tracking import KIND_TAG, Tracker

    try:
        probe_tracking(use_credentials(uri))  # bounded, before anything is written
        _lock = hold_sweep_lock(f"{storage.rstrip('/')}/{space.sweep.name}")  # held until the process ends
        tracker = Tracker(uri, experiment)
        tracker.check()
    except ServiceError:
        raise
    except Exception as e:  # the store answered the probe, then failed
        raise _Refused(
            f"--tracking-uri: cannot use {redact(uri)} ({type(e).__name__}: "
            f"{redact_text(str(e)).splitlines()[0][:200]}); allowed: a reachable MLflow tracking server or a "
            "sqlite:/// path"
        ) from None
    _connect_ray(args.address or os.environ.get("RAY_ADDRESS"), uri)
    sweep = space.sweep
    print(
        f"sweep {sweep.name}: {space.source}, {sweep.num_samples} trials, objective {sweep.objective}; "
        f"storage {storage}; MLflow {redact(uri)} experiment {experiment}",
        flush=True,
    )
    start = time.perf_counter()
    try:
        prepare_shared_models(space)
    except DivergenceError as e:  # before the parent run: nothing to close in MLflow
        print(f"error: {e}", file=sys.stderr)
        return 1
    storage_dir = f"{storage.rstrip('/')}/{sweep.name}"
    parent = tracker.start_run(
        sweep.name, {KIND_TAG: "sweep", "mcu.sweep_path": storage_dir}, reuse=args.resume
    )
    tracker.log_params(
        parent, {**space.base_config().flat(), **{f"sweep.{k}": v for k, v in vars(sweep).items()}}
    )
    tracker.log_text(parent, space.to_yaml(), "space.yaml")
    context = {
        "space": space,
        "tracking_uri": uri,
        "experiment": experiment,
        "parent_run_id": parent,
        "storage_dir": storage_dir,
    }
    try:
        tuner = tuner_factory(space, storage, context, args.resume)
        fit_start = time.perf_counter()
        results = tuner.fit()
        fit_s = time.perf_counter() - fit_start
    except BaseException as e:  # a refusal, Ctrl-C, a Tune failure: the parent run still ends, with the cause
        with contextlib.suppress(Exception):
            tracker.fail_run(parent, f"{type(e).__name__}: {e}")
        raise
    rows = summarize(results, space)
    ok = [r for r in rows if r["status"] == "OK" and r.get(sweep.objective) is not None]
    # a trial whose process died (OOM, a lost node) could not close its own MLflow run
    tracker.close_orphans(parent, {Path(r.path).name: str(r.error) for r in results if r.error})
    from mcu_dist.store import write_table, write_text

    table = Path(storage_dir) / "trials.parquet"
    write_table(rows or [{"trial_id": None}], table)
    tracker.log_artifact(parent, table)
    compute = sum(float((r.metrics or {}).get("trial_s") or 0) for r in results)
    summary = {
        "trials": len(rows),
        "completed": len(ok),
        "failed": len(rows) - len(ok),
        "wall_s": time.perf_counter() - start,
        "fit_s": fit_s,
        "trial_compute_s": compute,
        # what a trial costs beyond its own compute, with max_concurrent trials sharing the fit's wall time
        "overhead_per_trial_s": max(0.0, fit_s * min(sweep.max_concurrent, len(rows) or 1) - compute)
        / max(len(rows), 1),
    }
    write_text(Path(storage_dir) / "summary.json", json.dumps(summary, indent=1))
    if ok:
        summary["best_" + sweep.objective] = ok[0][sweep.objective]
        tracker.set_tags(parent, {"mcu.best_trial": ok[0]["trial_id"]})
    if sweep.multi_objective:
        front = pareto_front(ok, (sweep.objective, "rte_min"))
        write_table(front or [{"trial_id": None}], Path(storage_dir) / "pareto.parquet")
        tracker.log_artifact(parent, Path(storage_dir) / "pareto.parquet")
    tracker.log_metrics(parent, summary)
    tracker.end_run(parent, "FINISHED")
    print()
    print(format_best(rows, sweep.objective))
    print(
        f"\n{summary['completed']}/{summary['trials']} trials completed in {summary['wall_s']:.0f} s "
        f"(trials {summary['fit_s']:.0f} s, their own compute {summary['trial_compute_s']:.0f} s). "
        f"MLflow: {tracker.ui_hint(parent)}"
    )
    if summary["failed"]:
        print(
            f"error: {summary['failed']} of {summary['trials']} trials failed (their MLflow runs are FAILED "
            "with the cause in the mcu.error tag)",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
