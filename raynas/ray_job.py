"""Where a search sent with ``ray job submit`` keeps what it records.

Ray starts a job's driver with ``RAY_JOB_CONFIG_JSON_ENV_VAR`` in its environment: the job's
runtime environment and metadata, ``job_submission_id`` among them (ray's
``dashboard/modules/job/job_supervisor.py``). With ``--working-dir``, the driver runs in Ray's
copy of that folder under the session's temporary directory, which goes with the cluster; without
it, in the folder where ``ray start`` ran. A local MLflow store (``sqlite:///``, the default
``./mlflow.db``) or a local output folder then lies on the head node's disk, not the user's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from raynas.config import TrackingConfig, redact_uri
from raynas.environment import default_tracking_uri, sqlite_file

JOB_CONFIG_VARIABLE = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def ray_job(environ: Mapping[str, str] | None = None) -> tuple[str, bool] | None:
    """The submission id of the Ray job this process is the driver of, and whether the job has a
    ``working_dir`` (Ray's temporary copy, the driver's working directory); None outside a job."""
    text = (os.environ if environ is None else environ).get(JOB_CONFIG_VARIABLE)
    if not text:
        return None
    try:
        job = json.loads(text)
        submission_id = str(job["metadata"]["job_submission_id"])
        working_dir = bool((job.get("runtime_env") or {}).get("working_dir"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return submission_id, working_dir


def _local_store(uri: str) -> Path | None:
    """The file of a local MLflow store (``sqlite:///``, ``file:`` or a path); None for a server
    or a database server."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme.split("+")[0] == "sqlite":
        return sqlite_file(uri)
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:2] == ":"):
        return Path(parts.path if scheme == "file" else uri)
    return None


def _local(folder: str | None) -> Path | None:
    return None if folder is None or folder.startswith("s3://") else Path(folder)


def local_results_warning(
    tracking: TrackingConfig, *, environ: Mapping[str, str] | None = None, cwd: Path | None = None
) -> str | None:
    """One line for the driver of a Ray job whose MLflow store or output folder is local: where
    they are, that they go with the cluster, and how to keep them. None when they are not local or
    this process is no job's driver.

    Args:
        tracking: The job's tracking settings.
        environ: The process environment (default ``os.environ``).
        cwd: The working directory (default the process's).
    """
    job = ray_job(environ)
    if job is None:
        return None
    submission_id, has_working_dir = job
    cwd = (cwd or Path.cwd()).resolve()
    uri = tracking.tracking_uri or default_tracking_uri(environ, cwd)
    local: list[tuple[str, Path]] = []
    if (store := _local_store(uri)) is not None:
        local.append((f"MLflow store ({redact_uri(uri)})", store))
    if (output := _local(tracking.output_dir)) is not None:
        local.append(("checkpoints", output))
    results = _local(tracking.results) if tracking.results else output
    if results is not None:
        local.append(("results", results))
    if not local:
        return None
    paths = [(cwd / path).resolve() for _, path in local]
    if has_working_dir and all(path.is_relative_to(cwd) for path in paths):
        where = f"inside the job's working directory ({cwd}), Ray's temporary copy, deleted with the cluster"
    else:
        shown = ", ".join(sorted({str(path) for path in paths}))
        where = (f"on the disk of the node that runs the driver ({shown}), lost with the cluster "
                 "unless that is a persistent volume")
    what = ", ".join(name for name, _ in local)
    return (
        f"Ray job {submission_id!r} keeps its {what} {where}; keep them with "
        "--set tracking.tracking_uri=http://MLFLOW-HOST:5000 and --set tracking.output_dir=s3://BUCKET/runs "
        "(or MLFLOW_TRACKING_URI and the AWS settings in --runtime-env-json; README, \"Run on a cluster\")"
    )


__all__ = ["JOB_CONFIG_VARIABLE", "local_results_warning", "ray_job"]
