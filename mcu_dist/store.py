"""The store: everything the project keeps on disk goes through this module.

- ``atomic(path)``: write to a temporary file beside ``path``, rename it into place on success (one
  naming scheme: ``<stem>.<pid>.<random>.tmp<suffix>``), so a reader never sees half a file.
- ``write_table`` / ``write_text``: Parquet tables and text (YAML, JSON), atomically.
- ``save_checkpoint`` / ``load_checkpoint``: one checkpoint format for every tensor file the project
  writes (models, curves, curve-training state)::

      {"header": {"format", "kind", "architecture", "digest", ...meta},
       "state": {name: tensor}, "extra": {...}}

  ``architecture`` fingerprints the state's names and shapes, ``digest`` is the SHA-256 of its
  tensors (checked on load). A user's plain state dict (or ``{"state_dict": ...}``) loads too.
- ``ModelCache``: content-addressed models (reference and baseline models) keyed by a hash of exactly
  the fields they depend on, each trained once: a file lock on a POSIX path, a lease object written
  with conditional puts on an object store (``mcu_dist.lease``); a model with a non-finite tensor is
  never written, and an entry that fails to load is moved aside and retrained.

Locations are local paths or URIs (``s3://bucket/prefix``, ``gs://...``): ``mcu_dist.fs`` resolves them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mcu_dist import fs
from mcu_dist.config import ConfigError
from mcu_dist.guard import check_finite_model

FORMAT = 2  # of checkpoints and of cache keys: entries of another format are simply not hit
# 2: training batches merge a small ragged tail (data.batching.batch_spans); models of format 1 are retrained

Location = str | Path


@contextlib.contextmanager
def atomic(path: Location) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename (a URI: the
    finished file is uploaded as one object, which S3 makes visible only once complete)."""
    if fs.is_remote(path):
        with _remote_atomic(str(path)) as tmp:
            yield tmp
        return
    path = fs.local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _remote_atomic(uri: str) -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="mcu-put-") as d:
        tmp = Path(d) / fs.name(uri)
        yield tmp
        fs.upload(tmp, uri)


def write_text(path: Location, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text)


def write_table(rows: list[dict] | Any, path: Location, metadata: dict[str, Any] | None = None) -> None:
    """Rows of scalars (or a ``pyarrow.Table``) -> Parquet; a key missing from some rows is null there."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if isinstance(rows, pa.Table):
        table = rows
    else:
        keys = list(dict.fromkeys(k for row in rows for k in row))
        table = pa.Table.from_pylist([{k: row.get(k) for k in keys} for row in rows])
    if metadata:
        table = table.replace_schema_metadata(
            {**(table.schema.metadata or {}), **{k: str(v) for k, v in metadata.items()}}
        )
    with atomic(path) as tmp:
        pq.write_table(table, tmp)


def file_digest(path: Location) -> str:
    if fs.is_remote(path):
        return hashlib.sha256(fs.read_bytes(path)).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def key_hash(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def architecture_of(state: dict[str, torch.Tensor]) -> str:
    """A fingerprint of the parameter and buffer names and shapes."""
    shapes = [(n, tuple(v.shape)) for n, v in state.items()]
    return hashlib.sha256(repr(shapes).encode()).hexdigest()[:16]


def digest_of(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        v = state[name].detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}:{v.dtype}:{tuple(state[name].shape)}".encode())
        h.update(v.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Checkpoint:
    header: dict[str, Any]  # format, kind, architecture, digest, and the writer's meta
    state: dict[str, torch.Tensor]
    extra: dict[str, Any] = field(default_factory=dict)  # optimiser state, RNG state, ...


def save_checkpoint(
    path: Location,
    kind: str,
    state: dict[str, torch.Tensor],
    meta: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    state = {k: v.detach().cpu() for k, v in state.items()}
    header = {
        **(meta or {}),
        "format": FORMAT,
        "kind": kind,
        "architecture": architecture_of(state),
        "digest": digest_of(state),
    }
    with atomic(path) as tmp:
        torch.save({"header": header, "state": state, "extra": extra or {}}, tmp)


def save_model(model: nn.Module, path: Location, meta: dict[str, Any] | None = None) -> None:
    save_checkpoint(path, "model", model.state_dict(), meta)


def load_checkpoint(path: Location, field_name: str = "checkpoint", kind: str | None = None) -> Checkpoint:
    """Read a checkpoint (``weights_only=True`` always); a plain state dict is accepted as kind ``model``."""
    try:
        source = io.BytesIO(fs.read_bytes(path)) if fs.is_remote(path) else path
        obj = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a damaged file
        raise ConfigError(
            f"{field_name}: cannot load {path} ({type(e).__name__}); allowed: a torch checkpoint "
            "saved with torch.save (state dict or {'state_dict': ...})"
        ) from None
    if isinstance(obj, dict) and isinstance(obj.get("header"), dict) and "state" in obj:
        ckpt = Checkpoint(obj["header"], obj["state"], obj.get("extra") or {})
        if digest_of(ckpt.state) != ckpt.header.get("digest"):
            raise ConfigError(
                f"{field_name}: {path} fails its digest check; allowed: an undamaged checkpoint"
            )
    elif isinstance(obj, dict) and "state_dict" in obj:
        ckpt = Checkpoint({"kind": "model", **(obj.get("meta") or {})}, obj["state_dict"])
    elif isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        ckpt = Checkpoint({"kind": "model"}, obj)
    else:
        raise ConfigError(
            f"{field_name}: {path} holds no state dict; allowed: a state dict or {{'state_dict': ...}}"
        )
    if kind is not None and ckpt.header.get("kind") != kind:
        raise ConfigError(f"{field_name}: {path} holds a {ckpt.header.get('kind')!r}; allowed: a {kind!r}")
    return ckpt


def load_into(model: nn.Module, state: dict, field_name: str, path: Location) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise ConfigError(
            f"{field_name}: {path} does not fit model ({first}); allowed: a checkpoint of the "
            "configured architecture"
        ) from None
    return model


def load_model(model: nn.Module, path: Location, field_name: str) -> tuple[nn.Module, dict[str, Any]]:
    """``model`` with the weights of the model checkpoint at ``path``, and the checkpoint's header."""
    ckpt = load_checkpoint(path, field_name, kind="model")
    return load_into(model, ckpt.state, field_name, path), ckpt.header


