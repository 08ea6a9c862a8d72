"""The supernet-step benchmark still runs (its figures live in the README, not in tests): one
gradient case and the one-shot case at a tiny size, each in its own interpreter as on CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "supernet_step.py"


def test_the_benchmark_runs_and_reports_ratios_against_darts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("supernet_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "rows.json"
    bench.main([
        "--device", "cpu", "--batch-size", "4", "--channels", "4", "--layers", "3", "--nodes", "2",
        "--warmup", "0", "--steps", "1", "--cases", "darts1,single_path", "--json", str(out),
    ])
    result = json.loads(out.read_text())
    assert result["baseline"] == "darts1"
    rows = {row["case"]: row for row in result["rows"]}
    assert set(rows) == {"darts1", "single_path"}
    assert rows["darts1"]["throughput_ratio"] == 1.0
    assert all(row["mean_step_s"] > 0 and row["final_train_loss"] > 0 for row in rows.values())
    assert "ratios against darts1" in capsys.readouterr().out
