"""A real S3-compatible server on loopback for the tests: moto's standalone server (``moto.server``).

The fake credentials and the endpoint are set in the environment when the test session starts (conftest),
before any Ray node is started, so every process of the test clusters reaches the same server through the
standard AWS chain; the server itself is started only when a test asks for it.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request

from tests.ray_cluster import free_ports


def s3_env() -> dict[str, str]:
    """The AWS variables the whole test session uses: a free loopback port, distinctive fake keys."""
    (port,) = free_ports(1)
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": f"mcutestkey{secrets.token_hex(6)}",
        "AWS_SECRET_ACCESS_KEY": f"mcutestsecret{secrets.token_hex(12)}",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def start_s3(timeout: float = 60) -> subprocess.Popen:
    port = os.environ["AWS_ENDPOINT_URL"].rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"], timeout=2):
                return proc
        except OSError as e:
            if getattr(e, "code", None):  # an HTTP answer, even an error, means it is up
                return proc
            time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("moto server did not come up")


def make_bucket(name: str) -> str:
    import boto3

    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"