class ModelCache:
    """Models under ``<root>/models/<kind>-<hash of fields>.pt``, each trained once.

    Once-only: on a POSIX path a ``flock`` on ``<entry>.lock``; on an object store a lease object
    ``<entry>.lease`` created with a conditional put (``mcu_dist.lease``), renewed while its holder trains,
    taken over when it stops changing for ``lease_s`` seconds (a killed holder)."""

    def __init__(self, root: Location, lease_s: float = 60.0):
        self.root: Location = fs.join(root, "models")
        if not fs.is_remote(self.root):  # a local cache keeps Path locations
            self.root = Path(self.root)
            self.root.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.trained: list[str] = []  # keys this process trained (cache misses)

    def path(self, kind: str, fields: dict) -> Location:
        entry = f"{kind}-{key_hash({'format': FORMAT, **fields})}.pt"
        return self.root / entry if isinstance(self.root, Path) else fs.join(self.root, entry)

    def get(
        self, kind: str, fields: dict, template: nn.Module, build: Callable[[], nn.Module]
    ) -> tuple[nn.Module, dict]:
        """Load ``kind`` for ``fields`` into ``template``, training it with ``build`` on a miss. An entry that
        fails to load (truncated by a full disk or a killed copy) is moved aside and trained again."""
        path = self.path(kind, fields)
        for attempt in (1, 2):
            if not fs.exists(path):
                with self._lock(path):
                    if not fs.exists(path):
                        start = time.perf_counter()
                        model = check_finite_model(build(), kind)  # a non-finite model is never cached
                        meta = {
                            "fields": json.dumps(fields, sort_keys=True, default=str),
                            "seconds": time.perf_counter() - start,
                            "cache_kind": kind,
                        }
                        save_model(model, path, meta)
                        self.trained.append(fs.name(path)[: -len(".pt")])
            try:
                model, header = load_model(template, path, f"cache entry {fs.name(path)}")
                return model.eval(), header
            except ConfigError as e:
                if attempt == 2:
                    raise
                self._quarantine(path, e)
        raise AssertionError("unreachable")

    def _quarantine(self, path: Location, error: ConfigError) -> None:
        with self._lock(path, wait_for_entry=False):
            with contextlib.suppress(ConfigError):  # another process may have replaced it meanwhile
                load_checkpoint(path, fs.name(path))
                return
            if fs.exists(path):
                aside = f"{str(path)[: -len('.pt')]}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}.pt"
                fs.move(path, aside)
                print(
                    f"cache: {error}; moved to {fs.name(aside)}, training it again",
                    file=sys.stderr,
                    flush=True,
                )

    @contextlib.contextmanager
    def _lock(self, path: Location, wait_for_entry: bool = True):
        """Held by one process at a time; with ``wait_for_entry`` a waiter on an object store also stops
        waiting once the entry exists (its holder finished)."""
        if fs.is_remote(path):
            from mcu_dist.lease import Lease

            done = (lambda: fs.exists(path)) if wait_for_entry else (lambda: False)
            with Lease(f"{path}.lease", self.lease_s, done=done):
                yield
            return
        with open(Path(path).with_suffix(".lock"), "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # say what we wait for: another process is training this entry
                print(
                    f"cache: waiting for another process to finish {fs.name(path)}",
                    file=sys.stderr,
                    flush=True,
                )
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
