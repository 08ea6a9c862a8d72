"""Where results, checkpoints and artifacts live: a local folder or ``s3://bucket/prefix``.

S3 is reached through boto3 and ``pyarrow.fs.S3FileSystem`` with the usual environment:

- credentials: boto3's chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE`` and the shared config files, instance roles); they are
  handed to pyarrow in memory and never written to a log or an error message;
- endpoint of an S3-compatible store (SeaweedFS, MinIO, Ceph): ``AWS_ENDPOINT_URL_S3``, else
  ``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL`` (so one variable serves MLflow too);
- region: ``AWS_REGION`` / ``AWS_DEFAULT_REGION`` (default ``us-east-1``).

Writes are whole objects: a file is completed locally first and then sent as one PUT (or one
multipart upload, which S3 publishes only when complete), because one PUT is atomic on S3 while a
failed streaming write can leave a partial object. On local disk a temporary file in the target's
folder is fsynced and renamed over the target.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from raynas.errors import LeaseLost, StorageError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

log = logging.getLogger(__name__)

ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")


def is_s3(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names an S3 location (``s3://bucket/key``)."""
    return str(uri).startswith("s3://")


def join(base: str | os.PathLike[str], *parts: str) -> str:
    """Join path parts onto a local path or an ``s3://`` URI with ``/``."""
    text = str(base)
    if is_s3(text):
        return "/".join([text.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(text, *parts))


@dataclass(frozen=True)
class S3Location:
    """An ``s3://bucket/key`` split into its parts."""

    bucket: str
    key: str

    @staticmethod
    def parse(uri: str) -> S3Location:
        """Split ``s3://bucket/key``; raises :class:`StorageError` on anything else."""
        parsed = urlparse(uri)
        if parsed.scheme != "s3" or not parsed.netloc:
            raise StorageError(f"{uri!r} is not an S3 location; write it as s3://bucket/prefix")
        return S3Location(parsed.netloc, parsed.path.lstrip("/"))


def endpoint_url() -> str | None:
    """The S3 endpoint override from the environment (see the module docstring), or None for AWS."""
    for name in ENDPOINT_VARIABLES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def _region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"


# The environment a boto3 session reads its credentials from when its first client is made.
_SESSION_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
    "AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
)
SESSION_SECONDS = 300.0
"""How long a boto3 session serves: credentials files rotated in place (by an agent, say) are
read again by the next session."""
_sessions: dict[tuple[str | None, ...], tuple[Any, float]] = {}
_sessions_lock = threading.Lock()


def _forget_sessions() -> None:  # a forked child makes its own (the lock may have been held)
    global _sessions_lock
    _sessions.clear()
    _sessions_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_sessions)


def _session() -> Any:
    """This process's boto3 session for the credentials in the environment now (a new one when
    they change, or after :data:`SESSION_SECONDS`). A new session reads botocore's S3 service
    model again, ~0.2 s of JSON per client; clients made from one session share it. Call with
    ``_sessions_lock`` held: a boto3 session is not thread-safe."""
    import boto3

    key = tuple(os.environ.get(name) for name in _SESSION_VARIABLES)
    session, made = _sessions.get(key, (None, 0.0))
    if session is None or time.monotonic() - made > SESSION_SECONDS:
        session = boto3.session.Session()
        _sessions[key] = (session, time.monotonic())
    return session


def s3_client(*, connect_timeout: float = 10.0, read_timeout: float = 60.0, attempts: int = 3) -> Any:
    """A boto3 S3 client for the configured endpoint, region and credentials.

    Args:
        connect_timeout: Seconds to wait for a connection.
        read_timeout: Seconds to wait for a response.
        attempts: Total attempts per call, botocore's own retries with backoff included.
    """
    from botocore.config import Config

    config = Config(
        connect_timeout=connect_timeout, read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint_url() else None,
    )
    with _sessions_lock:
        return _session().client("s3", endpoint_url=endpoint_url(), region_name=_region(), config=config)


