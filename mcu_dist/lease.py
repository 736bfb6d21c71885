"""A lease object on S3: at most one live holder per key, without POSIX locks, from conditional puts.

- acquire: ``PutObject(If-None-Match: *)`` on ``<entry>.lease`` — exactly one of any number of concurrent
  callers creates it (the others get 412 PreconditionFailed, or 409 while a conditional write is in flight);
- hold: the holder rewrites the lease every ``ttl/4`` seconds with ``If-Match: <its ETag>``, so the ETag
  changes while it lives;
- expire: a waiter takes a lease over when its ETag has not changed for ``ttl`` seconds of the waiter's
  own monotonic clock (no clocks are compared across nodes), again with ``If-Match`` so that of several
  waiters one wins;
- release: ``DeleteObject(If-Match: <ETag>)``; a lost lease is never deleted by its former holder.

The caller re-checks its entry after acquiring (``done``): a holder that finished meanwhile leaves the
entry and the waiter returns without training. Credentials and the endpoint come from boto3's standard
chain (``AWS_*`` environment variables, config files, instance or pod identity, ``AWS_ENDPOINT_URL``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

from mcu_dist.config import ConfigError

CONTENDED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def s3_client():
    try:
        import boto3
    except ImportError:
        raise ConfigError(
            "storage: got an s3:// location without boto3 installed; allowed: pip install boto3 "
            "(the once-only model cache on S3 uses its conditional puts)"
        ) from None
    return boto3.client("s3")


def _code(error: Exception) -> str:
    return str(getattr(error, "response", {}).get("Error", {}).get("Code", ""))


class Lease:
    """``with Lease("s3://bucket/models/x.pt.lease", ttl, done):`` — held inside the block (or ``done()``)."""

    def __init__(self, uri: str, ttl: float, done: Callable[[], bool], poll: float = 0.5):
        parts = urlsplit(uri)
        if parts.scheme != "s3":
            raise ConfigError(
                f"storage: got {parts.scheme}:// for the model cache; allowed: a local or shared path, or "
                "s3:// (the once-only cache needs conditional puts)"
            )
        self.bucket, self.key = parts.netloc, parts.path.lstrip("/")
        self.ttl, self.done, self.poll = ttl, done, poll
        self.client = s3_client()
        self.etag: str | None = None
        self.took_over = False  # this holder replaced an expired lease
        self.lost = False  # another process took the lease while this one held it
        self._beat = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self._beat += 1
        return json.dumps({"holder": f"{socket.gethostname()}:{os.getpid()}", "beat": self._beat}).encode()

    def _put(self, **condition) -> str | None:
        """The new ETag, or None when the condition failed (someone else's lease)."""
        try:
            r = self.client.put_object(Bucket=self.bucket, Key=self.key, Body=self._body(), **condition)
        except Exception as e:
            if _code(e) in CONTENDED:
                return None
            raise
        return r["ETag"]

    def __enter__(self) -> Lease:
        seen: tuple[str, float] | None = None  # (ETag, when this waiter first saw it)
        while not self.done():
            self.etag = self._put(IfNoneMatch="*")
            if self.etag is not None:
                break
            try:
                etag = self.client.head_object(Bucket=self.bucket, Key=self.key)["ETag"]
            except Exception as e:
                if _code(e) in ("404", "NoSuchKey", "NotFound"):
                    continue  # released between the put and the look
                raise
            now = time.monotonic()
            if seen is None or seen[0] != etag:
                seen = (etag, now)
            elif now - seen[1] >= self.ttl:
                self.etag = self._put(IfMatch=etag)
                if self.etag is not None:
                    self.took_over = True
                    break
                seen = None
            time.sleep(self.poll)
        if self.etag is not None:
            self._thread = threading.Thread(target=self._renew, daemon=True, name="mcu-lease")
            self._thread.start()
        return self

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl / 4):
            with self._lock:
                etag = self._put(IfMatch=self.etag)
                if etag is None:
                    self.lost = True
                    return
                self.etag = etag

    def __exit__(self, *exc) -> None:
        if self.etag is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._lock:
            if not self.lost:
                with contextlib.suppress(Exception):  # an unreleased lease simply expires
                    self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=self.etag)
