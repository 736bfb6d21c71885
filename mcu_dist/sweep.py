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
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from mcu_dist import fs
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
    from mcu_dist.console import registry_epilog

    p = argparse.ArgumentParser(
        prog="python -m mcu_dist.sweep",
        description=__doc__.splitlines()[0],
        epilog=registry_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
        help="storage for Tune, Train checkpoints and the model cache: a local path, an NFS mount, or a "
        "bucket (s3://bucket/prefix) on multi-node clusters (default ~/mcu_dist_runs)",
    )
    p.add_argument("--name", help="sweep name (default: the space's sweep.name)")
    p.add_argument("--resume", action="store_true", help="continue the sweep stored under --storage/--name")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///mlflow.db, made absolute)")
    p.add_argument("--experiment", help="MLflow experiment (default: the sweep name)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a new local instance)")
    p.add_argument("--smoke-test", action="store_true", help="2 tiny trials on digits, in seconds")
    p.add_argument(
        "--verbose", action="store_true", help="Tune's progress tables and the libraries' INFO logs"
    )
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
    storage = fs.check_location(args.storage or default_storage(), "--storage")
    fs.probe(storage, "--storage")
    if not fs.is_remote(storage):
        storage = str(writable_dir(fs.local_path(storage).resolve(), "--storage"))
    if args.resume:
        check_resumable(fs.join(storage, sweep.name))
    space.fixed.setdefault("cache_dir", fs.join(storage, "cache"))
    space.fixed.setdefault("scale.storage", fs.join(storage, "train"))
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
    if sweep.gpus_per_trial > 0 and sweep.gpu_resource == "GPU":
        space.fixed.setdefault("device", "cuda")  # a trial holding a GPU trains and evaluates on it
    validate(space.base_config())
    from mcu_dist.dispatch import check_sweep_resources

    check_sweep_resources(sweep, space.base_config())
    if not fs.is_remote(space.base_config().cache_dir):
        writable_dir(space.base_config().cache_dir, "cache_dir")
    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None and in_ray_job():
        if fs.is_remote(storage):
            raise ConfigError(
                f"--tracking-uri: none given for a job with --storage {storage}; allowed: an MLflow "
                "tracking server (http://...), since a job's working directory is thrown away"
            )
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
    once, before trials fan out, into the shared cache; one progress line per model."""
    from mcu_dist.console import Progress
    from mcu_dist.lab import Lab
    from mcu_dist.references import endpoints, prepare_references

    cells = reference_cells(space)
    if space.sweep.reference_gpus > 0:  # Ray tasks where the space's resources are (dispatch.py)
        from mcu_dist.dispatch import prepare_remote

        prepare_remote(space, cells, log)
        return
    progress = Progress(len(cells) * (1 + len(space.methods())), log)
    trained = 0
    for cell in cells:
        where = "".join(f" {k}={v}" for k, v in cell.items())
        lab = Lab.build(space.trial_config(cell))
        original = prepare_references(lab, mask=False).original
        progress.step("original and retrained" + where)
        for method in space.methods():
            endpoints(lab, original, [method])
            progress.step(method + where)
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


def run_config(space: SearchSpace, storage: str, context: dict):
    """Tune's RunConfig: quiet unless ``--verbose`` (then Tune's progress tables), one line per trial."""
    from ray import tune

    from mcu_dist.console import trial_lines

    sweep = space.sweep
    total = sweep.num_samples if not space.grid else len(list(_cells(space.grid)))

    def name_of(config: dict) -> str | None:
        return _safe_name(space, _searched(space, config))

    return tune.RunConfig(
        name=sweep.name,
        storage_path=storage,
        verbose=1 if context.get("verbose") else 0,
        callbacks=[trial_lines(sweep.objective, total, name_of)],
        failure_config=tune.FailureConfig(max_failures=sweep.max_failures),
    )


def _cells(grid: dict[str, list]):
    import itertools

    return itertools.product(*grid.values())


def _searched(space: SearchSpace, config: dict) -> dict:
    keys = {d.key for d in space.dims} | set(space.grid or {})
    return {k: v for k, v in config.items() if k in keys}


def with_trial_resources(trainable, space: SearchSpace):
    """The trainable with each trial's CPUs and (fractional) GPUs (dispatch.trial_resources)."""
    from ray import tune

    from mcu_dist.dispatch import trial_resources

    return tune.with_resources(trainable, trial_resources(space.sweep))


