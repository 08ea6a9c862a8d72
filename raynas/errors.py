"""Errors that reach the user as one clear line (the CLI prints them and exits with status 2)."""

from __future__ import annotations

import errno
import re
from pathlib import Path

NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The ``errno`` of a write refused for room: a full disk, a quota, a file size limit."""

SQLITE_FULL = "database or disk is full"
"""SQLite's message for a write refused for room (``SQLITE_FULL``), as an SQLite MLflow store's
errors carry it (MLflow wraps SQLAlchemy's error, which wraps ``sqlite3``'s)."""


class RaynasError(Exception):
    """Base of every error raynas reports to the user without a traceback.

    torch's ``DataLoader`` re-raises an error of one of its worker processes (a corrupt image,
    found while a batch is read) as the same class, its message the worker's whole traceback
    (``Caught DataError in DataLoader worker process 0.`` then ``Original Traceback ...``, ending
    with the error's own line, ``torch/_utils.py``'s ``ExceptionWrapper.reraise``): such an error
    keeps its own message alone, the line the user is owed.
    """

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught "):
            own = f"\n{type(self).__module__}.{type(self).__qualname__}: "
            head, found, message = args[0].rpartition(own)
            if found and "\nOriginal Traceback" in head:
                args = (message.strip(),)
        super().__init__(*args)


class ConfigError(RaynasError):
    """A configuration value is missing, unknown or of the wrong type."""


class UnknownNameError(RaynasError, KeyError):
    """A name was looked up in a registry that does not hold it."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataError(RaynasError):
    """A dataset path is missing or its files are not in the expected format."""


class ArchitectureError(RaynasError, ValueError):
    """An architecture, genotype or op name does not belong to its space."""


class WorkerLostError(RaynasError):
    """A worker died mid-search (node lost, out of memory); the checkpoint allows a resume.

    Args:
        message: The line the user sees.
        reason: What Ray said of the loss, for the log line of a replacement.
    """

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason or message


class ClusterLostError(RaynasError):
    """The Ray cluster itself is gone (its head does not answer): there is nowhere to restart a
    worker; the checkpoint allows a resume once a cluster is there again."""


class StorageError(RaynasError):
    """A storage location (local folder, ``s3://`` bucket, MLflow server) is unreachable or refuses access."""


class LeaseLost(StorageError):
    """Another run of the job took over the S3 lease this process held (``raynas.storage.S3Lease``):
    the job is that run's now, and this one must write no more, its MLflow run included."""


def cause(exc: BaseException, limit: int = 200) -> str:
    """Why a library refused a file, for a one-line message: the error's class and text, cut at
    ``limit`` characters (a ``UnicodeDecodeError``'s repr quotes every byte it was given)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def read_user_text(path: Path, what: str, error: type[RaynasError] = ConfigError,
                   max_bytes: int | None = None) -> str:
    """The UTF-8 text of a file the user named (a BOM is dropped).

    Args:
        path: The file.
        what: How messages name it, e.g. ``"config file 'job.yaml'"``.
        error: The error raised when it cannot be read.
        max_bytes: The largest file accepted; None for any.

    Raises:
        RaynasError: ``error``, one line saying what is wrong: the file is missing, a folder, cannot
            be read, larger than ``max_bytes`` or not UTF-8 (the first byte that is not, where).
    """
    try:
        if not path.is_file():
            raise error(f"{what} {'is not a file' if path.exists() else 'does not exist'}")
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise error(f"{what} is {size:,} bytes; at most {max_bytes:,} are allowed")
        data = path.read_bytes() if max_bytes is None else path.read_bytes()[: max_bytes + 1]
    except OSError as exc:
        raise error(f"{what} cannot be read: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} is not UTF-8 text (byte {data[exc.start]:#04x} at offset {exc.start}); save it as UTF-8"
        ) from None


def no_room(exc: BaseException) -> str | None:
    """What found no room, for a one-line message, when ``exc`` (or an error it was raised from)
    is a write refused for room: a file (``OSError`` of :data:`NO_ROOM`) or an SQLite MLflow
    store (:data:`SQLITE_FULL`); None for any other error."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in NO_ROOM:
            # A copy's error names its source first, the file it could not write second.
            return f"cannot write {error.filename2 or error.filename or 'a file'}: {error.strerror}"
        if SQLITE_FULL in str(error):
            return f"the SQLite MLflow store (tracking.tracking_uri) cannot grow: {SQLITE_FULL}"
        error = error.__cause__ or error.__context__
    return None


def no_memory(exc: BaseException) -> str | None:
    """What memory was refused, for a one-line message, when ``exc`` (or an error it was raised
    from, or a Ray worker's error it carries) is an allocation torch or Python could not make: the
    CPU allocator's (``DefaultCPUAllocator: can't allocate memory``), a GPU's (``torch.OutOfMemoryError``:
    ``CUDA out of memory``), ``MemoryError``; None for any other error."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        refused = memory_refused(str(error))
        if refused:
            return refused
        if isinstance(error, MemoryError):
            return "Python could not allocate memory"
        carried = getattr(error, "cause", None)  # a Ray task's error: the worker's exception
        if not isinstance(carried, BaseException):
            carried = None
        error = error.__cause__ or error.__context__ or carried
    return None


def memory_refused(text: str) -> str | None:
    """:func:`no_memory`'s line for an error's text (torch's allocators' words), or None."""
    cpu = re.search(r"DefaultCPUAllocator: can't allocate memory: you tried to allocate (\d+) bytes", text)
    if cpu:
        return f"torch could not allocate {int(cpu.group(1)) / 1e9:.3g} GB of memory"
    # c10's caching allocators: "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a
    # total capacity of 79.10 GiB of which 1.06 GiB is free. ..."
    gpu = re.search(r"(\w+) out of memory\. Tried to allocate (\S+ \w+)\."
                    r"(?: (GPU \d+ has a total capacity of \S+ \w+ of which \S+ \w+ is free))?", text)
    if gpu:
        free = f" ({gpu.group(3)})" if gpu.group(3) else ""
        return f"torch could not allocate {gpu.group(2)} of {gpu.group(1)} memory{free}"
    return None
