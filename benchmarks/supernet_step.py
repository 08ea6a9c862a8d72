"""Benchmark of the supernet training step of the gradient strategies.

What is measured: one call of ``strategy.step(train_batch, valid_batch)``, i.e. the architecture
step on a validation batch followed by the weight step on a training batch, on the DARTS CNN
supernet at the paper's search settings (batch 64, 32x32 RGB inputs, 10 classes, 16 initial
channels, 8 cells, 4 nodes per cell). The batches are fixed random tensors already on the device,
so data loading is not part of the measurement.

For every case it reports

* throughput: training images per second, ``batch_size / mean seconds per step``;
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps
  (statistics reset just before the first step; weights, optimiser state and activations
  included); on CPU the growth of the peak resident set size over the steps (``ru_maxrss`` at
  the end minus the RSS just before the first step), each case in a fresh subprocess so cases
  do not affect each other;
* ratios of both against the baseline case (first-order DARTS) measured in the same run.

A new strategy is benchmarked by adding one entry to :data:`CASES`.

Usage::

    python benchmarks/supernet_step.py                       # cuda if available, else cpu
    python benchmarks/supernet_step.py --device cpu --layers 5 --channels 8 --batch-size 16 --steps 1
    python benchmarks/supernet_step.py --cases darts1,darts2 --json results.json
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Protocol

import torch

from raynas.config import TrainConfig
from raynas.spaces.darts_cnn import DartsCnnSpace, DartsSpaceConfig
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient.base import Batch, StepResult
from raynas.strategies.sampling import SamplingStrategy
from raynas.supernet import build_supernet
from raynas.train.loop import train_epoch
from raynas.types import DatasetInfo

# Case name -> (strategy name in raynas.strategies.STRATEGIES, overrides of its config dataclass).
CASES: dict[str, tuple[str, dict[str, Any]]] = {
    "darts1": ("darts", {"order": 1}),
    "darts2": ("darts", {"order": 2}),
    "pc_darts": ("pc_darts", {"k": 4, "arch_start_epoch": 0}),
    "milenas": ("milenas", {}),
    "gdas": ("gdas", {}),
    "rf_darts": ("rf_darts", {}),
    "adarts": ("adarts", {"k": 4, "arch_start_epoch": 0}),
    # One-shot weight sharing (SPOS, random_ws, ENAS, ...): one SGD step on a uniformly sampled path.
    "single_path": ("spos", {}),
}
BASELINE = "darts1"  # ratios are relative to this case (or to the first case run without it)

DATASET = DatasetInfo("cifar10", in_channels=3, num_classes=10, image_size=32)
_RESULT_PREFIX = "SUPERNET_STEP_RESULT "  # marks the child's result line on its stdout


def _current_rss_bytes() -> int:
    """Resident set size of this process now (Linux ``/proc``; ``ps`` elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        out = subprocess.run(
            ["ps", "-o", "rss=", "-p", str(os.getpid())], capture_output=True, text=True, check=True
        )
        return int(out.stdout.strip()) * 1024


def _peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (``ru_maxrss``: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Build the supernet and strategy of one case, run warm-up and timed steps, measure them."""
    strategy_name, overrides = CASES[name]
    device = torch.device(args.device)
    torch.manual_seed(0)

    entry = STRATEGIES.entry(strategy_name)
    config = entry.config(**overrides) if entry.config is not None else None
    if issubclass(entry.target, SamplingStrategy):
        return _measure(name, strategy_name, config, overrides, args, device, _single_path_step(args, device))
    # The supernet as the strategy needs it (partial channels, sampled ops, ...), as in a search.
    space = DartsCnnSpace(
        DartsSpaceConfig(
            channels=args.channels, layers=args.layers, nodes=args.nodes,
            **entry.target.space_overrides(config),
        )
    )
    supernet = build_supernet(space, DATASET).to(device)
    strategy = entry.target(supernet=supernet, config=config, train=TrainConfig())
    return _measure(name, strategy_name, config, overrides, args, device, strategy.step)


class _Step(Protocol):
    def __call__(self, train_batch: Batch, valid_batch: Batch) -> Any: ...


def _single_path_step(args: argparse.Namespace, device: torch.device) -> _Step:
    """A one-shot supernet step: a uniformly sampled path (SPOS), one SGD step on a training batch."""
    space = DartsCnnSpace(DartsSpaceConfig(channels=args.channels, layers=args.layers, nodes=args.nodes))
    supernet = build_supernet(space, DATASET).to(device)
    train = TrainConfig()
    arch_ids = {id(p) for p in supernet.arch_parameters()}
    optimizer = torch.optim.SGD(
        [p for p in supernet.parameters() if id(p) not in arch_ids],
        lr=train.learning_rate, momentum=train.momentum, weight_decay=train.weight_decay,
    )
    rng = random.Random(0)

    def step(train_batch: Batch, valid_batch: Batch) -> StepResult:
        supernet.set_path(space.sample(rng))
        metrics = train_epoch(supernet, optimizer, [train_batch], device, grad_clip=train.grad_clip)
        n = torch.tensor(train_batch[1].numel())
        return StepResult(loss_sum=metrics["train_loss"] * n, correct=torch.tensor(0), count=n)

    return step


def _measure(
    name: str, strategy_name: str, config: Any, overrides: dict[str, Any], args: argparse.Namespace,
    device: torch.device, step: _Step,
) -> dict[str, Any]:
    """Warm-up and timed calls of ``step`` on fixed random batches; throughput and peak memory."""

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        shape = (args.batch_size, DATASET.in_channels, DATASET.image_size, DATASET.image_size)
        x = torch.randn(shape, device=device)  # (B, C, H, W)
        y = torch.randint(0, DATASET.num_classes, (args.batch_size,), device=device)  # (B,)
        return x, y

    train_batch, valid_batch = batch(), batch()

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _current_rss_bytes()

    for _ in range(args.warmup):
        step(train_batch, valid_batch)
    _sync(device)

    times: list[float] = []
    for _ in range(args.steps):
        start = time.perf_counter()
        result = step(train_batch, valid_batch)
        _sync(device)
        times.append(time.perf_counter() - start)
    loss = float(result.loss_sum) / float(result.count)  # forces a sync; after the timing

    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = max(0, _peak_rss_bytes() - rss_before)

    mean = statistics.fmean(times)
    return {
        "case": name,
        "strategy": strategy_name,
        "config": dataclasses.asdict(config) if config is not None else {},
        "overrides": overrides,
        "device": args.device,
        "batch_size": args.batch_size,
        "channels": args.channels,
        "layers": args.layers,
        "nodes": args.nodes,
        "warmup": args.warmup,
        "steps": args.steps,
        "step_seconds": times,
        "mean_step_s": mean,
        "min_step_s": min(times),
        "images_per_s": args.batch_size / mean,
        "peak_memory_mib": peak / 2**20,
        "memory_kind": "cuda max_memory_allocated" if device.type == "cuda" else "peak RSS growth",
        "final_train_loss": loss,
    }


def run_case_in_subprocess(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one case in a fresh interpreter (this script with ``--case``) and read its result."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--case", name,
        "--device", args.device, "--batch-size", str(args.batch_size),
        "--channels", str(args.channels), "--layers", str(args.layers), "--nodes", str(args.nodes),
        "--warmup", str(args.warmup), "--steps", str(args.steps),
    ]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {name!r} failed (exit code {proc.returncode}):\n{proc.stdout}")
    return json.loads(lines[-1][len(_RESULT_PREFIX) :])


def add_ratios(rows: list[dict[str, Any]]) -> str:
    """Add throughput and memory ratios against the baseline row; return the baseline's name."""
    base = next((r for r in rows if r["case"] == BASELINE), rows[0])
    for row in rows:
        row["throughput_ratio"] = row["images_per_s"] / base["images_per_s"]
        mem = base["peak_memory_mib"]
        row["memory_ratio"] = row["peak_memory_mib"] / mem if mem > 0 else float("nan")
    return str(base["case"])


def _number(value: float) -> str:
    """One decimal for large values, three significant digits for small ones (slow CPU runs)."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as a fixed-width text table."""
    memory = "peak alloc MiB" if rows[0]["device"] == "cuda" else "peak RSS+ MiB"
    header = ["case", "strategy", "overrides", "s/step", "min s/step", "img/s", "ratio", memory, "mem ratio"]
    body = [
        [
            r["case"],
            r["strategy"],
            ",".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-",
            f"{r['mean_step_s']:.4f}",
            f"{r['min_step_s']:.4f}",
            _number(r["images_per_s"]),
            f"{r['throughput_ratio']:.2f}",
            f"{r['peak_memory_mib']:.1f}",
            f"{r['memory_ratio']:.2f}",
        ]
        for r in rows
    ]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def fmt(line: list[str]) -> str:
        pairs = enumerate(zip(line, widths, strict=True))
        cells = [c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in pairs]  # text left, numbers right
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([fmt(header), rule, *(fmt(line) for line in body)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time one supernet training step (architecture + weight step) per strategy."
    )
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=64, help="images per batch (64)")
    parser.add_argument("--channels", type=int, default=DartsSpaceConfig.channels,
                        help="initial channels (16)")
    parser.add_argument("--layers", type=int, default=DartsSpaceConfig.layers, help="cells (8)")
    parser.add_argument("--nodes", type=int, default=DartsSpaceConfig.nodes,
                        help="intermediate nodes per cell (4)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (1)")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps (default: 3 on cpu, 20 on cuda)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated cases, from: {', '.join(CASES)}")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child mode: one case
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.steps is None:
        args.steps = 20 if args.device == "cuda" else 3
    if args.steps < 1 or args.warmup < 0 or args.batch_size < 1:
        parser.error("--steps and --batch-size must be at least 1, --warmup at least 0")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in [*args.cases, *([args.case] if args.case else [])] if c not in CASES]
    if unknown or not args.cases:
        parser.error(f"unknown or no cases {unknown}; choose from: {', '.join(CASES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.case is not None:  # child: one case, result as one marked JSON line
        print(_RESULT_PREFIX + json.dumps(run_case(args.case, args)), flush=True)
        return

    if args.device == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(
        f"supernet step: device={args.device} ({hardware}), torch {torch.__version__}, "
        f"batch={args.batch_size}, channels={args.channels}, layers={args.layers}, "
        f"nodes={args.nodes}, warmup={args.warmup}, steps={args.steps}",
        flush=True,
    )
    rows = []
    for name in args.cases:
        print(f"  running {name} ...", flush=True)
        if args.device == "cpu":
            rows.append(run_case_in_subprocess(name, args))
        else:
            rows.append(run_case(name, args))
            gc.collect()
            torch.cuda.empty_cache()
    baseline = add_ratios(rows)
    print()
    print(format_table(rows))
    print(f"\nimg/s = batch_size / mean s/step; ratios against {baseline}.")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"baseline": baseline, "rows": rows}, indent=2) + "\n")
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
