"""Benchmark of the supernet training step of the gradient strategies, against a plain supernet.

What is measured: one call of ``strategy.step(train_batch, valid_batch)``, i.e. the architecture
step on a validation batch followed by the weight step on a training batch, on the DARTS CNN
supernet at the paper's search settings (batch 64, 32x32 RGB inputs, 10 classes, 16 initial
channels, 8 cells, 4 nodes per cell). The batches are fixed random tensors already on the device,
so data loading is not part of the measurement.

The baseline case ``naive`` is the same first-order step on a supernet written the
straightforward way, as the DARTS authors wrote it: ``naive_darts.py`` (a weighted sum over every
op on every edge; read from ``shared/bench/`` next to the repository when present, else from an
identical copy put in this folder), with its own optimisers, in the same run on the same machine.

For every case it reports

* throughput: training images per second, ``batch_size / mean seconds per step``, and its ratio
  to the baseline's;
* the share of the machine's matrix-multiply peak: the step's convolution and matrix-product
  FLOPs per second, over the rate of a 2048x2048 float32 matrix product measured at the start of
  the run (as ``naive_darts.py`` measures it). The FLOPs are counted on the plain form of the
  case's supernet (one edge at a time: recomputation not counted; the naive baseline's
  architecture step also computes the weights' gradients, as the authors' code does, and those
  count), at batch 2 and scaled; convolutions counted with their groups (:func:`_conv_flops`);
* the ratio of second- to first-order DARTS step time, when both run;
* with ``--rounds N``, every case runs N times, the cases taking turns (naive, darts1, ...,
  naive, darts1, ...): a machine whose speed drifts by tens of percent within minutes (a shared
  or throttled CPU) then slows every case alike, not the ones that happened to run late. A
  case's row pools its timed steps over the rounds; its peak memory is the largest round's;
* busy time: one more step under ``torch.profiler`` in the first round, and the share of it
  during which the device was busy: on CUDA the union of the intervals in which a kernel ran
  (the GPU's busy time per step; what is left is the GPU waiting for Python and launches), on
  the CPU the union of torch's operators (what is left is Python and dispatch between them);
* peak memory: on CUDA ``torch.cuda.max_memory_allocated`` over the warm-up and timed steps
  (statistics reset just before the first step; weights, optimiser state and activations
  included); on CPU the growth of the peak resident set size over the steps (``ru_maxrss`` at
  the end minus the RSS just before the first step), each case in a fresh subprocess so cases
  do not affect each other; and its ratio to the baseline's.

A new strategy is benchmarked by adding one entry to :data:`CASES`.

Usage::

    python benchmarks/supernet_step.py                       # cuda if available, else cpu
    python benchmarks/supernet_step.py --device cpu --batch-size 32 --cases naive,darts1,darts2,single_path
    python benchmarks/supernet_step.py --batch-size 4 --channels 4 --layers 3 --steps 1  # quick
    python benchmarks/supernet_step.py --cases darts1,darts2 --json results.json
    python benchmarks/supernet_step.py --device cpu --batch-size 32 --rounds 2 --steps 2  # cases taking turns
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import math
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import flop_registry

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
NAIVE = "naive"  # the baseline: naive_darts.py's first-order step; ratios are relative to it
NAMES = (NAIVE, *CASES)
# naive_darts.py: the shared yardstick next to the repository, else a copy of it in this folder.
NAIVE_SOURCES = (
    Path(__file__).resolve().parents[2] / "shared" / "bench" / "naive_darts.py",
    Path(__file__).resolve().parent / "naive_darts.py",
)

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
    """Build the step of one case, count its FLOPs, run warm-up and timed steps, measure them
    (and, in the first round, one more step's busy time)."""
    device = torch.device(args.device)
    flops = None if args.no_flops else step_flops(name, args, device)  # (the first round's count)
    torch.manual_seed(0)
    strategy, config, overrides, step = build_step(name, args, device)
    row = _measure(name, strategy, config, overrides, args, device, step, profile=not args.no_flops)
    return {**row, "step_flops": flops}


def busy_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """The length of the union of the ``(start, end)`` intervals: the time during which at least
    one of them was running (overlapping and nested ones counted once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def profiled_step(step: _Step, train_batch: Batch, valid_batch: Batch,
                  device: torch.device) -> tuple[float, float]:
    """One call of ``step`` under ``torch.profiler``: the seconds its device was busy (the union
    of its CUDA kernels on a GPU, of torch's operators on the CPU; annotations not counted) and
    the seconds the call took (with the profiler's own overhead)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    # Kineto's own lines ("profiler_start", and on a machine without CUDA an ERROR line about
    # its device count) would interleave with the table: its level 6 prints none.
    os.environ.setdefault("KINETO_LOG_LEVEL", "6")
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    kind = DeviceType.CUDA if cuda else DeviceType.CPU
    with profile(activities=activities) as prof:
        _sync(device)
        start = time.perf_counter()
        step(train_batch, valid_batch)
        _sync(device)
        seconds = time.perf_counter() - start
    return busy_seconds(operator_spans(prof, kind)) / 1e9, seconds


# The profiler's utility events that `prof.events()` leaves out (torch/autograd/profiler_util.py,
# `_filter_name`); hidden events are left out too.
_UTILITY_EVENTS = frozenset({
    "[memory]", "[OutOfMemory]", "profiler::_record_function_enter",
    "profiler::_record_function_enter_new", "profiler::_record_function_exit",
    "aten::is_leaf", "aten::output_nr", "aten::_version",
})


def operator_spans(prof: Any, kind: Any) -> list[tuple[int, int]]:
    """(start, end) in nanoseconds of every event on ``kind``'s device in the finished profile
    ``prof``, user annotations left out: the events `prof.events()` gives, read from kineto's
    raw ones (building `prof.events()` took 5 of a tiny case's 6 seconds), and the calls of an
    operator inside one of its own name, which `prof.events()` folds into them: spans inside
    spans, which leave the union the same."""
    return [(e.start_ns(), e.end_ns()) for e in prof.profiler.kineto_results.events()
            if e.device_type() == kind and not e.is_user_annotation() and not e.is_hidden_event()
            and e.name() not in _UTILITY_EVENTS]


class _Step(Protocol):
    def __call__(self, train_batch: Batch, valid_batch: Batch) -> Any: ...


def build_step(
    name: str, args: argparse.Namespace, device: torch.device, *, plain: bool = False
) -> tuple[str, Any, dict[str, Any], _Step]:
    """The step of case ``name`` as a search would run it: (strategy label, config, overrides,
    step). ``plain``: the supernet's cells compute one edge at a time (each mixed op's own
    forward), the form whose FLOPs are the work the step needs."""
    if name == NAIVE:
        return "naive_darts.py", None, {}, _naive_step(args, device)
    strategy_name, overrides = CASES[name]
    entry = STRATEGIES.entry(strategy_name)
    config = entry.config(**overrides) if entry.config is not None else None
    if issubclass(entry.target, SamplingStrategy):
        return strategy_name, config, overrides, _single_path_step(args, device, plain)
    # The supernet as the strategy needs it (partial channels, sampled ops, ...), as in a search.
    space = DartsCnnSpace(
        DartsSpaceConfig(
            channels=args.channels, layers=args.layers, nodes=args.nodes,
            **entry.target.space_overrides(config),
        )
    )
    supernet = _plain(build_supernet(space, DATASET), plain).to(device)
    strategy = entry.target(supernet=supernet, config=config, train=TrainConfig())
    return strategy_name, config, overrides, strategy.step


def _plain(supernet: nn.Module, plain: bool) -> nn.Module:
    for module in supernet.modules():
        if plain and hasattr(module, "fused"):
            module.fused = False
    return supernet


def _single_path_step(args: argparse.Namespace, device: torch.device, plain: bool) -> _Step:
    """A one-shot supernet step: a uniformly sampled path (SPOS), one SGD step on a training batch."""
    space = DartsCnnSpace(DartsSpaceConfig(channels=args.channels, layers=args.layers, nodes=args.nodes))
    supernet = _plain(build_supernet(space, DATASET), plain).to(device)
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


def load_naive_darts() -> ModuleType:
    """naive_darts.py as a module, from the first of :data:`NAIVE_SOURCES` that exists."""
    path = next((p for p in NAIVE_SOURCES if p.exists()), None)
    if path is None:
        raise FileNotFoundError(f"naive_darts.py is in none of {[str(p) for p in NAIVE_SOURCES]}")
    spec = importlib.util.spec_from_file_location("naive_darts", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _naive_step(args: argparse.Namespace, device: torch.device) -> _Step:
    """naive_darts.py's first-order step with its optimisers, as its ``main`` runs it: an
    architecture step on the validation batch (its backward fills every gradient, as the authors'
    code does), then a weight step on the training batch, gradients clipped at 5."""
    net = load_naive_darts().Net(C=args.channels, ncls=DATASET.num_classes, L=args.layers).to(device)
    w_opt = torch.optim.SGD(net.weights(), 0.025, momentum=0.9, weight_decay=3e-4)
    a_opt = torch.optim.Adam([net.a_n, net.a_r], 3e-4, betas=(0.5, 0.999), weight_decay=1e-3)

    def step(train_batch: Batch, valid_batch: Batch) -> StepResult:
        (xt, yt), (xv, yv) = train_batch, valid_batch
        a_opt.zero_grad()
        F.cross_entropy(net(xv), yv).backward()
        a_opt.step()
        w_opt.zero_grad()
        logits = net(xt)
        loss = F.cross_entropy(logits, yt)
        loss.backward()
        nn.utils.clip_grad_norm_(net.weights(), 5)
        w_opt.step()
        n = torch.tensor(yt.numel())
        return StepResult(loss_sum=loss.detach() * n, correct=(logits.argmax(1) == yt).sum(), count=n)

    return step


def step_flops(name: str, args: argparse.Namespace, device: torch.device) -> float:
    """Convolution and matrix-product FLOPs of one step of ``name`` at ``args.batch_size``: counted
    on a fresh plain copy of the case at batch 2 (they grow linearly with the batch)."""
    small = argparse.Namespace(**{**vars(args), "batch_size": 2})
    torch.manual_seed(0)
    *_, step = build_step(name, small, device, plain=True)
    train_batch, valid_batch = _batches(small, device)
    with _FlopCount() as counter:
        step(train_batch, valid_batch)
    return counter.total * args.batch_size / small.batch_size


class _FlopCount(TorchDispatchMode):
    """FLOPs of the operators run inside: matrix products by ``torch.utils.flop_counter``'s
    formulas, convolutions by :func:`_conv_flops` (``FlopCounterMode``'s weight-gradient formula
    ignores ``groups``: a depthwise convolution's counted C times over). No attribution to
    modules, whose hooks made ``FlopCounterMode`` take 5-10x longer over a step."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(
        self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if packet in (torch.ops.aten.convolution, torch.ops.aten.convolution_backward):
            self.total += _conv_flops(packet, args, out)
        elif (formula := flop_registry.get(packet)) is not None:
            def shape(t: Any) -> Any:
                return t.shape if isinstance(t, torch.Tensor) else t

            self.total += formula(
                *tree_map(shape, args), **tree_map(shape, kwargs), out_val=tree_map(shape, out)
            )
        return out


def _conv_flops(packet: Any, args: tuple[Any, ...], out: Any) -> int:
    """2 x the multiply-adds of a convolution (``aten.convolution``), or of the gradients that
    ``aten.convolution_backward`` computes: the input's and the weight's take as many as the
    forward convolution each, ``numel(conv output) * numel(weight[0])`` (a weight is
    (C_out, C_in / groups, kh, kw); transposed: (C_in, C_out / groups, kh, kw), and the conv
    output is the input's side)."""
    if packet is torch.ops.aten.convolution:
        x, weight, transposed = args[0], args[1], args[6]
        return 2 * (x if transposed else out).numel() * weight[0].numel()
    grad_out, x, weight, transposed, mask = args[0], args[1], args[2], args[7], args[10]
    side = x if transposed else grad_out
    return 2 * side.numel() * weight[0].numel() * (int(mask[0]) + int(mask[1]))


def matmul_gflops(n: int = 2048, reps: int = 5) -> float:
    """The machine's float32 matrix-product rate, GFLOP/s: as naive_darts.py measures it (an
    n x n product, two untimed, ``reps`` timed)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e9


def _batches(args: argparse.Namespace, device: torch.device) -> tuple[Batch, Batch]:
    def batch() -> Batch:
        shape = (args.batch_size, DATASET.in_channels, DATASET.image_size, DATASET.image_size)
        x = torch.randn(shape, device=device)  # (B, C, H, W)
        y = torch.randint(0, DATASET.num_classes, (args.batch_size,), device=device)  # (B,)
        return x, y

    return batch(), batch()


def _measure(
    name: str, strategy_name: str, config: Any, overrides: dict[str, Any], args: argparse.Namespace,
    device: torch.device, step: _Step, *, profile: bool = True,
) -> dict[str, Any]:
    """Warm-up and timed calls of ``step`` on fixed random batches; throughput and peak memory;
    with ``profile``, one more call's busy time (:func:`profiled_step`)."""
    train_batch, valid_batch = _batches(args, device)

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

    # After the peak memory is read: the profiler's buffers are not the step's.
    busy, profiled = profiled_step(step, train_batch, valid_batch, device) if profile else (None, None)

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
        "busy_s": busy,
        "profiled_step_s": profiled,
        "busy_fraction": None if busy is None else busy / profiled,
        "busy_kind": "CUDA kernels" if device.type == "cuda" else "torch operators",
    }


def run_case_in_subprocess(name: str, args: argparse.Namespace, *, flops: bool = True) -> dict[str, Any]:
    """Run one case in a fresh interpreter (this script with ``--case``) and read its result
    (without counting its FLOPs unless ``flops``)."""
    command = [
        sys.executable, str(Path(__file__).resolve()), "--case", name,
        "--device", args.device, "--batch-size", str(args.batch_size),
        "--channels", str(args.channels), "--layers", str(args.layers), "--nodes", str(args.nodes),
        "--warmup", str(args.warmup), "--steps", str(args.steps), "--threads", str(args.threads),
        *(() if flops else ("--no-flops",)),
    ]
    proc = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # stderr passes through
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_PREFIX)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"case {name!r} failed (exit code {proc.returncode}):\n{proc.stdout}")
    return json.loads(lines[-1][len(_RESULT_PREFIX) :])


def pool_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One case's rows of several rounds as one: its timed steps pooled (mean, min and
    throughput over all of them), its peak memory the largest round's."""
    first = rounds[0]  # FLOPs counted and the busy time profiled in the first round only
    row = {**rounds[-1], **{key: first[key] for key in (
        "step_flops", "busy_s", "profiled_step_s", "busy_fraction")}}
    times = [t for r in rounds for t in r["step_seconds"]]
    mean = statistics.fmean(times)
    row.update(
        rounds=len(rounds), step_seconds=times, mean_step_s=mean, min_step_s=min(times),
        images_per_s=row["batch_size"] / mean,
        peak_memory_mib=max(r["peak_memory_mib"] for r in rounds),
    )
    return row


def add_ratios(rows: list[dict[str, Any]], peak_gflops: float) -> str:
    """Add throughput and memory ratios against the baseline row (``naive``, or the first row
    run without it) and the share of the matmul peak; return the baseline's name."""
    base = next((r for r in rows if r["case"] == NAIVE), rows[0])
    for row in rows:
        row["throughput_ratio"] = row["images_per_s"] / base["images_per_s"]
        mem = base["peak_memory_mib"]
        row["memory_ratio"] = row["peak_memory_mib"] / mem if mem > 0 else float("nan")
        row["gflops_per_s"] = row["step_flops"] / row["mean_step_s"] / 1e9
        row["peak_fraction"] = row["gflops_per_s"] / peak_gflops
    return str(base["case"])


def _number(value: float) -> str:
    """One decimal for large values, three significant digits for small ones (slow CPU runs)."""
    return f"{value:.1f}" if value >= 100 else f"{value:.3g}"


def format_table(rows: list[dict[str, Any]], baseline: str) -> str:
    """The rows as a fixed-width text table."""
    memory = "peak alloc MiB" if rows[0]["device"] == "cuda" else "peak RSS+ MiB"
    header = [
        "case", "strategy", "overrides", "s/step", "min s/step", "img/s", f"x {baseline}",
        "GFLOP/step", "% peak", "busy %", memory, "mem ratio",
    ]
    body = [
        [
            r["case"],
            r["strategy"],
            ",".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-",
            f"{r['mean_step_s']:.4f}",
            f"{r['min_step_s']:.4f}",
            _number(r["images_per_s"]),
            f"{r['throughput_ratio']:.2f}",
            f"{r['step_flops'] / 1e9:.1f}",
            f"{100 * r['peak_fraction']:.1f}",
            "-" if r["busy_fraction"] is None else f"{100 * r['busy_fraction']:.1f}",
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
    parser.add_argument("--cases", default=",".join(NAMES),
                        help=f"comma-separated cases, from: {', '.join(NAMES)}")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help=f"CPU threads of torch ({torch.get_num_threads()}, torch's default "
                             "here); 1 keeps a shared, busy machine from stalling the steps")
    parser.add_argument("--rounds", type=int, default=1,
                        help="run every case this many times, the cases taking turns (1)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # child mode: one case
    parser.add_argument("--no-flops", action="store_true", help=argparse.SUPPRESS)  # a later round's
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available")
    if args.steps is None:
        args.steps = 20 if args.device == "cuda" else 3
    if min(args.steps, args.batch_size, args.threads, args.rounds) < 1 or args.warmup < 0:
        parser.error("--steps, --batch-size, --threads and --rounds must be at least 1, --warmup at least 0")
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in [*args.cases, *([args.case] if args.case else [])] if c not in NAMES]
    if unknown or not args.cases:
        parser.error(f"unknown or no cases {unknown}; choose from: {', '.join(NAMES)}")
    runs = [args.case] if args.case is not None else args.cases  # a child runs its case only
    if NAIVE in runs and args.nodes != 4:
        parser.error("the naive baseline (naive_darts.py) has 4 nodes per cell: use --nodes 4 "
                     "or leave it out of --cases")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.case is not None:  # child: one case, result as one marked JSON line
        print(_RESULT_PREFIX + json.dumps(run_case(args.case, args)), flush=True)
        return

    if args.device == "cuda":
        hardware = torch.cuda.get_device_name()
    else:
        hardware = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    peak = matmul_gflops()
    print(
        f"supernet step: device={args.device} ({hardware}), torch {torch.__version__}, "
        f"batch={args.batch_size}, channels={args.channels}, layers={args.layers}, "
        f"nodes={args.nodes}, warmup={args.warmup}, steps={args.steps}, rounds={args.rounds}; "
        f"matmul peak {peak:.1f} GFLOP/s (float32, host)",
        flush=True,
    )
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in args.cases}
    for turn in range(args.rounds):
        for name in args.cases:
            print(f"  running {name}{f' (round {turn + 1})' if args.rounds > 1 else ''} ...", flush=True)
            if args.device == "cpu":
                runs[name].append(run_case_in_subprocess(name, args, flops=turn == 0))
            else:
                args.no_flops = turn > 0
                runs[name].append(run_case(name, args))
                gc.collect()
                torch.cuda.empty_cache()
    rows = [pool_rounds(runs[name]) for name in args.cases]
    baseline = add_ratios(rows, peak)
    print()
    print(format_table(rows, baseline))
    print(
        f"\nimg/s = batch_size / mean s/step; x {baseline} and mem ratio against {baseline}; "
        "% peak: convolution and matmul FLOPs per second over the matmul peak; busy %: the share of "
        f"a profiled step with {'a CUDA kernel' if args.device == 'cuda' else 'a torch operator'} "
        "running."
    )
    by_case = {r["case"]: r for r in rows}
    if "darts1" in by_case and "darts2" in by_case:
        ratio = by_case["darts2"]["mean_step_s"] / by_case["darts1"]["mean_step_s"]
        print(f"second order / first order step time: {ratio:.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        document = {"baseline": baseline, "matmul_gflops": peak, "rows": rows}
        args.json.write_text(json.dumps(document, indent=2) + "\n")
        print(f"rows written to {args.json}")


if __name__ == "__main__":
    main()
