"""The bookkeeping benchmark still runs (its figures live in the README and docs/scaling.md, not
in tests): a short training-free search, in an interpreter of its own (the benchmark wraps
raynas's classes with timers), whose parts add up to its time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "bookkeeping.py"


def test_the_bookkeeping_benchmark_splits_a_search_s_time_into_its_parts(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--candidates", "12", "--json", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["candidates"] == 12 and figures["best"]  # the best candidate's metrics
    seconds = figures["seconds"]
    assert set(seconds) == {"scoring", "controller", "bookkeeping", "mlflow", "other"}
    assert all(seconds[k] > 0 for k in ("scoring", "controller", "bookkeeping", "mlflow"))
    assert sum(seconds.values()) == pytest.approx(figures["total_seconds"])
    assert figures["lane_seconds"] > 0  # the child runs went out from the lane's thread
    assert "bookkeeping" in done.stdout
