"""Datasets on S3: an ``s3://bucket/prefix`` mirrored into a local cache folder for the loaders.

Every dataset whose config has a ``path`` accepts ``s3://bucket/prefix`` there: before the dataset
is built, the objects under the prefix are mirrored into
``<cache>/s3/<bucket>/<prefix>`` (``<cache>`` is ``RAYNAS_CACHE_DIR``, else ``~/.cache/raynas``)
and the loader reads that folder as it reads any local one. Endpoint, region and credentials are
:mod:`raynas.storage`'s (the usual AWS environment).

The mirror is

- **incremental**: an object is downloaded only when its local copy is missing or its size, ETag or
  the copy's modification time differ from those recorded when it was last downloaded (a manifest
  beside the folder); objects deleted from the prefix are deleted from the copy;
- **atomic per file**: each object is downloaded to a temporary file in its folder and renamed into
  place, so a reader never sees half a file and an interrupted mirror resumes where it stopped;
- **safe under concurrency**: Ray actors on one node that mirror the same prefix at once take turns
  through an exclusive file lock; the first downloads, the others find everything current.

A file a component reads whole (a benchmark's table) is one object: :func:`mirror_file` keeps its
copy at ``<cache>/s3/<bucket>/<key>`` the same way.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from dataclasses import fields, is_dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from raynas.errors import DataError, StorageError

log = logging.getLogger(__name__)

CACHE_VARIABLE = "RAYNAS_CACHE_DIR"
_PART_SUFFIX = ".part"


def cache_dir() -> Path:
    """The local cache: ``RAYNAS_CACHE_DIR``, else ``~/.cache/raynas``."""
    return Path(os.environ.get(CACHE_VARIABLE) or Path.home() / ".cache" / "raynas").expanduser()


def local_folder(uri: str) -> Path:
    """Where :func:`mirror` keeps the copy of ``uri`` (``<cache>/s3/<bucket>/<prefix>``)."""
    from raynas.storage import S3Location

    loc = S3Location.parse(uri)
    key = PurePosixPath(loc.key.strip("/"))
    if ".." in key.parts:
        raise DataError(f"data.path {uri!r}: a prefix with '..' cannot name a local folder")
    return cache_dir() / "s3" / loc.bucket / key


def with_local_path(config: Any) -> Any:
    """``config`` with an ``s3://`` ``path`` replaced by its mirrored local folder (else unchanged).

    Args:
        config: A dataset's config dataclass (or None).
    """
    if not is_dataclass(config) or isinstance(config, type) or "path" not in {f.name for f in fields(config)}:
        return config
    path = config.path
    if not str(path).startswith("s3://"):
        return config
    return replace(config, path=str(mirror(str(path))))


def mirror(uri: str) -> Path:
    """Bring the local copy of the objects under ``uri`` up to date and return its folder.

    Args:
        uri: ``s3://bucket/prefix``: the folder a dataset's loader expects, on S3.

    Returns:
        The local folder (see :func:`local_folder`), holding ``<key relative to the prefix>`` for
        every object under the prefix.

    Raises:
        StorageError: The bucket does not exist, the credentials are refused or the endpoint is
            unreachable (the message names ``uri``, never the credentials).
        DataError: No object lies under the prefix.
    """
    from raynas.storage import S3Location, s3_client

    loc = S3Location.parse(uri)
    target = local_folder(uri)
    prefix = loc.key.strip("/") + "/" if loc.key.strip("/") else ""
    client = s3_client()
    target.parent.mkdir(parents=True, exist_ok=True)
    manifest_file = target.parent / f".{target.name}.manifest.json"
    with locked(target.parent / f".{target.name}.lock"):
        objects = _list(client, loc.bucket, prefix, uri)
        if not objects:
            raise DataError(
                f"data.path {uri!r} holds no objects: upload the dataset's files under that prefix "
                "(the same layout as a local data.path)"
            )
        recorded = _read_manifest(manifest_file)
        # Entries still describing an object; those fetched now replace theirs as they arrive.
        current = {rel: entry for rel, entry in recorded.items() if rel in objects}
        fetched = fetched_bytes = 0
        try:
            _remove_partial_downloads(target)
            for rel, (key, size, etag) in sorted(objects.items()):
                local = target / rel
                entry = recorded.get(rel)
                if entry is not None and _up_to_date(local, entry, size, etag):
                    continue
                _download(client, loc.bucket, key, local, uri)
                current[rel] = {"size": size, "etag": etag, "mtime_ns": local.stat().st_mtime_ns}
                fetched, fetched_bytes = fetched + 1, fetched_bytes + size
            for rel in set(recorded) - set(objects):  # deleted on S3 since the last mirror
                (target / rel).unlink(missing_ok=True)
        finally:
            _write_manifest(manifest_file, current)
    if fetched:
        log.info("mirrored %d of %d objects (%.1f MB) from %s to %s",
                 fetched, len(objects), fetched_bytes / 1e6, uri, target)
    return target


def mirror_file(uri: str, *, setting: str) -> Path:
    """Bring the local copy of the one object ``uri`` names up to date and return it: downloaded
    when missing, or when its size, ETag or the copy's modification time differ from those of its
    last download, atomically and under the same lock as :func:`mirror`.

    Args:
        uri: ``s3://bucket/key`` of a file.
        setting: The job's key that gave ``uri``, for the line that says it is missing.

    Raises:
        StorageError: As :func:`mirror`.
        DataError: No object is at ``uri``.
    """
    from raynas.storage import S3Location, s3_client

    loc = S3Location.parse(uri)
    key = loc.key.strip("/")
    local = local_folder(uri)
    client = s3_client()
    local.parent.mkdir(parents=True, exist_ok=True)
    manifest_file = local.parent / f".{local.name}.manifest.json"
    with locked(local.parent / f".{local.name}.lock"):
        found = [(k, size, etag) for k, size, etag in _objects(client, loc.bucket, key, uri) if k == key]
        if not key or not found:
            raise DataError(f"{setting} {uri!r}: no such object (name the file itself: s3://bucket/key)")
        _, size, etag = found[0]
        entry = _read_manifest(manifest_file).get(local.name)
        if entry is None or not _up_to_date(local, entry, size, etag):
            for stale in local.parent.glob(f".{local.name}.*{_PART_SUFFIX}"):  # a killed download's
                stale.unlink(missing_ok=True)
            _download(client, loc.bucket, key, local, uri)
            entry = {"size": size, "etag": etag, "mtime_ns": local.stat().st_mtime_ns}
            _write_manifest(manifest_file, {local.name: entry})
            log.info("mirrored %s (%.1f MB) to %s", uri, size / 1e6, local)
    return local


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on the file ``path`` (made if missing), held by this process while the
    block runs (released by the OS if the process dies): processes of one node take turns."""
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _list(client: Any, bucket: str, prefix: str, uri: str) -> dict[str, tuple[str, int, str]]:
    """Relative path -> (key, size, ETag) of every object under ``prefix``."""
    listed = _objects(client, bucket, prefix, uri)
    return {_relative(key, prefix, uri): (key, size, etag) for key, size, etag in listed}