def filesystem(uri: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem that holds ``uri`` and the path within it.

    Returns:
        ``(S3FileSystem, "bucket/key")`` for ``s3://`` URIs (endpoint, region and credentials
        as in the module docstring), ``(LocalFileSystem, "/abs/path")`` otherwise.
    """
    import pyarrow.fs as pafs

    text = str(uri)
    if not is_s3(text):
        return pafs.LocalFileSystem(), str(Path(text).expanduser().resolve())
    loc = S3Location.parse(text)
    options: dict[str, Any] = {"region": _region(), "connect_timeout": 10, "request_timeout": 60}
    with _sessions_lock:  # the clients' session: its credential chain is resolved once
        credentials = _session().get_credentials()
    if credentials is not None:
        frozen = credentials.get_frozen_credentials()
        options.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            options["session_token"] = frozen.token
    endpoint = endpoint_url()
    if endpoint:
        parsed = urlparse(endpoint)
        options.update(endpoint_override=parsed.netloc + parsed.path.rstrip("/"),
                       scheme=parsed.scheme or "https")
    return pafs.S3FileSystem(**options), f"{loc.bucket}/{loc.key}".rstrip("/")


def check_reachable(uri: str | os.PathLike[str]) -> None:
    """Fail early, with one clear line, when ``uri``'s storage cannot be used.

    For ``s3://`` the bucket must exist and the credentials must reach it; a local folder must
    be creatable, and a file must be writable in it.

    Raises:
        StorageError: Naming the location, the endpoint and what to check.
    """
    text = str(uri)
    if not is_s3(text) and re.match(r"[A-Za-z][A-Za-z0-9+.-]+:/", text):  # a URI, mistyped or not S3's
        raise StorageError(
            f"{text!r} is neither a folder nor an S3 location: raynas writes to a folder or to "
            "s3://bucket/prefix"
        )
    if not is_s3(text):
        folder = Path(text).expanduser()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = "a file has that name" if isinstance(exc, FileExistsError) else exc.strerror
            raise StorageError(f"cannot create the folder {text}: {reason}") from None
        try:
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".raynas-probe-"):
                pass
        except OSError as exc:
            # A folder of a kernel's file system (/proc, /sys) refuses new files with ENOENT.
            reason = "no file can be made there" if exc.errno == errno.ENOENT else exc.strerror
            raise StorageError(
                f"cannot write in the folder {text}: {reason}; choose one this user can write"
            ) from None
        return
    from botocore.exceptions import BotoCoreError, ClientError

    loc = S3Location.parse(text)
    where = endpoint_url() or "AWS S3"
    try:
        s3_client(connect_timeout=5, read_timeout=10, attempts=2).head_bucket(Bucket=loc.bucket)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "?")
        hint = {
            "404": "it does not exist; create it first",
            "NoSuchBucket": "it does not exist; create it first",
            "403": "access denied; check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY",
        }.get(code, "check the credentials and the bucket name")
        raise StorageError(
            f"S3 bucket {loc.bucket!r} at {where} is not usable (error {code}): {hint}"
        ) from None
    except BotoCoreError as exc:
        raise StorageError(
            f"S3 endpoint {where} is unreachable for {text} ({type(exc).__name__}); check that the "
            f"server is up and {' / '.join(ENDPOINT_VARIABLES)}"
        ) from None


def put_file(local: str | os.PathLike[str], uri: str) -> None:
    """Publish the complete local file ``local`` at ``uri`` in one atomic step.

    On S3 one upload (readers see the old object or the new one); on disk a temporary file in
    the target's folder, fsynced and renamed over the target.
    """
    if is_s3(uri):
        confirm_leases()
        loc = S3Location.parse(uri)
        s3_client().upload_file(str(local), loc.bucket, loc.key)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out, open(local, "rb") as src:
            shutil.copyfileobj(src, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def get_file(uri: str, local: str | os.PathLike[str]) -> None:
    """Copy ``uri`` (``s3://`` or a local path) to the local file ``local``."""
    if is_s3(uri):
        loc = S3Location.parse(uri)
        s3_client().download_file(loc.bucket, loc.key, str(local))
        return
    shutil.copyfile(uri, local)


def exists(uri: str) -> bool:
    """Whether a file exists at ``uri``."""
    if not is_s3(uri):
        return Path(uri).is_file()
    from botocore.exceptions import ClientError

    loc = S3Location.parse(uri)
    try:
        s3_client().head_object(Bucket=loc.bucket, Key=loc.key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def remove(uri: str) -> None:
    """Delete the file, folder or ``s3://`` prefix at ``uri``; nothing there is not an error."""
    if not is_s3(uri):
        path = Path(uri)
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        return
    confirm_leases()
    loc = S3Location.parse(uri)
    client = s3_client()
    prefix = loc.key.rstrip("/")
    keys = [
        item["Key"]
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix)
        for item in page.get("Contents", [])
        if item["Key"] == prefix or item["Key"].startswith(prefix + "/")
    ]
    for i in range(0, len(keys), 1000):  # S3's limit per DeleteObjects call
        client.delete_objects(
            Bucket=loc.bucket, Delete={"Objects": [{"Key": k} for k in keys[i : i + 1000]], "Quiet": True}
        )


LEASE_SECONDS = 300.0
"""How long an S3 lease (:class:`S3Lease`) holds unrenewed: a driver gone without releasing its
lease (killed, its node lost) holds its job that long."""


class LeaseHeld(Exception):
    """Another holder's lease is live: who it is, and in how many seconds it expires unrenewed."""

    def __init__(self, holder: str, left: float) -> None:
        super().__init__(holder)
        self.holder, self.left = holder, left


_held: list[S3Lease] = []  # the leases this process holds (acquired, not yet released)


def confirm_leases() -> None:
    """Before this process writes to S3: every lease it holds is still its own. One not renewed
    for half its time (its renewals failing: S3 out of reach) is renewed first, so a lease another
    process took over meanwhile is found before the write, not after it.

    Raises:
        LeaseLost: A lease was taken over; the write must not happen.
    """
    for lease in list(_held):
        lease.confirm()


class S3Lease:
    """An S3 object held as a lease while a process works on what it guards (a job's checkpoint
    on S3, which a process of another machine may also be started on): written only where there
    is none (a conditional PUT, ``If-None-Match: *``, as AWS S3 and SeaweedFS apply atomically),
    or over one its holder let expire; renewed by a thread every fifth of its time (each write
    conditional on the last one's ETag); deleted at :meth:`release`.

    Args:
        uri: The lease's ``s3://`` location.
        holder: Who holds it, for the one refused ("pid 12 on host since ...").
        seconds: How long it holds unrenewed.
    """

    def __init__(self, uri: str, holder: str, *, seconds: float | None = None) -> None:
        self.location = S3Location.parse(uri)
        self.uri, self.holder = uri, holder
        self.seconds = LEASE_SECONDS if seconds is None else seconds
        self._etag: str | None = None
        self._renewed = 0.0  # time.monotonic() of the last write of the lease
        self._lock = threading.Lock()  # one renewal at a time (the renewer's, a write's)
        self.lost: str | None = None  # why the lease is not this process's any more
        self._done = threading.Event()
        self._renewer: threading.Thread | None = None

    def _put(self, **condition: str) -> str:
        body = json.dumps({"holder": self.holder, "expires": time.time() + self.seconds}).encode()
        return self._client.put_object(Bucket=self.location.bucket, Key=self.location.key, Body=body,
                                       **condition)["ETag"]

    def acquire(self) -> None:
        """Take the lease and start renewing it.

        Raises:
            LeaseHeld: Another holder's lease is live.
            StorageError: The store cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        self._client = s3_client(connect_timeout=5, read_timeout=10, attempts=2)
        try:
            for _ in range(3):  # a lease released or taken over between the reads below: try again
                try:
                    self._etag = self._put(IfNoneMatch="*")
                    break
                except ClientError as exc:
                    if not _precondition_failed(exc):
                        raise
                try:
                    self._etag = self._take_expired()
                    break
                except ClientError as exc:
                    if not _precondition_failed(exc) and _code(exc) not in ("404", "NoSuchKey"):
                        raise
            else:
                raise LeaseHeld("another process", self.seconds)
        except (BotoCoreError, ClientError) as exc:
            where = endpoint_url() or "AWS S3"
            raise StorageError(f"cannot take the lease {self.uri} at {where} ({_code(exc)}); check that "
                               "the server is up and the credentials may write there") from None
        self._renewed = time.monotonic()
        _held.append(self)
        self._renewer = threading.Thread(target=self._renew, name="raynas-s3-lease", daemon=True)
        self._renewer.start()

    def _take_expired(self) -> str:
        """Write the lease over one whose holder let it expire (its ETag the condition)."""
        got = self._client.get_object(Bucket=self.location.bucket, Key=self.location.key)
        try:
            found = json.loads(got["Body"].read())
            holder, left = str(found["holder"]), float(found["expires"]) - time.time()
        except (ValueError, KeyError, TypeError):  # not a lease's: taken as expired
            holder, left = "", 0.0
        if left > 0:
            raise LeaseHeld(holder, left)
        log.warning("%s: the lease of %s expired %.0f s ago; taking it over", self.uri, holder or "?", -left)
        return self._put(IfMatch=got["ETag"])

    def _renew(self) -> None:
        while not self._done.wait(self.seconds / 5) and self.lost is None:
            self._renew_once()

    def _renew_once(self) -> None:
        """Write the lease again, conditional on this holder's last write; a refusal means another
        process wrote it since (it took the lease over, this one unrenewed for its whole time)."""
        from botocore.exceptions import BotoCoreError, ClientError

        with self._lock:
            if self.lost is not None:
                return
            try:
                self._etag = self._put(IfMatch=self._etag or "")
                self._renewed = time.monotonic()
            except ClientError as exc:
                if not _precondition_failed(exc):
                    log.warning("the lease %s was not renewed (%s); trying again", self.uri, _code(exc))
                    return
                self.lost = (
                    f"another run of this job took over its lease {self.uri} ({self._holder_now()}) after "
                    f"this one could not renew it for {self.seconds:.0f} s (S3 out of its reach): this "
                    "one stops and writes no more; the other goes on"
                )  # (said by the write it stops: confirm)
            except BotoCoreError as exc:  # an outage: the next renewal tries again
                log.warning("the lease %s was not renewed (%s); trying again", self.uri, type(exc).__name__)

    def _holder_now(self) -> str:
        try:
            got = self._client.get_object(Bucket=self.location.bucket, Key=self.location.key)
            return str(json.loads(got["Body"].read())["holder"])
        except Exception:  # gone again, or not readable: the line goes without it
            return "its holder unknown"

    def confirm(self) -> None:
        """That the lease is still this holder's, before a write it guards: renewed first when its
        last renewal is half its time old.

        Raises:
            LeaseLost: Another process took it over.
        """
        if self.lost is None and time.monotonic() - self._renewed > self.seconds / 2:
            self._renew_once()
        if self.lost is not None:
            raise LeaseLost(self.lost)

    def release(self) -> None:
        """Stop renewing the lease and delete it if it is still this holder's (otherwise, or with
        the store unreachable, it expires by itself)."""
        with contextlib.suppress(ValueError):
            _held.remove(self)
        self._done.set()
        if self._renewer is not None:
            self._renewer.join(timeout=30)
        try:
            head = self._client.head_object(Bucket=self.location.bucket, Key=self.location.key)
            if head["ETag"] == self._etag:
                self._client.delete_object(Bucket=self.location.bucket, Key=self.location.key)
        except Exception as exc:  # it expires by itself
            log.warning("the lease %s was not released (%s); it expires in %.0f s", self.uri,
                        type(exc).__name__, self.seconds)


def _code(exc: Exception) -> str:
    response = getattr(exc, "response", None) or {}
    return str(response.get("Error", {}).get("Code") or type(exc).__name__)


def _precondition_failed(exc: Exception) -> bool:
    """A conditional write refused: the object is there (``If-None-Match``), or changed since
    (``If-Match``); ConditionalRequestConflict: another conditional write raced it."""
    return _code(exc) in ("PreconditionFailed", "412", "ConditionalRequestConflict")
