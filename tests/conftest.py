"""Shared fixtures: a digits lab with a cached, briefly trained original model (seconds on a CPU)."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from tests.ray_cluster import LOOPBACK
from tests.s3_server import s3_env

# Ray reads these when it is imported: set them before any test module imports it. The test cluster
# has its own token, and token authentication stays on. The loopback S3 server's endpoint and fake keys
# are set now too, so that every Ray node a test starts inherits them.
os.environ.update({**LOOPBACK, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(24), **s3_env()})

import pytest  # noqa: E402
import torch  # noqa: E402

from mcu_dist.config import ExperimentConfig, with_overrides  # noqa: E402
from mcu_dist.lab import Lab  # noqa: E402

torch.set_num_threads(2)

CIFAR_PARQUET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10" / "cifar10_jpeg.parquet"


def digits_config(tmp: Path, **overrides) -> ExperimentConfig:
    """Digits, class-wise forgetting of one class, small budgets; ``overrides`` are dotted config keys."""
    base = {
        "cache_dir": str(tmp / "cache"),
        "out": str(tmp / "runs"),
        "reference.epochs": 8,
        "mcu.epochs": 2,
        "eval.t_points": 5,
        "eval.mia_cap": 300,
        "eval.bn_set_size": 300,
    }
    return with_overrides(ExperimentConfig(), {**base, **overrides})


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mcu")


@pytest.fixture(scope="session")
def digits_lab(session_dir) -> Lab:
    return Lab.build(digits_config(session_dir))


@pytest.fixture(scope="session")
def digits_original(digits_lab):
    from mcu_dist.train.reference import original_model

    model, _ = original_model(digits_lab, digits_lab.cache)
    return model


@pytest.fixture(scope="session")
def s3():
    """The loopback S3 server (moto), started once for the tests that ask for it."""
    from tests.ray_cluster import stop_group
    from tests.s3_server import start_s3

    proc = start_s3()
    try:
        yield os.environ["AWS_ENDPOINT_URL"]
    finally:
        stop_group(proc)


@pytest.fixture(scope="session")
def ray_cluster():
    """One loopback Ray head for every test that needs Ray; this process joins it."""
    import ray

    from tests.ray_cluster import start_head

    # fake_gpu stands in for a GPU on machines without one (reference tasks, fractional trials)
    head = start_head(num_cpus=4, token=os.environ["RAY_AUTH_TOKEN"], resources='{"fake_gpu": 1}')
    os.environ["RAY_ADDRESS"] = head.address
    ray.init(address=head.address, log_to_driver=False)
    try:
        yield head
    finally:
        ray.shutdown()
        head.stop()
        os.environ.pop("RAY_ADDRESS", None)
