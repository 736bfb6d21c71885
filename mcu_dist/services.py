"""Probes of the services a run depends on, before any compute: the MLflow store, writable folders.

Each probe is bounded (a few seconds) and fails with one :class:`ServiceError` line naming the flag
and what is allowed. MLflow's own HTTP retries are bounded here too (its defaults retry one call for
about four minutes), and its usage telemetry is off unless the user opted in by setting
``MLFLOW_DISABLE_TELEMETRY=false`` (or ``DO_NOT_TRACK=false``) themselves.
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from mcu_dist.config import ConfigError

PROBE_TIMEOUT_S = 5.0
# one MLflow HTTP call: at most 3 tries of 20 s, backoff 1 s, 2 s -> a dead server costs < 1 min per call
MLFLOW_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


class ServiceError(ConfigError):
    """A service the run needs does not answer, or a folder it writes to is not writable."""


def mlflow_defaults() -> None:
    """Bounded HTTP retries and no telemetry for this process and the Ray workers it starts (they inherit
    the environment); any value the user set wins."""
    for key, value in MLFLOW_HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)
    if "DO_NOT_TRACK" not in os.environ:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def redact(uri: str | None) -> str:
    """``uri`` with any ``user:password@`` and secret-looking query values replaced by ``***``."""
    if not uri:
        return str(uri)
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = re.sub(r"(?i)((?:token|password|secret|key)[^=&]*=)[^&]*", r"\1***", parts.query)
    if (netloc, query) == (parts.netloc, parts.query):
        return uri  # nothing secret; unsplitting would also turn sqlite:////abs into sqlite://abs
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def redact_text(text: str) -> str:
    """Every ``scheme://user:password@`` inside free text (an error message) with the credentials replaced."""
    return re.sub(r"(\w+://)[^/\s@]+@", r"\1***@", text)


def use_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@``; the credentials go to MLflow's own environment variables
    (MLFLOW_TRACKING_USERNAME / _PASSWORD), so no URI that MLflow prints or raises carries them."""
    parts = urllib.parse.urlsplit(uri)
    if parts.scheme not in ("http", "https") or parts.password is None and parts.username is None:
        return uri
    os.environ["MLFLOW_TRACKING_USERNAME"] = urllib.parse.unquote(parts.username or "")
    os.environ["MLFLOW_TRACKING_PASSWORD"] = urllib.parse.unquote(parts.password or "")
    return urllib.parse.urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment)
    )


def probe_tracking(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """An HTTP(S) tracking server must answer within ``timeout``; a sqlite store's folder must be writable."""
    if uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)
        host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError as e:
            raise ServiceError(
                f"--tracking-uri: cannot reach {redact(uri)} within {timeout:g} s ({type(e).__name__}: "
                f"{e.strerror or e}); allowed: a running MLflow tracking server, or a sqlite:/// path"
            ) from None
        request = urllib.request.Request(uri.rstrip("/") + "/health")
        try:
            urllib.request.urlopen(request, timeout=timeout).close()
        except urllib.error.HTTPError as e:
            if e.code in (401, 403):
                raise ServiceError(
                    f"--tracking-uri: {redact(uri)} refused the credentials (HTTP {e.code}); allowed: "
                    "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD of a user of that server"
                ) from None
            # any other HTTP answer: something serves there; MLflow's own calls will tell more
        except (urllib.error.URLError, OSError) as e:
            raise ServiceError(
                f"--tracking-uri: {redact(uri)} accepted a connection but did not answer within "
                f"{timeout:g} s ({type(e).__name__}); allowed: a running MLflow tracking server"
            ) from None
    elif uri.startswith("sqlite:///"):
        writable_dir(Path(uri[len("sqlite:///") :]).parent, "--tracking-uri").mkdir(
            parents=True, exist_ok=True
        )


def writable_dir(path: str | Path, flag: str) -> Path:
    """``path`` if it is, or can be created as, a writable folder; checked without writing anything."""
    path = Path(path)
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        why = f"{ancestor} is a file" if ancestor != path else "it is a file"
    elif not os.access(ancestor, os.W_OK | os.X_OK):
        why = f"{ancestor} is not writable"
    else:
        return path
    raise ServiceError(f"{flag}: cannot write to {path} ({why}); allowed: a writable folder")


def safe_name(name: str, flag: str) -> str:
    """A name used as one path component (and in MLflow filters): letters, digits, ``.``, ``_``, ``-``."""
    if not SAFE_NAME.fullmatch(name or ""):
        raise ConfigError(
            f"{flag}: got {name!r}; allowed: 1-128 letters, digits, '.', '_' or '-', not starting with "
            "'.', '_' or '-'"
        )
    return name


def hold_sweep_lock(sweep_dir: str | Path):
    """An exclusive lock on ``sweep_dir`` for the life of this process (released by the OS even on SIGKILL):
    a second sweep with the same --name on the same --storage is refused instead of sharing its folder."""
    path = Path(sweep_dir)
    path.mkdir(parents=True, exist_ok=True)
    fh = open(path / ".sweep.lock", "a+")  # noqa: SIM115 -- held open until the process exits
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        holder = fh.read().strip() or "?"
        fh.close()
        raise ServiceError(
            f"--name: sweep {path.name!r} is already running on --storage {path.parent} (pid {holder}); "
            "allowed: another --name or --storage, or wait until it ends"
        ) from None
    fh.seek(0)
    fh.truncate()
    fh.write(str(os.getpid()))
    fh.flush()
    return fh
