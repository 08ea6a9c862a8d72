"""The Parquet results store: every evaluated candidate of every search, one row each.

A Hive-partitioned Parquet dataset (``<root>/search=<search id>/part-<digest>.parquet``) on a
local disk or ``s3://``, readable with pyarrow, pandas or DuckDB (``docs/results.md`` gives the
schema and examples). :meth:`ResultsStore.append` is

- **idempotent per trial**: a row whose ``trial_id`` the search already holds is skipped (the first
  write wins), so a retried trial, a restored Tune trial or a resumed search adds no duplicates;
- **atomic**: rows are written to a complete Parquet file in a local spool folder first, then
  published as one object (one S3 PUT, or a rename on disk), so a reader never sees half a file;
- **outage-proof**: when the store cannot be reached the file stays in the spool and is sent,
  with backoff, by the next ``append`` or :meth:`ResultsStore.flush`, so nothing evaluated is lost
  while the search goes on (even across a crash: the spool is on disk).

A store has one writer per search (the search's driver); readers may read at any time.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from raynas import storage
from raynas.errors import ConfigError, StorageError
from raynas.tracking.retry import is_transient, with_retries
from raynas.tracking.vocabulary import canonical_metrics, canonical_node
from raynas.types import EvalResult

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

#: The columns of every Parquet file (``search`` comes from the partition folder, ``search=<id>``).
SCHEMA = pa.schema([
    pa.field("name", pa.string()),
    pa.field("run_id", pa.string()),
    pa.field("trial_id", pa.string(), nullable=False),
    pa.field("space", pa.string()),
    pa.field("architecture_key", pa.string()),
    pa.field("architecture", pa.string()),
    pa.field("strategy", pa.string()),
    pa.field("dataset", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("objective", pa.string()),
    pa.field("score", pa.float64()),
    pa.field("metrics", pa.map_(pa.string(), pa.float64())),
    pa.field("budget", pa.float64()),
    pa.field("seconds", pa.float64()),
    pa.field("node", pa.string()),
    pa.field("stopped_early", pa.bool_()),
    pa.field("recorded_at", pa.timestamp("ms", tz="UTC")),
    # When and where the evaluation ran (null when unknown, e.g. rows written by older raynas).
    pa.field("started_at", pa.timestamp("ms", tz="UTC")),
    pa.field("ended_at", pa.timestamp("ms", tz="UTC")),
    pa.field("node_id", pa.string()),
])
#: The schema as read back: the partition column first.
READ_SCHEMA = pa.schema([pa.field("search", pa.string()), *SCHEMA])

_SEARCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


def search_id(name: str, run_id: str) -> str:
    """The partition id of one search: its job name and the first 8 characters of its MLflow run
    (so a job started afresh under the same name gets a partition of its own)."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "search"
    return f"{safe[:180]}-{run_id[:8]}" if run_id else safe[:190]


