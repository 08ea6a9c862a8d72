"""Checkpoints written atomically: a crash mid-write leaves the previous checkpoint intact.

A path may be ``s3://bucket/key``: the checkpoint is completed in a local file first and then
published as one object (see :mod:`raynas.storage`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` with ``torch.save`` to a temporary file, fsync it, then rename it over ``path``
    (or upload it as one object to an ``s3://`` path)."""
    from raynas import storage

    if storage.is_s3(path):
        with tempfile.TemporaryDirectory() as tmp:
            local = Path(tmp) / "checkpoint.pt"
            torch.save(state, local)
            storage.put_file(local, str(path))
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
