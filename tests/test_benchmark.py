"""The supernet-step benchmark still runs (its figures live in the README, not in tests): the
naive baseline, one gradient case and the one-shot case at a tiny size, each in its own
interpreter as on CPU."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

import pytest
import torch
import torch.nn.functional as F

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "supernet_step.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("supernet_step", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_the_benchmark_runs_and_reports_ratios_against_the_naive_supernet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bench = load_benchmark()
    if not any(path.exists() for path in bench.NAIVE_SOURCES):
        pytest.skip(f"naive_darts.py is in none of {bench.NAIVE_SOURCES}")
    measure = bench.matmul_gflops
    monkeypatch.setattr(bench, "matmul_gflops", lambda: measure(n=512))  # seconds less
    out = tmp_path / "rows.json"
    bench.main([
        "--device", "cpu", "--batch-size", "4", "--channels", "4", "--layers", "3", "--nodes", "4",
        "--warmup", "0", "--steps", "1", "--cases", "naive,darts1,single_path", "--json", str(out),
        "--rounds", "2",
        "--threads", "1",  # two threads on a busy 2-core machine wait for each other at every op
    ])
    result = json.loads(out.read_text())
    assert result["baseline"] == "naive" and result["matmul_gflops"] > 0
    rows = {row["case"]: row for row in result["rows"]}
    assert set(rows) == {"naive", "darts1", "single_path"}
    assert rows["naive"]["throughput_ratio"] == 1.0
    for row in rows.values():
        assert row["mean_step_s"] > 0 and row["final_train_loss"] > 0
        # Two rounds of one timed step each, pooled.
        assert row["rounds"] == 2 and len(row["step_seconds"]) == 2
        assert row["mean_step_s"] == pytest.approx(sum(row["step_seconds"]) / 2)
        assert row["images_per_s"] == pytest.approx(4 / row["mean_step_s"])
        assert row["step_flops"] > 0 and row["peak_fraction"] > 0
        # One profiled step of the first round: torch's operators ran for part of it, the rest
        # Python between them.
        assert 0 < row["busy_s"] < row["profiled_step_s"] and row["busy_kind"] == "torch operators"
        assert row["busy_fraction"] == pytest.approx(row["busy_s"] / row["profiled_step_s"])
    # The same convolutions: the naive supernet's and darts1's plain form count the same FLOPs
    # but for the naive one's architecture backward into the weights (it fills every gradient).
    assert rows["darts1"]["step_flops"] <= rows["naive"]["step_flops"]
    console = capsys.readouterr().out
    assert "against naive" in console
    # The cases take turns: every case's first round before any case's second.
    order = [line.strip() for line in console.splitlines() if line.strip().startswith("running ")]
    assert order == [f"running {case} (round {turn}) ..." for turn in (1, 2)
                     for case in ("naive", "darts1", "single_path")]


def test_busy_time_is_the_union_of_the_intervals() -> None:
    """Overlapping and nested intervals count once, gaps not at all; against the union counted
    on a grid of hundredths."""
    bench = load_benchmark()
    assert bench.busy_seconds([]) == 0
    assert bench.busy_seconds([(0, 4), (1, 2), (3, 6), (8, 9), (8.5, 8.75)]) == 7
    rng = random.Random(0)
    for _ in range(20):
        spans = [(a, a + rng.randint(0, 30)) for a in (rng.randint(0, 100) for _ in range(8))]
        covered = {t for start, end in spans for t in range(start * 100, end * 100)}
        assert bench.busy_seconds([(a * 100, b * 100) for a, b in spans]) == len(covered)


def test_operator_spans_are_the_profilers_events_on_the_device_read_from_its_raw_ones() -> None:
    """The spans the busy time is the union of: those `prof.events()` gives (the profiler's own
    FunctionEvents, user annotations left out), read without building them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    bench = load_benchmark()
    x = torch.randn(16, 16, requires_grad=True)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function("a user annotation"):
            for _ in range(5):
                (x @ x).relu().sum().backward()
        _ = x.is_leaf, x.output_nr, x._version  # utility calls the profiler leaves out
    spans = bench.operator_spans(prof, DeviceType.CPU)
    events = [e for e in prof.events() if e.device_type == DeviceType.CPU and not e.is_user_annotation]
    start = prof.profiler.kineto_results.trace_start_ns()
    # prof.events() in nanoseconds since the epoch (it keeps microseconds since the trace began).
    kept = {(start + round(e.time_range.start * 1000), start + round(e.time_range.end * 1000))
            for e in events}
    near = {(a + da, b + db) for a, b in spans for da in (-1, 0, 1) for db in (-1, 0, 1)}
    assert len(kept) > 5 * 4 and kept <= near
    # What else is there: an operator's call of an operator of its name (aten::sum's inner one,
    # which prof.events() folds into its caller), inside that caller's span.
    extra = [span for span in spans if not any(abs(span[0] - a) <= 1 and abs(span[1] - b) <= 1
                                               for a, b in kept)]
    assert all(any(a <= s and e <= b for a, b in kept) for s, e in extra)
    assert bench.busy_seconds(spans) / 1e9 == pytest.approx(
        bench.busy_seconds([(e.time_range.start, e.time_range.end) for e in events]) / 1e6, rel=1e-6)


def test_the_naive_baseline_needs_its_four_nodes() -> None:
    bench = load_benchmark()
    with pytest.raises(SystemExit):
        bench.parse_args(["--cases", "naive,darts1", "--nodes", "2"])
    # Without the naive case, and in a child running another case, any node count goes.
    assert bench.parse_args(["--cases", "darts1", "--nodes", "2"]).nodes == 2
    assert bench.parse_args(["--case", "darts1", "--nodes", "2"]).case == "darts1"


def test_convolution_flops_count_groups_in_every_gradient() -> None:
    """A depthwise convolution's forward, input gradient and weight gradient each take
    2 * B * C * H * W * k * k FLOPs (torch's FlopCounterMode counts the weight gradient C times)."""
    bench = load_benchmark()
    x = torch.randn(2, 8, 10, 10, requires_grad=True)  # (B, C, H, W)
    depthwise = torch.randn(8, 1, 3, 3, requires_grad=True)
    pointwise = torch.randn(6, 8, 1, 1, requires_grad=True)
    with bench._FlopCount() as counter:
        y = F.conv2d(x, depthwise, padding=1, groups=8)
    assert counter.total == 2 * 2 * 8 * 10 * 10 * 9
    with bench._FlopCount() as counter:
        y.sum().backward()
    assert counter.total == 2 * (2 * 2 * 8 * 10 * 10 * 9)
    with bench._FlopCount() as counter:
        F.conv2d(x, pointwise).sum().backward()
    assert counter.total == 3 * (2 * 2 * 6 * 8 * 10 * 10)
