"""What a job needs of the machine it runs on, checked before torch, Ray and MLflow load: a broken
environment answers in a second, as bad input does, rather than after 10-15 s of imports.

- the MLflow store: a server (``http(s)://``) answers its ``/health``; an SQLite file is a
  database (or its folder can be created); another database's Python driver is installed (its
  connection is left to MLflow);
- the output folders (``tracking.output_dir``, ``tracking.results``, ``tracking.artifact_location``)
  can be created, or their S3 bucket reached (:func:`raynas.storage.check_reachable`);
- a local ``data.path`` is a folder (the dataset's loader checks what it holds, after torch);
- a local NAS-Bench-201 release named by the evaluator (``nb201_table``'s ``path``,
  ``training_free``'s ``benchmark``) is there (its reader checks what it holds, after torch).

Each problem is one :class:`~raynas.errors.ConfigError` or :class:`~raynas.errors.StorageError`
line naming what is wrong and what to do. The search checks the same things again as it opens
each of them (code that calls it directly gets them too).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raynas import storage
from raynas.config import check_tracking_uri, redact_uri
from raynas.errors import ConfigError


def default_tracking_uri(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite store in the working directory (``environ``
    and ``cwd``: the process's by default)."""
    env = os.environ if environ is None else environ
    return env.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(cwd or Path.cwd()) / 'mlflow.db'}"


def check_environment(raw: Mapping[str, Any]) -> None:
    """Check what the job ``raw`` (as :func:`raynas.config.read_job` returns it) needs of this
    machine: its MLflow store, its output folders and its dataset's folder.

    Raises:
        ConfigError: The MLflow store or the dataset's folder cannot be used.
        StorageError: An output folder cannot be created, or its S3 bucket reached.
    """
    tracking = _strings(raw.get("tracking"))  # what is not a string the job's checks answer
    check_tracking_store(tracking.get("tracking_uri") or default_tracking_uri())
    output = tracking.get("output_dir") or "runs"
    for where in (output, tracking.get("results") or storage.join(output, "results"),
                  tracking.get("artifact_location")):
        if where:
            storage.check_reachable(where)
    check_data_folder(_strings(raw.get("data")))
    check_table_release(_strings(raw.get("evaluator")))


def _strings(section: Any) -> dict[str, str]:
    """A job section's non-empty string values (none if it is not a mapping)."""
    if not isinstance(section, Mapping):
        return {}
    return {k: v for k, v in section.items() if isinstance(k, str) and isinstance(v, str) and v.strip()}


def check_tracking_store(uri: str, *, existing: bool = False) -> None:
    """An MLflow tracking URI's form (:func:`raynas.config.check_tracking_uri`), and that its
    store can be used: a server answers, an SQLite file is a database or can be created.

    Args:
        uri: The tracking URI.
        existing: The store must hold runs already (a command that reads one: ``raynas export``,
            ``raynas report --mlflow``): an SQLite file that does not exist is refused, not made.

    Raises:
        ConfigError: One line saying what is wrong and what to use instead.
    """
    check_tracking_uri(uri, "MLflow tracking URI")  # MLFLOW_TRACKING_URI too, not only the job's
    scheme = urllib.parse.urlsplit(uri).scheme.lower()
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme.split("+")[0] == "sqlite":
        database = sqlite_file(uri)
        if existing and database is not None and not database.exists():
            raise ConfigError(
                f"there is no MLflow store at {uri} ({database} does not exist); name the store "
                "that holds the run with --tracking-uri or MLFLOW_TRACKING_URI"
            )
        _check_sqlite(uri)
    elif scheme.split("+")[0] in ("postgresql", "mysql", "mssql"):
        _check_database_driver(uri)


def _check_database_driver(uri: str) -> None:
    """SQLAlchemy loads a database's Python driver (``psycopg2``, ``MySQLdb``, ``pyodbc``, or the
    ``+driver`` a URL names) as it makes an engine, without connecting: raynas does not install one."""
    import sqlalchemy  # MLflow's own dependency; loaded here only for these stores

    try:
        sqlalchemy.create_engine(uri)
    except ImportError as exc:
        raise ConfigError(
            f"MLflow tracking URI {redact_uri(uri)} needs the database driver {exc.name or str(exc)!r}, "
            "which is not installed: install it into raynas's environment (or name an installed one "
            "as scheme+driver://), or use an MLflow server (http://host:port) or sqlite:///<folder>/mlflow.db"
        ) from None
    except Exception as exc:  # a URL SQLAlchemy cannot read (a bad port, an unknown +driver)
        raise ConfigError(f"MLflow tracking URI {redact_uri(uri)} is not a database URL SQLAlchemy reads "
                          f"({type(exc).__name__}: {exc})") from None