def build_tuner(space: SearchSpace, storage: str, context: dict, resume: bool):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    sweep = space.sweep
    trainable = with_trial_resources(tune.with_parameters(tune_trainable, context=context), space)
    path = fs.join(storage, sweep.name)
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
        run_config=run_config(space, storage, context),
    )


def trial_context(context: dict):
    """Inside a Tune trial: its TrialContext (the driver's space, MLflow parent, the trial's folder)."""
    from ray import tune

    from mcu_dist.trial import TrialContext

    trial_id = tune.get_context().get_trial_id()
    space: SearchSpace = context["space"]  # parsed and checked once, by the driver
    return TrialContext(
        space,
        context["tracking_uri"],
        context["experiment"],
        context["parent_run_id"],
        trial_id,
        fs.join(context["storage_dir"], "trials", trial_id),
    )


def tune_trainable(config: dict, context: dict) -> None:
    """The Ray Tune function trainable: one trial."""
    from ray import tune

    from mcu_dist.trial import run_trial

    params = _searched(context["space"], config)
    tune.report(run_trial(params, trial_context(context), report=tune.report))


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


def error_cause(error: BaseException) -> str:
    """What made a trial fail, in one line: the exception raised inside the trial, its type and the first
    line of its message (Ray wraps it in a RayTaskError whose text opens with the actor's name, pid and a
    coloured traceback; without the original exception, the traceback's last line)."""
    import re

    cause = getattr(error, "cause", None)
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(cause if cause is not None else error))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if cause is None:
        return (lines[-1] if lines else type(error).__name__)[:500]
    return f"{type(cause).__name__}: {lines[0] if lines else ''}"[:500]


def summarize(results, space: SearchSpace) -> list[dict]:
    """One row per trial (name, status, params, final metrics), best first; ``order`` = finishing order."""
    rows = []
    for r in results:
        m = r.metrics or {}
        params = _searched(space, r.config or {})
        row = {
            "trial_id": m.get("trial_id") or Path(r.path).name,
            "name": _safe_name(space, params),
            "status": "ERROR" if r.error else "OK",
            "error": error_cause(r.error) if r.error else None,
            "order": m.get("timestamp", 0),
        }
        row.update({f"param.{k}": v for k, v in params.items()})
        if m.get("final") == 1:
            row.update({k: m.get(k) for k in (*SUMMARY_METRICS, "gain")})
        rows.append(row)
    for i, row in enumerate(sorted(rows, key=lambda r: r["order"] or 0)):
        row["order"] = i + 1
    key = space.sweep.objective
    return sorted(rows, key=lambda r: (r.get(key) is None, r.get(key) if r.get(key) is not None else 0))


def _safe_name(space: SearchSpace, params: dict) -> str | None:
    """The trial's MLflow run name (``trial_name``; ``baseline_trial_name`` for a tuning trial)."""
    from mcu_dist.baseline_trial import KIND, baseline_trial_name
    from mcu_dist.trial import trial_name

    try:
        cfg = space.trial_config(params)
        if space.trial_kind == KIND:
            return baseline_trial_name(cfg.baselines.methods[0], params)
        return trial_name(cfg, params)
    except Exception:  # a trial whose config does not build (it failed): named by its id
        return None


class _Refused(Exception):
    """A sweep refused before its first trial; the message is the one error line."""