@dataclass(frozen=True)
class SearchInfo:
    """What every row of one search shares.

    Attributes:
        search: The partition id (letters, digits, ``.``, ``_``, ``-``); see :func:`search_id`.
        name: The job's name.
        run_id: The search's MLflow (parent) run.
        strategy: The strategy's registered name.
        dataset: The dataset's registered name.
        seed: The search's seed (``report`` averages over seeds).
    """

    search: str
    name: str = ""
    run_id: str = ""
    strategy: str = ""
    dataset: str = ""
    seed: int | None = None

    def __post_init__(self) -> None:
        if not _SEARCH_ID.match(self.search):
            raise ConfigError(
                f"results search id {self.search!r} must be 1-200 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )


class ResultsStore:
    """Appends evaluated candidates to a Parquet dataset and reads them back.

    Args:
        root: The dataset's folder: a local path or ``s3://bucket/prefix``.
        spool_dir: Local folder for files not yet published (default: a folder under the
            system's temp dir named after ``root``); keep it on persistent disk to survive crashes.
        attempts: Tries per publish before the file is left in the spool for the next one.
        backoff_s: First wait between tries (doubling).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        spool_dir: str | os.PathLike[str] | None = None,
        attempts: int = 4,
        backoff_s: float = 1.0,
    ) -> None:
        self.root = str(root).rstrip("/") if storage.is_s3(root) else str(Path(root).expanduser().resolve())
        if storage.is_s3(self.root):
            storage.S3Location.parse(self.root)
        if spool_dir is None:
            digest = hashlib.sha1(self.root.encode()).hexdigest()[:12]
            spool_dir = Path(tempfile.gettempdir()) / f"raynas-results-spool-{digest}"
        self.spool_dir = Path(spool_dir)
        self.attempts = attempts
        self.backoff_s = backoff_s
        self._known: dict[str, set[str]] = {}

    def check(self) -> None:
        """Fail at once, with a clear :class:`raynas.errors.StorageError`, if the root is unusable."""
        storage.check_reachable(self.root)

    # -- writing ------------------------------------------------------------------------------

    def append(self, results: Sequence[EvalResult], *, info: SearchInfo) -> int:
        """Add the candidates of ``results`` that the search does not hold yet.

        Args:
            results: Evaluated candidates, each with a non-empty ``trial_id``.
            info: The search they belong to.

        Returns:
            How many rows were new (written, or spooled until the store is reachable again); rows
            of trials the search already holds are not counted (or written).
        """
        for r in results:
            if not r.trial_id:
                raise ValueError(f"EvalResult of {r.architecture.key()} has no trial_id; the store "
                                 "keys rows by trial_id so that a retried trial is written once")
        try:
            known = self._load_known(info.search)
        except Exception as exc:  # unreachable: the rows are checked again when published
            if not is_transient(exc):
                raise
            known = set()
        seen = known | self._spooled_ids(info.search)
        fresh: dict[str, EvalResult] = {}
        for r in results:
            if r.trial_id not in seen and r.trial_id not in fresh:
                fresh[r.trial_id] = r
        if fresh:
            self._spool(_to_table(list(fresh.values()), info), info.search)
        self.flush()
        return len(fresh)

    def flush(self) -> bool:
        """Publish every spooled file; return whether the spool is now empty.

        A store that stays unreachable after the retries leaves its files in the spool (logged
        as a warning); the next call tries again.
        """
        for path in sorted(self.spool_dir.glob("search=*/part-*.parquet")):
            search = path.parent.name.removeprefix("search=")
            try:
                with_retries(lambda p=path, s=search: self._publish(p, s),
                             attempts=self.attempts, backoff_s=self.backoff_s)
            except Exception as exc:
                pending = len(list(self.spool_dir.glob("search=*/part-*.parquet")))
                log.warning(
                    "results store %s unreachable (%s); %d file(s) kept in %s and sent later",
                    self.root, type(exc).__name__, pending, self.spool_dir,
                )
                return False
        return True

    def pending(self) -> int:
        """Rows waiting in the spool."""
        files = self.spool_dir.glob("search=*/part-*.parquet")
        return sum(pq.ParquetFile(p).metadata.num_rows for p in files)

    def _spool(self, table: pa.Table, search: str) -> None:
        ids = sorted(table.column("trial_id").to_pylist())
        digest = hashlib.sha1("\n".join([search, *ids]).encode()).hexdigest()[:16]
        folder = self.spool_dir / f"search={search}"
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".part-", suffix=".tmp")
        os.close(fd)
        try:
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, folder / f"part-{digest}.parquet")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _spooled_ids(self, search: str) -> set[str]:
        ids: set[str] = set()
        for path in (self.spool_dir / f"search={search}").glob("part-*.parquet"):
            ids.update(pq.read_table(path, columns=["trial_id"]).column("trial_id").to_pylist())
        return ids

    def _publish(self, path: Path, search: str) -> None:
        known = self._load_known(search)
        table = pq.read_table(path, schema=SCHEMA)
        keep = [tid not in known for tid in table.column("trial_id").to_pylist()]
        if all(keep):
            storage.put_file(path, storage.join(self.root, f"search={search}", path.name))
        elif any(keep):  # some rows reached the store before a crash: publish only the others
            rest = table.filter(pa.array(keep))
            with tempfile.TemporaryDirectory() as tmp:
                ids = sorted(rest.column("trial_id").to_pylist())
                name = f"part-{hashlib.sha1(chr(10).join([search, *ids]).encode()).hexdigest()[:16]}.parquet"
                pq.write_table(rest, Path(tmp) / name)
                storage.put_file(Path(tmp) / name, storage.join(self.root, f"search={search}", name))
        known.update(table.column("trial_id").to_pylist())
        path.unlink()

    def _load_known(self, search: str) -> set[str]:
        if search not in self._known:
            table = self._dataset_table(columns=["trial_id"], searches=[search])
            self._known[search] = set(table.column("trial_id").to_pylist())
        return self._known[search]

    # -- reading ------------------------------------------------------------------------------

    def searches(self) -> list[str]:
        """The search ids in the store."""
        fs, path = storage.filesystem(self.root)
        import pyarrow.fs as pafs

        infos = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
        return sorted(
            i.base_name.removeprefix("search=") for i in infos
            if i.type == pafs.FileType.Directory and i.base_name.startswith("search=")
        )

    def read_table(self, searches: Iterable[str] | None = None) -> pa.Table:
        """Every row (or the rows of ``searches``) as an Arrow table with :data:`READ_SCHEMA`."""
        return self._dataset_table(columns=None, searches=None if searches is None else list(searches))

    def read_frame(self, searches: Iterable[str] | None = None) -> pd.DataFrame:
        """The rows as a pandas DataFrame, with every metric also as a ``metric.<name>`` column."""
        table = self.read_table(searches)
        frame = table.drop_columns(["metrics"]).to_pandas()
        metrics = [dict(m or []) for m in table.column("metrics").to_pylist()]
        for name in sorted({k for m in metrics for k in m}):
            frame[f"metric.{name}"] = [m.get(name, float("nan")) for m in metrics]
        return frame

    def _dataset_table(self, *, columns: list[str] | None, searches: list[str] | None) -> pa.Table:
        import pyarrow.dataset as ds

        fs, path = storage.filesystem(self.root)
        partitioning = ds.partitioning(pa.schema([pa.field("search", pa.string())]), flavor="hive")
        import pyarrow.fs as pafs

        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return READ_SCHEMA.empty_table().select(columns or READ_SCHEMA.names)
        filter_ = ds.field("search").isin(searches) if searches is not None else None
        try:
            dataset = ds.dataset(
                path, schema=READ_SCHEMA, format="parquet", filesystem=fs, partitioning=partitioning,
                exclude_invalid_files=False, ignore_prefixes=[".", "_"],
            )
            return dataset.to_table(columns=columns, filter=filter_)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            # A file raynas did not write, or one damaged on disk (raynas writes each part whole,
            # renamed into place): say which, rather than fail somewhere in pyarrow.
            reason = " ".join(str(exc).split())
            raise StorageError(
                f"the results store {self.root} holds a file that is not one of its Parquet parts "
                f"({reason[:400]}); move that file out of the store and run the command again"
            ) from None


def _to_table(results: list[EvalResult], info: SearchInfo) -> pa.Table:
    now = datetime.fromtimestamp(time.time(), tz=timezone.utc)
    rows: list[dict[str, Any]] = [
        {
            "name": info.name, "run_id": info.run_id, "trial_id": r.trial_id,
            "space": r.architecture.space, "architecture_key": r.architecture.key(),
            "architecture": r.architecture.to_json(), "strategy": info.strategy,
            "dataset": info.dataset, "seed": info.seed, "objective": r.objective,
            "score": r.score if r.objective in r.metrics else None,
            "metrics": [(k, float(v)) for k, v in sorted(canonical_metrics(r.metrics).items())],
            "budget": float(r.budget), "seconds": float(r.seconds), "node": canonical_node(r.node),
            "stopped_early": bool(r.stopped_early), "recorded_at": now,
            "started_at": _when(r.started), "ended_at": _when(r.ended), "node_id": r.node_id or None,
        }
        for r in results
    ]
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def _when(seconds: float) -> datetime | None:
    return datetime.fromtimestamp(seconds, tz=timezone.utc) if seconds > 0 else None
