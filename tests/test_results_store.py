"""The Parquet results store on local disk: schema, readers (pyarrow, pandas, DuckDB), no
duplicate rows when a trial is retried, atomic publication and the spool that keeps rows an
unreachable store could not take."""

from __future__ import annotations

import random
import re
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from raynas.spaces.nb201 import Nb201Space
from raynas.tracking.results import READ_SCHEMA, SCHEMA, ResultsStore, SearchInfo, search_id
from raynas.types import Architecture, EvalResult


def candidates(n: int, *, seed: int = 0, prefix: str = "t") -> list[EvalResult]:
    rng = random.Random(seed)
    space = Nb201Space()
    return [
        EvalResult(
            architecture=space.sample(rng),
            metrics={"valid_acc": 0.5 + i / 100, "params": 1000.0 + i},
            trial_id=f"{prefix}{i}", budget=float(i + 1), seconds=0.1 * i, node="cpu",
            stopped_early=i % 2 == 1,
        )
        for i in range(n)
    ]


INFO = SearchInfo(search="evo-abcdef12", name="evo", run_id="abcdef1234", strategy="evolution",
                  dataset="cifar10", seed=3)


def test_rows_round_trip_and_every_reader_sees_them(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    results = candidates(3)
    assert store.append(results, info=INFO) == 3

    table = store.read_table()
    assert table.schema == READ_SCHEMA
    rows = sorted(table.to_pylist(), key=lambda r: r["trial_id"])
    assert [r["trial_id"] for r in rows] == ["t0", "t1", "t2"]
    for row, r in zip(rows, results, strict=True):
        assert row["search"] == "evo-abcdef12" and row["name"] == "evo" and row["seed"] == 3
        assert row["space"] == "nb201" and row["strategy"] == "evolution"
        assert Architecture.from_json(row["architecture"]) == r.architecture
        assert row["architecture_key"] == r.architecture.key()
        assert dict(row["metrics"]) == r.metrics
        assert row["score"] == r.metrics["valid_acc"] and row["objective"] == "valid_acc"
        # An executor's "cpu" node is recorded in the one vocabulary (docs/results.md).
        assert (row["budget"], row["node"], row["stopped_early"]) == (r.budget, "ray-cpu", r.stopped_early)

    files = list((tmp_path / "results").rglob("*"))
    assert {f.parent.name for f in files if f.is_file()} == {"search=evo-abcdef12"}
    assert pq.read_schema(next(f for f in files if f.is_file())).remove_metadata() == SCHEMA

    frame = pd.read_parquet(tmp_path / "results")  # pandas, hive partition as a column
    assert sorted(frame["trial_id"]) == ["t0", "t1", "t2"]
    assert set(frame["search"].astype(str)) == {"evo-abcdef12"}
    expanded = store.read_frame()
    assert sorted(expanded["metric.params"]) == [1000.0, 1001.0, 1002.0]

    count, best = duckdb.sql(
        f"SELECT count(*), max(score) FROM read_parquet('{tmp_path}/results/*/*.parquet', "
        "hive_partitioning=true) WHERE search = 'evo-abcdef12'"
    ).fetchall()[0]
    assert (count, best) == (3, pytest.approx(0.52))
    assert ds.dataset(tmp_path / "results", partitioning="hive").count_rows() == 3


def test_a_retried_trial_is_written_once(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    first = candidates(3)
    store.append(first, info=INFO)
    # The same trials again (a retried Ray task, a restored Tune trial) and one new one.
    retried = [*first[1:], candidates(4, seed=1, prefix="t")[3]]
    assert store.append(retried, info=INFO) == 1
    # A new process knows nothing in memory: it reads the trial ids back from the dataset.
    again = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    assert again.append(first, info=INFO) == 0
    assert again.append([first[0], first[0]], info=SearchInfo(search="other-1", seed=0)) == 1
    ids = sorted(again.read_table().column("trial_id").to_pylist())
    assert ids == ["t0", "t0", "t1", "t2", "t3"]  # t0 once per search
    assert sorted(again.read_table(["evo-abcdef12"]).column("trial_id").to_pylist()) == [
        "t0", "t1", "t2", "t3"
    ]
    assert again.searches() == ["evo-abcdef12", "other-1"]


def test_an_unwritable_store_keeps_rows_in_the_spool_until_it_recovers(tmp_path: Path) -> None:
    blocker = tmp_path / "blocked"
    blocker.write_text("a file where the store's folder should be")
    store = ResultsStore(blocker / "results", spool_dir=tmp_path / "spool", attempts=2, backoff_s=0.01)
    assert store.append(candidates(2), info=INFO) == 2  # accepted: kept in the spool
    assert store.pending() == 2
    assert not store.flush()

    blocker.unlink()  # the storage comes back
    # A new process (after a crash) finds the spooled rows and publishes them with its own.
    later = ResultsStore(blocker / "results", spool_dir=tmp_path / "spool", attempts=2, backoff_s=0.01)
    assert later.append(candidates(3), info=INFO) == 1  # t0, t1 are already spooled
    assert later.pending() == 0
    assert sorted(later.read_table().column("trial_id").to_pylist()) == ["t0", "t1", "t2"]
    assert not [p for p in (blocker / "results").rglob("*") if p.name.startswith(".")]


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match="has no trial_id"):
        ResultsStore("/tmp/unused-results").append(
            [EvalResult(architecture=Nb201Space().sample(random.Random(0)), metrics={})],
            info=INFO,
        )
    with pytest.raises(Exception, match="results search id 'a/b'"):
        SearchInfo(search="a/b")
    assert search_id("my job/1", "0123456789abcdef") == "my_job_1-01234567"


@pytest.mark.parametrize("where", ["stray.parquet", "search=evo-abcdef12/part-torn.parquet"])
def test_a_file_that_is_not_a_parquet_part_is_named_in_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreign or damaged file in the store stops its readers and writers with one line naming
    it (`raynas report` exits 2), not in pyarrow; moved away, the store reads again."""
    from raynas.cli import main
    from raynas.errors import StorageError

    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    store.append(candidates(2), info=INFO)
    bad = tmp_path / "results" / where
    bad.write_bytes(b"PAR1 torn after its first bytes")
    writer = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")  # a resumed search's
    for call in (store.read_table, lambda: writer.append(candidates(3), info=INFO)):
        named = rf"holds a file that is not one of its Parquet parts .*'{re.escape(str(bad))}'"
        with pytest.raises(StorageError, match=named):
            call()
    assert main(["report", "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: the results store") and len(err.splitlines()) == 1, err
    bad.unlink()
    assert sorted(store.read_table().column("trial_id").to_pylist()) == ["t0", "t1"]