def _objects(client: Any, bucket: str, prefix: str, uri: str) -> list[tuple[str, int, str]]:
    """(key, size, ETag) of every object whose key starts with ``prefix`` (no folder markers)."""
    from botocore.exceptions import BotoCoreError, ClientError

    objects = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                if not item["Key"].endswith("/"):  # (a "folder" marker object)
                    objects.append((item["Key"], int(item["Size"]), item["ETag"].strip('"')))
    except ClientError as exc:
        raise _storage_error(uri, exc) from None
    except BotoCoreError as exc:
        raise _unreachable(uri, exc) from None
    return objects


def _relative(key: str, prefix: str, uri: str) -> str:
    rel = PurePosixPath(key[len(prefix):])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise DataError(f"object {key!r} under {uri!r} has a name that cannot be a local file")
    return str(rel)


def _up_to_date(local: Path, entry: dict[str, Any], size: int, etag: str) -> bool:
    try:
        stat = local.stat()
    except OSError:
        return False
    return (entry.get("size"), entry.get("etag"), entry.get("mtime_ns")) == (
        size, etag, stat.st_mtime_ns
    ) and stat.st_size == size


def _download(client: Any, bucket: str, key: str, local: Path, uri: str) -> None:
    """Download one object to a temporary file beside ``local`` and rename it into place."""
    from botocore.exceptions import BotoCoreError, ClientError

    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.", suffix=_PART_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as out:
            client.download_fileobj(bucket, key, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, local)
    except ClientError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _storage_error(f"s3://{bucket}/{key}", exc) from None
    except BotoCoreError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _unreachable(uri, exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _remove_partial_downloads(target: Path) -> None:
    """Temporary files left by a mirror that was killed (we hold the lock: none is in use)."""
    if target.is_dir():
        for stale in target.rglob(f".*{_PART_SUFFIX}"):
            stale.unlink(missing_ok=True)


def _read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # none yet, or unreadable: every object is checked by downloading it again
    return data if isinstance(data, dict) else {}


def _write_manifest(path: Path, entries: dict[str, dict[str, Any]]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as out:
        json.dump(entries, out, sort_keys=True)
    os.replace(tmp, path)


def _storage_error(uri: str, exc: Any) -> StorageError:
    from raynas.storage import endpoint_url

    code = exc.response.get("Error", {}).get("Code", "?")
    where = endpoint_url() or "AWS S3"
    hint = {
        "NoSuchBucket": "the bucket does not exist",
        "404": "it does not exist",
        "NoSuchKey": "the object vanished while it was mirrored; try again",
        "AccessDenied": "access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        "403": "access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        "InvalidAccessKeyId": "the access key is unknown; check AWS_ACCESS_KEY_ID",
        "SignatureDoesNotMatch": "the secret key is wrong; check AWS_SECRET_ACCESS_KEY",
    }.get(code, "check the bucket name and the credentials")
    return StorageError(f"cannot read the dataset at {uri} from {where} (error {code}): {hint}")


def _unreachable(uri: str, exc: Exception) -> StorageError:
    from raynas.storage import ENDPOINT_VARIABLES, endpoint_url

    return StorageError(
        f"S3 endpoint {endpoint_url() or 'AWS S3'} is unreachable for the dataset at {uri} "
        f"({type(exc).__name__}); check that the server is up and {' / '.join(ENDPOINT_VARIABLES)}"
    )
