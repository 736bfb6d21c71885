"""Object storage through the store: a real S3-compatible server on loopback (moto), no mocks.

- every store write lands as one object and reads back equal (checkpoints with their digests, tables, text);
- the model cache trains a key once across concurrent processes with no POSIX lock (a lease object
  written with conditional puts), a killed holder's lease expires and another process takes over;
- a cache write killed midway leaves no object a reader accepts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import torch

from mcu_dist import fs
from mcu_dist.config import ConfigError
from mcu_dist.store import ModelCache, load_checkpoint, save_checkpoint, write_table, write_text
from tests.s3_server import make_bucket


@pytest.fixture
def bucket(s3) -> str:
    return make_bucket(f"mcu-{uuid.uuid4().hex[:12]}")


def test_store_writes_read_back_from_the_bucket(bucket, tmp_path):
    import pyarrow.parquet as pq

    state = {"w": torch.randn(4, 3), "b": torch.arange(3.0)}
    save_checkpoint(f"{bucket}/x/curve.pt", "curve", state, {"order": 2})
    ckpt = load_checkpoint(f"{bucket}/x/curve.pt", kind="curve")
    assert ckpt.header["order"] == 2 and all(torch.equal(ckpt.state[k], state[k]) for k in state)
    write_table([{"t": 0.0, "UA": 1.0}, {"t": 1.0}], f"{bucket}/x/path_table.parquet", {"t_star": 0.5})
    write_text(f"{bucket}/x/config.yaml", "a: 1\n")
    assert fs.read_bytes(f"{bucket}/x/config.yaml") == b"a: 1\n"
    assert fs.list_names(f"{bucket}/x") == ["config.yaml", "curve.pt", "path_table.parquet"]
    local = tmp_path / "t.parquet"
    local.write_bytes(fs.read_bytes(f"{bucket}/x/path_table.parquet"))
    table = pq.read_table(local)
    assert table.column("UA").to_pylist() == [1.0, None] and table.schema.metadata[b"t_star"] == b"0.5"


def test_a_staged_run_folder_is_uploaded_whole(bucket):
    with fs.staged(f"{bucket}/runs/r1") as out:
        (out / "paths" / "ga+mcu").mkdir(parents=True)
        write_text(out / "paths" / "ga+mcu" / "mask.json", "{}")
        write_text(out / "config.yaml", "x: 1\n")
        assert not fs.exists(f"{bucket}/runs/r1/config.yaml")  # nothing half-uploaded while it runs
    assert fs.read_bytes(f"{bucket}/runs/r1/paths/ga+mcu/mask.json") == b"{}"
    assert fs.list_names(f"{bucket}/runs/r1") == ["config.yaml"]


def test_bad_storage_uris_are_refused_before_any_compute(s3):
    with pytest.raises(ConfigError, match=r"^--storage: .*AWS_ENDPOINT_URL"):
        fs.check_location("s3://bucket/p?endpoint_override=127.0.0.1:9000", "--storage")
    with pytest.raises(ConfigError, match=r"^--storage: .*allowed: a URI with a bucket"):
        fs.check_location("s3:///nobucket", "--storage")
    with pytest.raises(ConfigError, match=r"^--storage: got 'nosuch://b/p'"):
        fs.check_location("nosuch://b/p", "--storage")
    assert fs.check_location("s3://bucket/prefix/", "--storage") == "s3://bucket/prefix"


# A child process asking the cache for one key; its build takes a while (or hangs) to widen the race.
CHILD = textwrap.dedent(
    """
    import json, sys, time, torch
    from mcu_dist.store import ModelCache
    root, hold, lease_s = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
    def build():
        print("building", flush=True)
        time.sleep(hold)
        torch.manual_seed(0)
        return torch.nn.Linear(8, 2)
    cache = ModelCache(root, lease_s=lease_s)
    start = time.perf_counter()
    model, header = cache.get("original", {"k": 1}, torch.nn.Linear(8, 2), build)
    print(json.dumps({"trained": len(cache.trained), "digest": header["digest"],
                      "waited": time.perf_counter() - start}), flush=True)
    """
)


def _child(root: str, hold: float, lease_s: float) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, root, str(hold), str(lease_s)],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def test_concurrent_processes_train_one_key_once_without_posix_locks(bucket):
    procs = [_child(f"{bucket}/cache", 2.0, 30.0) for _ in range(3)]
    results = [json.loads(p.communicate(timeout=120)[0].strip().splitlines()[-1]) for p in procs]
    assert sum(r["trained"] for r in results) == 1
    assert len({r["digest"] for r in results}) == 1
    entry = ModelCache(f"{bucket}/cache").path("original", {"k": 1})
    assert fs.list_names(f"{bucket}/cache/models") == [fs.name(entry)]  # the lease was released


def test_a_killed_holders_lease_expires_and_another_process_trains(bucket):
    lease_s = 3.0
    holder = _child(f"{bucket}/cache", 600.0, lease_s)
    assert holder.stdout.readline().strip() == "building"
    waiter = _child(f"{bucket}/cache", 0.0, lease_s)
    time.sleep(1.0)
    os.killpg(holder.pid, signal.SIGKILL)  # mid-training: its lease stays behind, unrenewed
    holder.wait()
    out = waiter.communicate(timeout=120)[0].strip().splitlines()
    result = json.loads(out[-1])
    assert out[0] == "building" and result["trained"] == 1
    assert result["waited"] >= lease_s  # it waited out the lease, and not much more
    assert result["waited"] < lease_s + 15


WRITER = textwrap.dedent(
    """
    import sys, torch
    from mcu_dist.store import save_checkpoint
    torch.manual_seed(0)
    # 192 MiB: many more parts than are uploaded at once, so the first part to land is far from the last
    save_checkpoint(sys.argv[1], "model", {"w": torch.randn(48 * 1024 * 1024)})
    """
)


def test_a_cache_write_killed_midway_leaves_no_object_a_reader_accepts(bucket):
    import boto3

    entry = ModelCache(f"{bucket}/cache").path("original", {"k": 2})
    name, key = bucket[len("s3://") :], str(entry).split("/", 3)[3]
    s3 = boto3.client("s3")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(entry)], start_new_session=True)
    deadline, parts = time.time() + 120, 0
    while time.time() < deadline and writer.poll() is None and parts == 0:
        uploads = s3.list_multipart_uploads(Bucket=name).get("Uploads", [])
        if uploads:
            parts = len(s3.list_parts(Bucket=name, Key=key, UploadId=uploads[0]["UploadId"]).get("Parts", []))
        time.sleep(0.02)
    assert parts > 0 and writer.poll() is None, "the upload was not caught midway"
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait()
    assert not fs.exists(entry)  # parts were uploaded, and yet no object
    with pytest.raises(ConfigError):
        load_checkpoint(entry)
    built = []
    model, _ = ModelCache(f"{bucket}/cache").get(
        "original", {"k": 2}, torch.nn.Linear(8, 2), lambda: built.append(1) or torch.nn.Linear(8, 2)
    )
    assert built == [1]  # the reader saw a miss and trained


def test_run_folders_on_a_bucket_are_new_each_time(bucket):
    from mcu_dist.config import ExperimentConfig
    from mcu_dist.experiment import run_folder

    first = run_folder(f"{bucket}/runs", ExperimentConfig())
    assert first.startswith(f"{bucket}/runs/") and not fs.exists(first)
    with fs.staged(first) as out:
        write_text(out / "config.yaml", "x: 1\n")
    second = run_folder(f"{bucket}/runs", ExperimentConfig())
    assert second != first and fs.list_names(second) == []  # never an existing run's folder