def _check_server(uri: str) -> None:
    parts = urllib.parse.urlsplit(uri)
    plain = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))  # no user part
    try:
        with urllib.request.urlopen(f"{plain.rstrip('/')}/health", timeout=10) as response:
            response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise ConfigError(
            f"MLflow tracking server {redact_uri(uri)} is unreachable ({exc}); start it, or leave "
            "out --tracking-uri / MLFLOW_TRACKING_URI to use a local store"
        ) from None


def sqlite_file(uri: str) -> Path | None:
    """The database file of SQLAlchemy's ``sqlite:///relative.db`` / ``sqlite:////absolute.db``;
    None for one in memory (``sqlite://``) or a form SQLAlchemy reads otherwise."""
    path = urllib.parse.unquote(uri.split("://", 1)[1].split("?", 1)[0])
    if not path.startswith("/") or path in ("/", "/:memory:"):
        return None
    return Path(path[1:]).expanduser()


def default_artifact_location(uri: str) -> str | None:
    """Where a new experiment of the local SQLite store ``uri`` keeps its artifacts: ``mlruns/``
    beside the database file, so that a store and its artifacts stay together (MLflow's own
    default is ``./mlruns`` in whatever folder the process runs in). None for other stores: a
    tracking server has its own artifact root."""
    if urllib.parse.urlsplit(uri).scheme.lower().split("+")[0] != "sqlite":
        return None
    database = sqlite_file(uri)
    return None if database is None else str(database.resolve().parent / "mlruns")


def _check_sqlite(uri: str) -> None:
    database = sqlite_file(uri)
    if database is None:
        return  # MLflow says what it makes of it
    if database.is_dir():
        raise ConfigError(
            f"MLflow store {uri} names {database}, a folder; name a database file in it, "
            f"e.g. sqlite:///{database / 'mlflow.db'}"
        )
    if not database.exists():
        try:
            database.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = "a file has that name" if isinstance(exc, FileExistsError) else exc.strerror
            raise ConfigError(
                f"MLflow store {uri}: cannot create the folder {database.parent} ({reason}); "
                "name a database file in a folder that can be written, e.g. sqlite:///mlflow.db"
            ) from None
        return
    try:
        # mode=rw, not ro: a writer killed mid-transaction leaves a hot journal, which only a
        # connection that may write can roll back (read-only, SQLite answers "attempt to write
        # a readonly database"); rw never creates the file, and MLflow would roll it back too.
        existing = f"{database.resolve().as_uri()}?mode=rw"
        with contextlib.closing(sqlite3.connect(existing, uri=True, timeout=5)) as connection:
            connection.execute("SELECT name FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc):  # another process writing: a database all the same
            return
        raise ConfigError(
            f"MLflow store {database} cannot be opened ({exc}); name another file, or fix its permissions"
        ) from None
    except sqlite3.DatabaseError as exc:
        raise ConfigError(
            f"MLflow store {database} is not an SQLite database ({exc}); name another file "
            "(MLflow creates it), or move this one away"
        ) from None


# NAS-Bench-201's releases, which evaluator nb201_table scores by and training_free reads beside
# its scores (raynas.evaluators.nb201_table), and the setting that names one in each.
TABLE_RELEASES = (
    "the benchmark's NAS-Bench-201-v1_0-e61699.pth or NAS-Bench-201-v1_1-096897.pth, or "
    "NATS-Bench's NATS-tss-v1_0-3ffb9.pickle.pbz2 or NATS-tss-v1_0-3ffb9-simple folder"
)
TABLE_SETTINGS = {"nb201_table": "path", "training_free": "benchmark"}


def release_found(path: str) -> bool:
    """Whether the local ``path`` (``~`` expanded) holds a release: a file, or NATS-Bench's folder
    with its meta file."""
    file = Path(path).expanduser()
    return file.is_file() or (file / "meta.pickle.pbz2").is_file()


def check_table_release(evaluator: Mapping[str, Any]) -> None:
    """A local NAS-Bench-201 release the evaluator names is there (an ``s3://`` one is mirrored,
    and checked then).

    Raises:
        ConfigError: It is not.
    """
    key = TABLE_SETTINGS.get(evaluator.get("name", ""))
    path = evaluator.get(key) if key else None
    if isinstance(path, str) and path.strip() and not storage.is_s3(path) and not release_found(path):
        raise ConfigError(f"NAS-Bench-201 file {path} not found (evaluator.{key}: {TABLE_RELEASES})")


def check_data_folder(data: Mapping[str, Any]) -> None:
    """A local ``data.path`` is a folder (an ``s3://`` one is mirrored, and checked then).

    Raises:
        ConfigError: It does not exist, or is a file.
    """
    path = data.get("path")
    if not isinstance(path, str) or not path.strip() or storage.is_s3(path):
        return
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        raise ConfigError(
            f"config key 'data.path' is {path!r}, which {state}: give the folder holding the "
            f"{data.get('name', 'dataset')} files, or s3://bucket/prefix"
        )