def main(argv: list[str] | None = None, *, loader=load_space, tuner_factory=None) -> int:
    """The sweep (and, with a grid loader and tuner, the ablation grid of ``mcu_dist.ablate``)."""
    try:
        return _run(parse_args(argv), loader, tuner_factory or build_tuner)
    except (ConfigError, _Refused) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _connect_ray(address: str | None, uri: str, verbose: bool = False) -> None:
    import ray

    if not ray.is_initialized():
        if address and not reachable(address):
            raise _Refused(
                f"--address: nothing answers at {address}; allowed: the address of a running Ray cluster "
                "(ray start --head), or none for a local instance"
            )
        try:
            level = logging.INFO if verbose else logging.WARNING
            ray.init(address=address or None, log_to_driver=False, logging_level=level)
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
    from mcu_dist.console import quiet
    from mcu_dist.tracking import KIND_TAG, Tracker

    quiet(args.verbose)
    try:
        probe_tracking(use_credentials(uri))  # bounded, before anything is written
        if not fs.is_remote(storage):  # an object store has no lock a dead process releases; see README
            _lock = hold_sweep_lock(fs.join(storage, space.sweep.name))  # held until the process ends
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
    _connect_ray(args.address or os.environ.get("RAY_ADDRESS"), uri, args.verbose)
    import ray

    from mcu_dist.dispatch import check_cluster

    check_cluster(space.sweep, ray.cluster_resources())  # a request nothing can place fails now
    sweep = space.sweep
    print(
        f"sweep {sweep.name}: {space.source}, {sweep.num_samples} trials, objective {sweep.objective}; "
        f"storage {storage}; MLflow {redact(uri)} experiment {experiment}",
        flush=True,
    )
    from mcu_dist import recipes

    print(f"  {recipes.resolve(space.base_config()).describe()}", flush=True)
    start = time.perf_counter()
    try:
        prepare_shared_models(space)
    except DivergenceError as e:  # before the parent run: nothing to close in MLflow
        print(f"error: {e}", file=sys.stderr)
        return 1
    storage_dir = fs.join(storage, sweep.name)
    parent = tracker.start_run(
        sweep.name, {KIND_TAG: "sweep", "mcu.sweep_path": storage_dir}, reuse=args.resume
    )
    # what every trial shares (the space's fixed values), the searched ranges and the sweep's settings;
    # not the base config's defaults that the search overrides
    tracker.log_params(
        parent,
        {
            **space.fixed,
            **{f"search.{d.key}": _describe_dim(d) for d in space.dims},
            **{f"grid.{k}": v for k, v in (space.grid or {}).items()},
            **{f"sweep.{k}": v for k, v in vars(sweep).items()},
        },
    )
    tracker.log_text(parent, space.to_yaml(), "space.yaml")
    context = {
        "space": space,
        "tracking_uri": uri,
        "experiment": experiment,
        "parent_run_id": parent,
        "storage_dir": storage_dir,
        "verbose": args.verbose,
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
    with fs.staged(storage_dir) as out:  # beside Tune's state: a local folder, or uploaded to the bucket
        out.mkdir(parents=True, exist_ok=True)
        write_table(rows or [{"trial_id": None}], out / "trials.parquet")
        tracker.log_artifact(parent, out / "trials.parquet")
        write_text(out / "summary.json", json.dumps(summary, indent=1))
        if sweep.multi_objective:
            front = pareto_front(ok, (sweep.objective, "rte_min"))
            write_table(front or [{"trial_id": None}], out / "pareto.parquet")
            tracker.log_artifact(parent, out / "pareto.parquet")
    if ok:
        summary["best_" + sweep.objective] = ok[0][sweep.objective]
        tracker.set_tags(parent, {"mcu.best_trial": ok[0]["trial_id"]})
    tracker.log_metrics(parent, summary)
    import yaml

    from mcu_dist.sweep_report import console_table, summary_markdown, write_report

    raw = yaml.safe_load(space.to_yaml())
    with fs.staged(fs.join(storage_dir, "report")) as report_dir:
        write_report(tracker, parent, rows, raw, sweep.objective, sweep.name, report_dir)
    tracker.describe(parent, summary_markdown(rows, sweep.objective, summary, ok[0] if ok else None))
    view = tracker.share_view(
        sweep.objective, ["avg_gap", "gain", "gap_cal", "t_star"], [d.key for d in space.dims][:4]
    )
    tracker.end_run(parent, "FINISHED")
    print()
    print(console_table(rows, sweep.objective))
    print(
        f"\n{summary['completed']}/{summary['trials']} trials completed in {summary['wall_s']:.0f} s "
        f"(trials {summary['fit_s']:.0f} s, their own compute {summary['trial_compute_s']:.0f} s); report: "
        f"{storage_dir}/report/ and the sweep run's report/ in MLflow."
    )
    if tracker.serve_hint():
        print(f"Serve the MLflow UI: {tracker.serve_hint()}")
    print(f"MLflow runs, best first: {tracker.runs_url(view)}", flush=True)
    if summary["failed"]:
        print(
            f"error: {summary['failed']} of {summary['trials']} trials failed (their MLflow runs are FAILED "
            "with the cause in the mcu.error tag)",
            file=sys.stderr,
        )
        return 1
    return 0


def _describe_dim(d) -> str:
    span = f"{d.choices}" if d.kind == "categorical" else f"[{d.low:g}, {d.high:g}]"
    return f"{d.kind} {span}" + (f" when {d.when}" if d.when else "")


if __name__ == "__main__":
    sys.exit(main())
