"""Bad inputs, as a hostile user would bring them: each stops with one error line naming the field and what is
allowed, before any compute, with no traceback and no file written outside the caches.

Every row is (entry point, arguments, expected error). Entry points run in-process through their ``main``;
a few run as real subprocesses to prove that no traceback reaches the terminal.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from torch import nn

from mcu_dist import ablate, bench, report, run, sweep
from mcu_dist.config import ConfigError
from tests.ray_cluster import free_ports

ENTRY = {
    "run": run.main,
    "sweep": sweep.main,
    "ablate": ablate.main,
    "report": report.main,
    "bench": bench.main,
}


def _file(tmp: Path, name: str, content: str | bytes) -> str:
    path = tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def _npy(tmp: Path, name: str, array: np.ndarray) -> str:
    path = tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)
    return str(path)


def _parquet(tmp: Path, name: str, column: pa.Array) -> str:
    path = tmp / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"index": column}), path)
    return str(path)


def _blocker(tmp: Path) -> str:
    """A plain file where a folder is expected: nothing can be written below it (even as root)."""
    return _file(tmp, "blocker", "")


def _space(tmp: Path, search: dict, grid: bool = False) -> str:
    key = "grid" if grid else "search"
    body = {"fixed": {"data.dataset": "digits", "baselines.methods": ["ft"]}, key: search}
    return _file(tmp, "space.yaml", yaml.safe_dump(body))


def _cifar_garbage(tmp: Path) -> str:
    _file(tmp, "cifar/cifar10_jpeg.parquet", b"PAR1 this is not parquet")
    return str(tmp / "inputs" / "cifar")


def _undecodable_tree(tmp: Path) -> str:
    for split in ("train", "val"):
        for c in ("n01", "n02"):
            _file(tmp, f"tree/{split}/{c}/0.JPEG", b"\xff\xd8 not a jpeg")
    return str(tmp / "inputs" / "tree")


def _sweep(tmp: Path, *args: str) -> list[str]:
    return [
        "--smoke-test",
        "--storage",
        str(tmp / "st"),
        "--tracking-uri",
        f"sqlite:///{tmp / 'm.db'}",
        *args,
    ]


RUN = [
    ("config_missing", lambda t: ["--config", str(t / "nope.yaml")], r"--config: cannot read"),
    (
        "config_malformed",
        lambda t: ["--config", _file(t, "c.yaml", "mcu: [1, 2")],
        r"--config: .* not valid YAML",
    ),
    (
        "config_not_mapping",
        lambda t: ["--config", _file(t, "c.yaml", "- 1\n- 2\n")],
        r"allowed: a YAML mapping",
    ),
    ("config_unknown_field", lambda t: ["--config", _file(t, "c.yaml", "mcu: {kk: 1}")], r"mcu\.kk: unknown"),
    (
        "tuned_label_without_values",
        lambda t: ["--config", _file(t, "c.yaml", "baselines: {tuned: [ga]}")],
        r"baselines\.tuned: got \['ga'\]; allowed: a list of methods with tuned values",
    ),
    ("config_binary", lambda t: ["--config", _file(t, "c.yaml", b"\xff\xfe\x00garbage")], r"--config"),
    ("out_unwritable", lambda t: ["--out", _blocker(t) + "/runs"], r"--out: cannot write"),
    ("cache_unwritable", lambda t: ["--cache-dir", _blocker(t) + "/c"], r"--cache-dir: cannot write"),
    ("k_zero", lambda t: ["--k", "0"], r"mcu\.k: got 0\.0; allowed: a number in \(0, 1\]"),
    ("seed_negative", lambda t: ["--seed", "-1"], r"seeds\.split: got -1"),
    ("seed_huge", lambda t: ["--seed", str(2**40)], r"seeds\.split: got 1099511627776"),
    ("max_loss_zero", lambda t: ["--max-loss", "0"], r"max_loss: got 0\.0"),
    ("lr_nan", lambda t: ["--curve-lr", "nan"], r"mcu\.lr: got 'nan'; allowed: a finite number"),
    (
        "forget_missing",
        lambda t: ["--forget", f"file:{t / 'nope.txt'}"],
        r"forget\.spec: .*existing index file",
    ),
    (
        "forget_float_npy",
        lambda t: ["--forget", "file:" + _npy(t, "f.npy", np.array([1.0, 2.0, 3.0]))],
        r"forget\.spec: .* holds float64 values",
    ),
    (
        "forget_2d_npy",
        lambda t: ["--forget", "file:" + _npy(t, "f.npy", np.arange(6).reshape(2, 3))],
        r"forget\.spec: .* 2-D array",
    ),
    (
        "forget_duplicates",
        lambda t: ["--forget", "file:" + _file(t, "f.txt", "1 2 2 3")],
        r"forget\.spec: .* index 2 more than once",
    ),
    (
        "forget_out_of_range",
        lambda t: ["--forget", "file:" + _file(t, "f.txt", "1 2 99999")],
        r"forget\.spec: 1 indices .* not in the training set",
    ),
    (
        "forget_text_floats",
        lambda t: ["--forget", "file:" + _file(t, "f.txt", "1.5 2")],
        r"forget\.spec: .* cannot be read as sample indices",
    ),
    (
        "forget_text_booleans",
        lambda t: ["--forget", "file:" + _file(t, "f.txt", "True False True")],
        r"forget\.spec: .* cannot be read as sample indices",
    ),
    (
        "forget_parquet_floats",
        lambda t: ["--forget", "file:" + _parquet(t, "f.parquet", pa.array([1.0, 2.0]))],
        r"forget\.spec: .* 'index' column of type double",
    ),
    (
        "forget_parquet_garbage",
        lambda t: ["--forget", "file:" + _file(t, "f.parquet", b"not parquet at all")],
        r"forget\.spec: .* cannot be read",
    ),
    (
        "original_garbage",
        lambda t: ["--original", _file(t, "o.pt", b"garbage bytes")],
        r"model\.original: cannot load",
    ),
    (
        "cifar_garbage_file",
        lambda t: ["--dataset", "cifar10", "--data-root", _cifar_garbage(t)],
        r"data\.data_root: cannot read cifar10",
    ),
    (
        "undecodable_image",
        lambda t: ["--dataset", "tinyimagenet", "--data-root", _undecodable_tree(t)],
        r"data\.data_root: cannot read tinyimagenet .*UnidentifiedImageError",
    ),
    (
        "mask_selects_nothing",  # the one case that trains first: θ_o, which the mask is computed on
        lambda t: ["--model", "tests.fault_models:one_tensor", "--k", "0.5", "--k-r", "0.5"],
        r"mcu\.k_r: got 0\.5; allowed: a k_r that leaves tensors",
    ),
]

SWEEP = [
    ("name_traversal", "sweep", lambda t: _sweep(t, "--name", "../outside"), r"--name: got '\.\./outside'"),
    ("name_quote", "sweep", lambda t: _sweep(t, "--name", "it's"), r"--name: got"),
    ("experiment_slash", "sweep", lambda t: _sweep(t, "--experiment", "a/b"), r"--experiment: got 'a/b'"),
    ("resume_unknown", "sweep", lambda t: _sweep(t, "--name", "never", "--resume"), r"--resume: no sweep"),
    (
        "storage_unwritable",
        "sweep",
        lambda t: ["--smoke-test", "--storage", _blocker(t) + "/st"],
        r"--storage: cannot write",
    ),
    (
        "storage_s3",
        "sweep",
        lambda t: ["--smoke-test", "--storage", "s3://bucket/x"],
        r"--storage: cannot reach s3://bucket/x",  # the loopback S3 endpoint is not started here
    ),
    (
        "tracking_sqlite_unwritable",
        "sweep",
        lambda t: [
            "--smoke-test",
            "--storage",
            str(t / "st"),
            "--tracking-uri",
            f"sqlite:///{_blocker(t)}/m.db",
        ],
        r"--tracking-uri: cannot write",
    ),
    ("num_samples_zero", "sweep", lambda t: _sweep(t, "--num-samples", "0"), r"sweep\.num_samples: got 0"),
    (
        "space_k_zero",
        "sweep",
        lambda t: (
            ["--space", _space(t, {"mcu.k": {"type": "categorical", "choices": [0.0, 0.5]}})] + _sweep(t)[1:]
        ),
        r"search\.mcu\.k: the point .*mcu\.k: got 0\.0",
    ),
    (
        "grid_cell_k_zero",
        "ablate",
        lambda t: ["--grid", _space(t, {"mcu.k": [0.5, 0.0]}, grid=True)] + _sweep(t)[1:],
        r"search\.mcu\.k: the point .*mcu\.k: got 0\.0",
    ),
    (
        "report_out_unwritable",
        "report",
        lambda t: ["--experiment", "x", "--out", _blocker(t) + "/r"],
        r"--out",
    ),
    ("bench_zero_steps", "bench", lambda t: ["--steps", "0"], r"--steps: got 0; allowed: an integer >= 1"),
    ("bench_zero_batch", "bench", lambda t: ["--batch-size", "0"], r"--batch-size: got 0"),
    (
        "bench_negative_host_steps",
        "bench",
        lambda t: ["--host-steps", "-1"],
        r"--host-steps: got -1; allowed: an integer >= 0",
    ),
]


def _files(root: Path) -> set[Path]:
    skip = ("cache", "inputs")
    return {p for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip}


def _refused(entry: str, make_args: Callable[[Path], list[str]], expected: str, tmp: Path, capsys) -> None:
    args = make_args(tmp)
    if entry == "run":  # small budgets, so that a regression costs seconds, not minutes
        defaults = {"--cache-dir": str(tmp / "cache"), "--out": str(tmp / "runs"), "--methods": "ft"}
        args += ["--smoke-test", "--beta-schedule", "fixed"]
        args += [x for flag, value in defaults.items() if flag not in args for x in (flag, value)]
    before = _files(tmp)
    capsys.readouterr()
    code = ENTRY[entry](args)
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert re.search(expected, lines[0]) and lines[0].startswith("error: ") and "allowed" in lines[0], lines[
        0
    ]
    assert _files(tmp) == before, sorted(map(str, _files(tmp) - before))
    assert not (tmp / "runs").exists() or not any((tmp / "runs").iterdir())


@pytest.mark.parametrize("case,make_args,expected", RUN, ids=[c[0] for c in RUN])
def test_run_refuses_bad_input(case, make_args, expected, tmp_path, capsys):
    _refused("run", make_args, expected, tmp_path, capsys)


@pytest.mark.parametrize("case,entry,make_args,expected", SWEEP, ids=[c[0] for c in SWEEP])
def test_cli_refuses_bad_input(case, entry, make_args, expected, tmp_path, capsys):
    _refused(entry, make_args, expected, tmp_path, capsys)


def test_unreachable_tracking_server_is_refused_in_seconds(tmp_path, capsys):
    (port,) = free_ports(1)
    for entry, args in (
        (
            "sweep",
            ["--smoke-test", "--storage", str(tmp_path / "st"), "--tracking-uri", f"http://127.0.0.1:{port}"],
        ),
        ("report", ["--experiment", "x", "--tracking-uri", f"http://u:secret@127.0.0.1:{port}"]),
    ):
        start = time.monotonic()
        _refused(
            entry, lambda t, a=args: a, r"--tracking-uri: cannot reach http://127\.0\.0\.1", tmp_path, capsys
        )
        assert time.monotonic() - start < 30


def test_a_second_sweep_with_the_same_name_is_refused(tmp_path, capsys):
    from mcu_dist.services import hold_sweep_lock

    lock = hold_sweep_lock(tmp_path / "st" / "busy")  # what a running sweep of that name holds
    try:
        _refused(
            "sweep",
            lambda t: _sweep(t, "--name", "busy"),
            r"--name: sweep 'busy' is already running",
            tmp_path,
            capsys,
        )
    finally:
        lock.close()


def test_a_forget_file_path_never_leads_out_of_the_output_folder(tmp_path):
    from mcu_dist.config import ExperimentConfig
    from mcu_dist.experiment import run_folder

    cfg = ExperimentConfig()
    cfg.forget.spec = "file:../../../etc/x/../forget list.npy"
    folder = run_folder(tmp_path / "runs", cfg)
    assert folder.parent == tmp_path / "runs" and "/" not in folder.name and folder.name != ".."


# ------------------------------------------------------------------------------------------------ Python API


def _pair(n: int, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(n, 1, 4, 4), torch.arange(n) % classes


def _api(**change):
    import mcu_dist

    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3, bias=False))  # one tensor: any k_r > 0 takes it all
    kwargs = {"forget_set": _pair(6), "retain_set": _pair(12), "test_set": _pair(6), **change}
    return mcu_dist.unlearn(
        model, model, kwargs.pop("forget_set"), kwargs.pop("retain_set"), kwargs.pop("test_set"), **kwargs
    )


@pytest.mark.parametrize(
    "change,expected",
    [
        ({"mcu.beta_schedule": "mcu_fast"}, r"^mcu\.beta_schedule: got 'mcu_fast'; allowed: "),
        (
            {"forget_set": (torch.randn(6, 1, 4, 4), torch.arange(5))},
            r"^forget_set: got 6 images and 5 labels",
        ),
        (
            {"retain_set": (torch.randn(4, 1, 4, 4), torch.rand(4))},
            r"^retain_set: got labels of dtype torch\.float32",
        ),
        ({"test_set": (torch.randn(2, 1, 4, 4), torch.tensor([0, -1]))}, r"^test_set: got labels .* min -1"),
        ({"test_set": (torch.randn(2, 1, 5, 5), torch.tensor([0, 1]))}, r"^retain_set: image shapes"),
        ({"num_classes": 2}, r"^num_classes: got 2; allowed: more than the largest label \(2\)"),
        ({"mcu.k": 0.0}, r"^mcu\.k: got 0\.0"),
        ({"mcu.kk": 0.5}, r"^mcu\.kk: unknown field"),
        ({"mcu.k": 0.5, "mcu.k_r": 0.5}, r"^mcu\.k_r: got 0\.5; allowed: a k_r that leaves tensors"),
    ],
)
def test_python_api_refuses_bad_arguments(change, expected):
    with pytest.raises(ConfigError, match=expected):
        _api(**change)


# ---------------------------------------------------------------------------- real processes: no traceback


@pytest.mark.parametrize(
    "module,args,field",
    [
        ("mcu_dist.run", ["--config", "/nonexistent/c.yaml"], "--config"),
        ("mcu_dist.sweep", ["--smoke-test", "--name", "../x"], "--name"),
        ("mcu_dist.bench", ["--steps", "0"], "--steps"),
        ("mcu_dist.report", ["--experiment", "x", "--tracking-uri", "http://127.0.0.1:9"], "--tracking-uri"),
    ],
)
def test_no_traceback_reaches_the_terminal(module, args, field, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(f"error: {field}"), proc.stderr
    assert not any(tmp_path.iterdir())


def test_a_boolean_npy_is_read_as_a_mask_over_training_indices(tmp_path):
    from mcu_dist.config import DataConfig, ForgetConfig
    from mcu_dist.data import load_dataset, make_splits

    bundle = load_dataset(DataConfig(), 0, str(tmp_path / "cache"))
    wanted = bundle.train.index[:7].numpy()
    mask = np.zeros(int(bundle.train.index.max()) + 1, dtype=bool)
    mask[wanted] = True
    as_mask = make_splits(bundle, ForgetConfig("file:" + _npy(tmp_path, "m.npy", mask)), 0)
    as_indices = make_splits(bundle, ForgetConfig("file:" + _npy(tmp_path, "i.npy", wanted)), 0)
    assert torch.equal(as_mask.forget, as_indices.forget) and len(as_mask.forget) == 7
    assert as_mask.manifest_hash == as_indices.manifest_hash


# ----------------------------------------------------------------------------------------- secure defaults


def test_credentials_in_a_tracking_uri_are_never_shown():
    from mcu_dist.services import redact, redact_text, use_credentials

    uri = "http://alice:s3cr%40t@mlflow.example:5000/prefix?token=abc&x=1"
    assert redact(uri) == "http://***@mlflow.example:5000/prefix?token=***&x=1"
    assert redact("sqlite:////abs/m.db") == "sqlite:////abs/m.db"  # nothing to hide: unchanged
    assert "s3cr" not in redact_text(f"ConnectionError: GET {uri}/api failed; see https://docs.example")
    clean = use_credentials(uri)
    assert clean == "http://mlflow.example:5000/prefix?token=abc&x=1"
    assert (os.environ.pop("MLFLOW_TRACKING_USERNAME"), os.environ.pop("MLFLOW_TRACKING_PASSWORD")) == (
        "alice",
        "s3cr@t",
    )


@pytest.mark.parametrize("user_choice", [None, "false"])
def test_mlflow_telemetry_is_off_unless_the_user_opted_in(monkeypatch, user_choice):
    from mcu_dist.services import MLFLOW_HTTP_BOUNDS, mlflow_defaults

    for key in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", *MLFLOW_HTTP_BOUNDS):
        monkeypatch.delenv(key, raising=False)
    if user_choice is not None:
        monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", user_choice)
    mlflow_defaults()
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == (user_choice or "true")
    assert (
        int(os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]) * int(os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"])
        < 60
    )
