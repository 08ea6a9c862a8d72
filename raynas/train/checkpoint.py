"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact.

A path may be ``s3://bucket/key``: the checkpoint is completed in a local file first and then
published as one object (see :mod:`raynas.storage`). The version a save replaces is kept beside
it (:func:`previous_checkpoint`), for a resume when the latest cannot be read.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch


def previous_checkpoint(path: str | Path) -> str:
    """Where the version before the latest checkpoint at ``path`` is kept: ``checkpoint.pt`` ->
    ``checkpoint.prev.pt`` (in the same folder or ``s3://`` prefix)."""
    text = str(path)
    head, dot, suffix = text.rpartition(".")
    if not dot or "/" in suffix:
        return f"{text}.prev"
    return f"{head}.prev.{suffix}"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, fsync it, then rename it over ``path``
    (or upload it as one object to an ``s3://`` path). The checkpoint it replaces becomes
    :func:`previous_checkpoint`; ``path`` itself is never missing on the way."""
    from raynas import storage

    if storage.is_s3(path):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint.pt"
            torch.save(state, local)
            _keep_previous_s3(str(path))
            storage.put_file(local, str(path))
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:  # unbuffered: a refused write fails here
            writes = _Writes(f)
            try:
                torch.save(state, writes)
                os.fsync(f.fileno())
            except (RuntimeError, OSError) as exc:
                error = writes.error or (exc if isinstance(exc, OSError) else None)
                if error is None:
                    raise
                # torch reports a failed write as "unexpected pos"; the file system's reason is
                # the user's news (a full disk, a file size limit), with the checkpoint's name.
                raise OSError(error.errno, error.strerror, str(path)) from None
        if path.exists():  # a hard link: the latest stays where it is until the rename below
            keep = Path(f"{tmp}.prev")
            try:
                os.link(path, keep)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, keep)
            os.replace(keep, previous_checkpoint(path))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        Path(f"{tmp}.prev").unlink(missing_ok=True)
        raise


class _Writes:
    """A binary file for ``torch.save`` that keeps the ``OSError`` of a failed write, which torch
    replaces with a ``RuntimeError`` of its own (``unexpected pos 64 vs 0``)."""

    def __init__(self, file: Any) -> None:
        self.file = file
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:  # an unbuffered file may take part of it (a disk nearly full)
                view = view[self.file.write(view):]
        except OSError as exc:
            self.error = exc
            raise
        return len(data)

    def flush(self) -> None:
        self.file.flush()


def _keep_previous_s3(uri: str) -> None:
    """Copy the object at ``uri`` to :func:`previous_checkpoint` on the server (none: nothing)."""
    from botocore.exceptions import ClientError

    from raynas import storage

    latest, previous = storage.S3Location.parse(uri), storage.S3Location.parse(previous_checkpoint(uri))
    storage.confirm_leases()
    try:
        storage.s3_client().copy_object(
            Bucket=previous.bucket, Key=previous.key, CopySource={"Bucket": latest.bucket, "Key": latest.key}
        )
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
            raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only)."""
    from raynas import storage

    if storage.is_s3(path):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint.pt"
            storage.get_file(str(path), local)
            return torch.load(local, map_location="cpu", weights_only=True)
    return torch.load(Path(path), map_location="cpu", weights_only=True)
