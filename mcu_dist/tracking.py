"""MLflow: one parent run per sweep, one nested child run per trial. No other module imports mlflow.

Child runs carry ``mlflow.parentRunId`` and ``mcu.trial_id``; a resumed or retried trial finds its
run by that tag and continues it instead of creating a duplicate. Per-t path metrics are logged with
``step = round(100·t)`` (so the UI draws the path against t, in hundredths), per-epoch curve-training
metrics with ``step`` = epoch. Writes retry when a SQLite store is momentarily locked by a concurrent trial.

Presentation: the experiment is tagged for MLflow's model-training view (``mlflow.experimentKind``), every
run carries a Markdown description (``mlflow.note.content``), and the sweep stores a shared view of the runs
table (``mlflow.sharedViewState.<key>``: sorted by the objective, its metric columns shown) that the printed
URL opens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

PARENT_TAG = "mlflow.parentRunId"
TRIAL_TAG = "mcu.trial_id"
KIND_TAG = "mcu.kind"
NOTE_TAG = "mlflow.note.content"  # the run's Description in the UI (Markdown)
# the UI's model-training view (runs, charts) instead of the GenAI one (traces) for this experiment
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
VIEW_TAG = "mlflow.sharedViewState."
LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves a sqlite store by default


def t_step(t: float) -> int:
    """The MLflow step of a point of the path: t in hundredths (charts of path/* read against t)."""
    return round(100 * t)


def resolve_tracking_uri(uri: str | None) -> str:
    """Default ``sqlite:///mlflow.db`` in the working directory; any relative sqlite path made absolute
    (a ``ray job submit`` job runs in a throw-away copy of the working directory)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    return uri


def artifact_location(uri: str, experiment: str) -> str | None:
    """Artifacts of a sqlite store live beside the database file, not in the current directory (MLflow's
    default, ./mlruns, would put them in a ``ray job submit`` job's throw-away working directory)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts" / experiment).as_uri()
    return None  # a tracking server decides (its --artifacts-destination)


def retry(
    fn: Callable[..., T], *args: Any, attempts: int = 8, races: tuple[str, ...] = (), **kwargs: Any
) -> T:
    """``fn`` again after a transient failure: up to ``attempts`` tries while a sqlite store is locked
    (seconds) or, for an idempotent write, while it lost one of the ``races`` named (error texts: two trials
    creating one row at once, the loser sees a rolled-back insert), 3 tries (each bounded by MLflow's own,
    see services.MLFLOW_HTTP_BOUNDS) while a server does not answer, each such wait announced on stderr."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            text = str(e).lower()
            locked = any(s in text for s in ("locked", "busy", *races))
            down = any(s in text for s in ("connection", "temporarily", "503", "max retries"))
            if not (locked or down) or i == attempts - 1 or (down and not locked and i >= 2):
                raise
            if down and not locked:
                print(
                    f"MLflow did not answer ({type(e).__name__}); retrying in {0.2 * 2**i:.1f} s",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(0.2 * 2**i)
    raise AssertionError("unreachable")


@contextlib.contextmanager
def _store_init_lock(uri: str) -> Iterator[None]:
    """Processes opening one new sqlite store at once would race on creating its schema: one at a time."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(uri[len("sqlite:///") :] + ".init.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class Tracker:
    def __init__(self, uri: str, experiment: str):
        from mcu_dist.services import mlflow_defaults, probe_tracking, use_credentials

        mlflow_defaults()  # before mlflow is imported: bounded HTTP retries, no telemetry
        import mlflow
        from mlflow.tracking import MlflowClient

        self.uri = use_credentials(resolve_tracking_uri(uri))
        probe_tracking(self.uri)
        self._mlflow = mlflow
        with _store_init_lock(self.uri):  # the client creates (and migrates) a new store's schema
            self.client = MlflowClient(tracking_uri=self.uri)
            self._open_experiment(experiment)
        self.experiment = experiment
        retry(self.client.set_experiment_tag, self.experiment_id, *EXPERIMENT_KIND)

    def _open_experiment(self, experiment: str) -> None:
        from mcu_dist.services import ServiceError

        try:
            existing = retry(self.client.get_experiment_by_name, experiment)
        except Exception as e:
            if any(s in str(e) for s in ("401", "403", "Unauthorized", "PERMISSION_DENIED")):
                raise ServiceError(
                    f"--tracking-uri: {self.uri} refused the credentials ({type(e).__name__}); allowed: "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or user:password@ in the URI) of a "
                    "user of that server"
                ) from None
            raise
        if existing is None:
            try:
                self.experiment_id = retry(
                    self.client.create_experiment,
                    experiment,
                    artifact_location=artifact_location(self.uri, experiment),
                )
            except Exception:  # another process created it first
                self.experiment_id = retry(self.client.get_experiment_by_name, experiment).experiment_id
        else:
            self.experiment_id = existing.experiment_id

    def check(self) -> None:
        """Fail fast on an unreachable store: one cheap read."""
        retry(self.client.search_runs, [self.experiment_id], max_results=1, attempts=2)

    # -- runs ---------------------------------------------------------------------------------------------
    def find_run(self, tags: dict[str, str]) -> Any | None:
        query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
        runs = retry(self.client.search_runs, [self.experiment_id], filter_string=query, max_results=1)
        return runs[0] if runs else None

    def start_run(self, name: str, tags: dict[str, str], reuse: bool = True) -> str:
        found = self.find_run(tags) if reuse else None
        if found is not None:
            retry(self.client.update_run, found.info.run_id, status="RUNNING")
            return found.info.run_id
        run = retry(self.client.create_run, self.experiment_id, tags=tags, run_name=name)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        retry(self.client.set_terminated, run_id, status)

    def fail_run(self, run_id: str, reason: str, details: str | None = None) -> None:
        """End ``run_id`` FAILED with the reason as the ``mcu.error`` tag (credentials redacted)."""
        from mcu_dist.services import redact_text

        retry(self.client.set_tag, run_id, "mcu.error", redact_text(reason)[:5000])
        if details:
            self.log_text(run_id, redact_text(details), "error.txt")
        self.end_run(run_id, "FAILED")

    @contextlib.contextmanager
    def run(self, name: str, tags: dict[str, str]) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED with the error as a tag when the body raises."""
        run_id = self.start_run(name, tags)
        try:
            yield run_id
        except BaseException as e:
            with contextlib.suppress(Exception):
                self.fail_run(run_id, f"{type(e).__name__}: {e}", traceback.format_exc())
            raise
        self.end_run(run_id, "FINISHED")

    def close_orphans(self, parent_id: str, causes: dict[str, str]) -> int:
        """Mark FAILED every child of ``parent_id`` still RUNNING once its sweep is over; ``causes`` maps a
        trial's folder name (which contains its trial id) to the error Ray reported. Returns how many."""
        closed = 0
        for run in self.children(parent_id):
            if run.info.status != "RUNNING":
                continue
            trial = run.data.tags.get(TRIAL_TAG, "")
            cause = next((c for name, c in causes.items() if trial and trial in name), None)
            self.fail_run(run.info.run_id, cause or "the trial's process ended without closing its run")
            closed += 1
        return closed

    # -- logging ------------------------------------------------------------------------------------------
    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        existing = retry(self.client.get_run, run_id).data.params
        items = [Param(k, _param_value(v)) for k, v in params.items() if k not in existing]
        for i in range(0, len(items), 100):
            retry(self.client.log_batch, run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        self.log_series(run_id, [(step, metrics)])

    def log_series(self, run_id: str, rows: list[tuple[int, dict[str, float]]]) -> None:
        """Many (step, {key: value}) rows in few batched calls."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step)
            for step, row in rows
            for k, v in row.items()
            if isinstance(v, (int, float)) and v == v
        ]
        for i in range(0, len(items), 1000):
            retry(self.client.log_batch, run_id, metrics=items[i : i + 1000])

    def set_tags(self, run_id: str, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        retry(self.client.log_batch, run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, folder: str | Path, artifact_path: str | None = None) -> None:
        retry(self.client.log_artifacts, run_id, str(folder), artifact_path)

    def log_artifact(self, run_id: str, file: str | Path, artifact_path: str | None = None) -> None:
        retry(self.client.log_artifact, run_id, str(file), artifact_path)

    def log_text(self, run_id: str, text: str, name: str) -> None:
        retry(self.client.log_text, run_id, text, name)

    def describe(self, run_id: str, markdown: str) -> None:
        self.set_tags(run_id, {NOTE_TAG: markdown})

    def log_datasets(self, run_id: str, datasets: list[dict[str, Any]]) -> None:
        """Datasets as run inputs (the runs table's Dataset column): each a dict of name, digest, source,
        context (``train``, ``forget``, ...) and profile (a small dict, e.g. its size)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        inputs = [
            DatasetInput(
                Dataset(
                    d["name"],
                    d["digest"][:12],
                    "local",
                    json.dumps({"uri": d["source"]}),
                    profile=json.dumps(d.get("profile", {})),
                ),
                [InputTag(MLFLOW_DATASET_CONTEXT, d["context"])],
            )
            for d in datasets
        ]
        # MLflow gets-or-creates each dataset per experiment; trials logging the same one at once race on its
        # (experiment, name, digest) row and the loser's insert fails whole: again, it then finds the row.
        retry(self.client.log_inputs, run_id, datasets=inputs, races=("unique constraint failed",))

    def share_view(self, objective: str, metrics: list[str], params: list[str]) -> str:
        """Store the runs table as a researcher wants it first (sorted by the objective, best first, with
        these metric and param columns and the Dataset column) as a shared view; returns its key."""
        metric_columns = [f"metrics.`{m}`" for m in metrics]
        state = {
            "orderByKey": f"metrics.`{objective}`",
            "orderByAsc": True,
            "selectedColumns": metric_columns + [f"params.`{p}`" for p in params] + ["attributes.`Dataset`"],
            "columnOrder": metric_columns,  # right after the run names, before the wide Dataset column
        }
        text = json.dumps(state, sort_keys=True)
        key = "mcu-" + hashlib.sha256(text.encode()).hexdigest()[:12]
        retry(self.client.set_experiment_tag, self.experiment_id, VIEW_TAG + key, text)
        return key

    def ui_base(self) -> str:
        from mcu_dist.services import redact

        return redact(self.uri).rstrip("/") if self.uri.startswith(("http://", "https://")) else LOCAL_UI

    def runs_url(self, view_key: str | None = None) -> str:
        query = {"workflowType": "machine_learning"}
        if view_key:
            query["viewStateShareKey"] = view_key
        return f"{self.ui_base()}/#/experiments/{self.experiment_id}/runs?{urllib.parse.urlencode(query)}"

    def run_url(self, run_id: str) -> str:
        return (
            f"{self.ui_base()}/#/experiments/{self.experiment_id}/runs/{run_id}?workflowType=machine_learning"
        )

    def serve_hint(self) -> str | None:
        """The command that serves a sqlite store's UI at :meth:`ui_base` (None for a tracking server)."""
        if self.uri.startswith(("http://", "https://")):
            return None
        return f"mlflow ui --backend-store-uri {self.uri}"  # a local file path: nothing to redact

    def children(self, parent_id: str) -> list[Any]:
        return retry(
            self.client.search_runs,
            [self.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_id}'",
            max_results=10000,
        )


def _param_value(v: Any) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    return text[:6000]
