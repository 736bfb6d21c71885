"""One filesystem layer under the store: a location is a local path or a URI, resolved by ``pyarrow.fs``.

Why ``pyarrow.fs``: Ray Tune and Ray Train resolve ``storage_path`` with it, so Tune's experiment state,
Train's checkpoints, the model cache and the run folders resolve one URI to the same filesystem, with the
same endpoint and credential chain; pyarrow is already a dependency (fsspec would add s3fs/gcsfs and an
async stack). Any fsspec filesystem still plugs in: ``pyarrow.fs.FileSystem.from_uri`` accepts what
pyarrow knows (local, ``s3://``, ``gs://``, ``hdfs://``), and ``register(scheme, fs)`` wraps any other.

Object stores: the endpoint of an S3-compatible store comes from ``AWS_ENDPOINT_URL``, credentials from
the cloud's standard chain (environment, config files, instance/pod identity); this module never takes,
stores or prints a credential. A write uploads a finished local file as one object: S3 makes an object
visible only once its upload completes (a single PUT, or CompleteMultipartUpload), so a killed writer
leaves no object, and every checkpoint's digest is checked on read besides.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from mcu_dist.config import ConfigError

Location = str | Path

_custom: dict[str, object] = {}  # scheme -> pyarrow FileSystem, for filesystems pyarrow cannot name


def is_remote(loc: Location) -> bool:
    """A URI other than ``file://`` (those are read and written through ``pyarrow.fs``)."""
    s = str(loc)
    return "://" in s and not s.startswith("file://")


def local_path(loc: Location) -> Path:
    s = str(loc)
    return Path(s[len("file://") :] if s.startswith("file://") else s)


def check_location(loc: Location, field_name: str) -> str:
    """``loc`` as a string; a URI is refused before any compute when its filesystem cannot be resolved."""
    s = str(loc)
    if not is_remote(s):
        return s
    parts = urlsplit(s)
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{field_name}: got {s!r}; allowed: a URI without '?' or '#' (set an S3-compatible endpoint "
            "with AWS_ENDPOINT_URL)"
        )
    if not parts.netloc:
        raise ConfigError(f"{field_name}: got {s!r}; allowed: a URI with a bucket, e.g. s3://bucket/prefix")
    try:
        resolve(s)
    except (ValueError, OSError, ImportError) as e:
        raise ConfigError(
            f"{field_name}: got {s!r} ({type(e).__name__}: {str(e).splitlines()[0][:120]}); allowed: a local "
            "path, s3://, gs://, hdfs:// or a scheme registered with mcu_dist.fs.register"
        ) from None
    return s.rstrip("/")


def register(scheme: str, filesystem) -> None:
    """Serve ``scheme://`` with ``filesystem`` (a pyarrow FileSystem, or an fsspec one, wrapped here)."""
    import pyarrow.fs as pafs

    if not isinstance(filesystem, pafs.FileSystem):
        filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
    _custom[scheme] = filesystem


def resolve(loc: Location):
    """(pyarrow FileSystem, path inside it) for a URI."""
    import pyarrow.fs as pafs

    s = str(loc)
    scheme, _, rest = s.partition("://")
    if scheme in _custom:
        return _custom[scheme], rest
    return pafs.FileSystem.from_uri(s)


def join(loc: Location, *parts: str) -> str:
    if not is_remote(loc):
        return str(local_path(loc).joinpath(*parts))
    return "/".join([str(loc).rstrip("/"), *(p.strip("/") for p in parts)])


def name(loc: Location) -> str:
    return str(loc).rstrip("/").rsplit("/", 1)[-1]


def exists(loc: Location) -> bool:
    if not is_remote(loc):
        return local_path(loc).exists()
    import pyarrow.fs as pafs

    fs, path = resolve(loc)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(loc: Location) -> bytes:
    if not is_remote(loc):
        return local_path(loc).read_bytes()
    fs, path = resolve(loc)
    with fs.open_input_stream(path) as f:
        return f.read()


def delete(loc: Location) -> None:
    if not is_remote(loc):
        local_path(loc).unlink(missing_ok=True)
        return
    fs, path = resolve(loc)
    with contextlib.suppress(FileNotFoundError):
        fs.delete_file(path)


def upload(local: Location, loc: Location) -> None:
    """Copy a finished local file to ``loc`` as one object (visible only once complete)."""
    import pyarrow.fs as pafs

    fs, path = resolve(loc)
    parent = path.rsplit("/", 1)[0]
    with contextlib.suppress(OSError):  # object stores have no directories to make
        fs.create_dir(parent, recursive=True)
    pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def put_folder(local: Location, loc: Location) -> None:
    """Copy every file under the local folder ``local`` to ``loc`` (a local folder or a URI)."""
    local = Path(local)
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        rel = f.relative_to(local).as_posix()
        if is_remote(loc):
            upload(f, join(loc, rel))
        else:
            dest = local_path(loc) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(f, dest)


def list_names(loc: Location) -> list[str]:
    """Names of the files directly under the folder (or prefix) ``loc``; empty when there is none."""
    if not is_remote(loc):
        p = local_path(loc)
        return sorted(c.name for c in p.iterdir() if c.is_file()) if p.is_dir() else []
    import pyarrow.fs as pafs

    fs, path = resolve(loc)
    infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(i.base_name for i in infos if i.type == pafs.FileType.File)


@contextlib.contextmanager
def staged(loc: Location) -> Iterator[Path]:
    """A local folder for a run folder at ``loc``: ``loc`` itself when local, else a temporary folder whose
    files are uploaded to ``loc`` when the body ends (also after an error, so a failed run keeps its logs)."""
    if not is_remote(loc):
        yield local_path(loc)  # made by the writer, once its input has been checked
        return
    tmp = Path(tempfile.mkdtemp(prefix="mcu-stage-"))
    try:
        yield tmp
    finally:
        try:
            put_folder(tmp, loc)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def move(src: Location, dst: Location) -> None:
    """Rename a file (on an object store: copy, then delete)."""
    if not is_remote(src):
        os.replace(local_path(src), local_path(dst))
        return
    fs, path = resolve(src)
    fs.move(path, resolve(dst)[1])


def probe(loc: Location, field_name: str) -> None:
    """One bounded request to a URI's bucket before any compute: an unreachable store or a missing bucket
    is one error line naming ``field_name`` (a local path is checked by the writer)."""
    if not is_remote(loc):
        return
    import pyarrow.fs as pafs

    filesystem, path = resolve(loc)
    bucket = path.split("/", 1)[0]
    try:
        found = filesystem.get_file_info(bucket).type != pafs.FileType.NotFound
    except OSError as e:
        raise ConfigError(
            f"{field_name}: cannot reach {loc} ({str(e).splitlines()[0][-160:]}); allowed: a reachable store "
            "(endpoint from AWS_ENDPOINT_URL, credentials from the environment or the cloud's chain)"
        ) from None
    if not found:
        raise ConfigError(
            f"{field_name}: bucket {bucket!r} of {loc} does not exist; allowed: an existing bucket"
        )
