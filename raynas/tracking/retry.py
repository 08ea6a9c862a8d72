"""Retries with exponential backoff for calls to services that may be briefly unreachable
(an MLflow tracking server, an S3 endpoint)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from raynas.errors import no_room

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like an outage (connection refused or reset, timeout, 5xx) rather
    than a request the service rejected (bad parameter, missing resource, access denied)."""
    import requests
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError, HTTPClientError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from mlflow.exceptions import MlflowException

    if no_room(exc):  # a full disk or store: waiting does not make room
        return False
    if isinstance(exc, MlflowException):
        # The REST client wraps connection failures as "API request to ... failed with exception".
        outage = exc.error_code in ("INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE")
        return outage or "failed with exception" in str(exc)
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429
    transient = (
        ConnectionError, TimeoutError, requests.ConnectionError, requests.Timeout,
        BotoConnectionError, HTTPClientError, ReadTimeoutError,
        S3UploadFailedError,  # wraps the connection error of a failed upload
    )
    if isinstance(exc, transient):
        return True
    return isinstance(exc, OSError) and not isinstance(exc, (FileNotFoundError, PermissionError))


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    backoff_s: float = 1.0,
    max_backoff_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on a transient error wait ``backoff_s``, ``2 * backoff_s``, ... and try again.

    Args:
        fn: The call to make.
        attempts: Calls in all (at least 1).
        backoff_s: The first wait; each next wait doubles, up to ``max_backoff_s``.
        max_backoff_s: The longest single wait.
        sleep: How to wait (tests pass a recorder).

    Returns:
        What ``fn`` returned.

    Raises:
        The last error when every attempt failed, or the first error that is not transient.
    """
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, got {attempts}")
    delay = backoff_s
    for attempt in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts - 1 or not is_transient(exc):
                raise
        sleep(delay)
        delay = min(delay * 2, max_backoff_s)
    raise AssertionError("unreachable")  # pragma: no cover
