"""Latency lookup tables (FBNet, Wu et al., CVPR 2019): the latency of every candidate
block at the input shape of each layer, measured once per device type, and the latency of an
architecture predicted as the sum of its blocks' entries (plus the fixed stem and head).

A :class:`LatencyTable` is plain JSON, one file per device type (``<dir>/<device>.json``), so one
measurement serves every search against that device; entries are keyed by block and shape (e.g.
``k3_e6:16x56->24/s2``), so tables of several layouts can share a file.

Timing follows the usual rules for small kernels: eval mode, ``torch.no_grad``, a fixed number of
intra-op threads, warm-up runs before the timed ones, the median of repeated runs, and on an
accelerator a synchronisation before reading the clock.

A space that supports tables provides ``latency_items(dataset)`` (key -> module and input shape)
and ``latency_keys(arch, dataset)`` (the keys that make up a network); see ``raynas.spaces.fbnet``.

Finding and reading tables needs no torch (the functions that time import it), so the command line
answers a job whose table is missing or corrupt before it loads torch.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from raynas.config import Check
from raynas.errors import ConfigError, read_user_text
from raynas.types import Architecture, DatasetInfo

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class TimingOptions:
    """How each entry is timed.

    Attributes:
        batch_size: Images per forward pass (1: on-device inference, as FBNet's tables).
        warmup: Untimed runs first (caches, allocator, lazy kernel selection).
        repeats: Timed runs; the entry is their median.
        threads: torch intra-op threads while timing (None: leave torch's setting).
    """

    batch_size: int = 1
    warmup: int = 10
    repeats: int = 30
    threads: int | None = 1

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.warmup < 0 or self.repeats < 1:
            raise ConfigError("latency timing needs batch_size >= 1, warmup >= 0 and repeats >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"latency timing threads must be >= 1, got {self.threads}")


@dataclass(frozen=True)
class LatencyTable:
    """Measured latencies of one device type, in milliseconds per forward pass, by key.

    Attributes:
        device: The device type the table is keyed by (a node type such as ``A100``, or ``cpu``).
        description: What was measured on (torch device, processor or GPU model, threads).
        entries: Milliseconds by key (``block:shape`` for candidates, ``stem:...``, ``head:...``).
        options: How the entries were timed.
        meta: Where and with what they were measured (host, torch version).
    """

    device: str
    description: str
    entries: dict[str, float]
    options: TimingOptions = field(default_factory=TimingOptions)
    meta: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        try:
            return self.entries[key]
        except KeyError:
            raise ConfigError(
                f"latency table {self.device!r} has no entry {key!r} ({len(self.entries)} entries, none "
                "for this block and shape); measure this layout with `raynas latency`"
            ) from None

    def predict(self, keys: Sequence[str]) -> float:
        """Predicted milliseconds of a network made of the parts ``keys``."""
        return float(sum(self[k] for k in keys))

    def merged(self, other: LatencyTable) -> LatencyTable:
        """This table with ``other``'s entries added (``other`` wins where both have a key)."""
        return LatencyTable(
            device=self.device, description=other.description, entries={**self.entries, **other.entries},
            options=other.options, meta=other.meta,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device, "description": self.description, "options": asdict(self.options),
            "meta": dict(self.meta), "entries": dict(sorted(self.entries.items())),
        }

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "latency table") -> LatencyTable:
        """Inverse of :meth:`to_dict`; a clear error names what is missing."""
        if not isinstance(data, dict) or not {"device", "entries"} <= set(data):
            raise ConfigError(f"{where} must be a JSON object with 'device' and 'entries'")
        entries = data["entries"]
        if not isinstance(entries, dict) or not all(
            isinstance(v, (int, float)) and v >= 0 for v in entries.values()
        ):
            raise ConfigError(f"{where}: 'entries' must map keys to non-negative milliseconds")
        return LatencyTable(
            device=str(data["device"]), description=str(data.get("description", "")),
            entries={str(k): float(v) for k, v in entries.items()},
            options=TimingOptions(**data.get("options", {})), meta=dict(data.get("meta", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the table as JSON, atomically (a temporary file replaced over ``path``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return path

    @staticmethod
    def load(path: str | Path) -> LatencyTable:
        """Read a table written by :meth:`save`."""
        path = Path(path)
        text = read_user_text(path, f"latency table file {str(path)!r}")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"latency table file {str(path)!r} is not valid JSON: {exc}") from None
        return LatencyTable.from_dict(data, f"latency table file {str(path)!r}")


LATENCY_DIR = "latency_tables"
"""Where device tables live unless a strategy's ``latency_dir`` says otherwise."""


def table_path(directory: str | Path, device: str) -> Path:
    """Where the table of ``device`` lives in a table directory: ``<directory>/<device>.json``."""
    if not device or any(c in device for c in "/\\") or device.startswith("."):
        raise ConfigError(f"a device name must be a plain file name, got {device!r}")
    return Path(directory) / f"{device}.json"


def find_table(reference: str, directory: str | Path) -> Path:
    """The table file that ``reference`` names: a path to a JSON file, or a device name in ``directory``.

    Raises:
        ConfigError: Neither exists; the message lists the devices ``directory`` has tables for.
    """
    path = Path(reference)
    if path.suffix == ".json" or path.is_file():
        if path.is_file():
            return path.resolve()
        raise ConfigError(f"latency table file {reference!r} does not exist")
    candidate = table_path(directory, reference)
    if candidate.is_file():
        return candidate.resolve()
    known = sorted(p.stem for p in Path(directory).glob("*.json")) if Path(directory).is_dir() else []
    raise ConfigError(
        f"no latency table for device {reference!r}: {str(candidate)!r} does not exist; tables in "
        f"{str(directory)!r}: {', '.join(known) or 'none'} (build one with `raynas latency`)"
    )


REQUIRED_TABLE = Check(
    "latency_table",
    "strategy.latency_table is required: a latency-table JSON file, or a device name with a table "
    "in strategy.latency_dir ({latency_dir!r})",
)
"""The check of a strategy that needs a latency table (its settings ``latency_table`` and
``latency_dir``), for its config's ``checks``."""


def required_table(reference: str, directory: str | Path) -> str:
    """A strategy's ``latency_table`` setting, made absolute (workers may run in another folder).
    A table not measured yet (as ``raynas latency --job`` is about to) is left as named, for the
    component to report when it loads it.

    Raises:
        ConfigError: ``reference`` is empty (:data:`REQUIRED_TABLE`).
    """
    if not reference:
        raise ConfigError(REQUIRED_TABLE.render({"latency_dir": str(directory)}))
    try:
        return str(find_table(reference, directory))
    except ConfigError:
        return reference


def check_named_table(strategy: Any) -> None:
    """Find and read the latency table a search job's ``strategy`` section names (its
    ``latency_table`` in its ``latency_dir``), if it names one: what ``raynas search`` does before
    it loads torch. ``raynas latency --job``, which measures the table, does not ask this.

    Raises:
        ConfigError: The table does not exist, is not JSON, or is not a table.
    """
    if not isinstance(strategy, dict) or not strategy.get("latency_table"):
        return
    directory = str(strategy.get("latency_dir", LATENCY_DIR))
    LatencyTable.load(find_table(str(strategy["latency_table"]), directory))


def describe_device(device: torch.device, threads: int | None) -> str:
    """A readable name of what a table is measured on."""
    import torch
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    cpu = _cpu_model() or platform.processor() or platform.machine()
    n = threads or torch.get_num_threads()
    return f"cpu: {cpu}, {n} thread{'s' if n != 1 else ''}"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _synchronize(device: torch.device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu" and hasattr(torch, "accelerator"):
        torch.accelerator.synchronize(device)


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    import torch
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def measure(
    module: nn.Module, input_shape: tuple[int, ...], *, device: torch.device | str = "cpu",
    options: TimingOptions | None = None,
) -> float:
    """Median milliseconds of one forward pass of ``module`` on a batch of ``input_shape``.

    Args:
        module: What to time (moved to ``device`` and put in eval mode).
        input_shape: One input without the batch dimension, e.g. ``(16, 56, 56)``.
        device: Where to run.
        options: Batch size, warm-up, repeats and threads.
    """
    import torch
    options = options or TimingOptions()
    device = torch.device(device)
    module = module.to(device).eval()
    x = torch.randn(options.batch_size, *input_shape, device=device)  # (B, C, H, W)
    times = []
    with _threads(options.threads), torch.no_grad():
        for _ in range(options.warmup):
            module(x)
        _synchronize(device)
        for _ in range(options.repeats):
            start = time.perf_counter()
            module(x)
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times)


def build_table(
    space: Any, dataset: DatasetInfo, *, device_name: str, device: torch.device | str = "cpu",
    options: TimingOptions | None = None,
) -> LatencyTable:
    """Measure every entry ``space`` needs for ``dataset``'s input shape on ``device``.

    Args:
        space: A space with ``latency_items`` (e.g. ``raynas.spaces.fbnet.FbnetSpace``).
        dataset: The input shape and classes the layers see.
        device_name: The device type the table is keyed by (``cpu``, ``A100``, a node type).
        device: The torch device to measure on.
        options: How to time each entry.
    """
    import torch
    options = options or TimingOptions()
    device = torch.device(device)
    entries = {
        key: measure(module, shape, device=device, options=options)
        for key, (module, shape) in space.latency_items(dataset).items()
    }
    meta = {"host": platform.node(), "torch": torch.__version__, "dataset": dataset.name}
    return LatencyTable(
        device=device_name, description=describe_device(device, options.threads), entries=entries,
        options=options, meta=meta,
    )


def predict_latency(table: LatencyTable, space: Any, arch: Architecture, dataset: DatasetInfo) -> float:
    """Predicted milliseconds of ``arch``'s network: the sum of its parts' table entries."""
    return table.predict(space.latency_keys(arch, dataset))


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of equal length >= 2")
    rx, ry = _ranks(x), _ranks(y)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    var = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return cov / var if var else float("nan")


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass(frozen=True)
class TableCheck:
    """How well a table's sums predict measured whole networks.

    Attributes:
        architectures: The sampled architectures, as their string forms.
        predicted_ms: The table's prediction of each.
        measured_ms: The measured latency of each whole network.
        spearman: Rank correlation of the two.
    """

    architectures: list[str]
    predicted_ms: list[float]
    measured_ms: list[float]
    spearman: float


def check_table(
    table: LatencyTable, space: Any, dataset: DatasetInfo, *, samples: int, seed: int = 0,
    device: torch.device | str = "cpu", options: TimingOptions | None = None, rounds: int = 3,
) -> TableCheck:
    """Measure ``samples`` random architectures' whole networks and compare with the table's sums.

    Args:
        table: The table to check (measured for ``space``'s layout and ``dataset``).
        space: The space to sample from and build with.
        dataset: Input shape and classes.
        samples: Architectures to measure.
        seed: Sampling seed.
        device: Where to measure (the table's device type).
        options: How to time (the table's own options by default).
        rounds: The networks are timed in this many interleaved rounds (``repeats / rounds``
            runs each); a network's latency is the median of its rounds.
    """
    rng = random.Random(seed)
    options = options or table.options
    archs = [space.sample(rng) for _ in range(samples)]
    predicted = [predict_latency(table, space, a, dataset) for a in archs]
    shape = dataset.image_shape
    networks = [space.build(a, dataset) for a in archs]
    # Interleaved rounds, so that a change of the machine's load mid-way touches every network.
    per_round = replace(options, repeats=max(1, options.repeats // rounds))
    timings: list[list[float]] = [[] for _ in archs]
    for _ in range(rounds):
        for times, net in zip(timings, networks, strict=True):
            times.append(measure(net, shape, device=device, options=per_round))
    measured = [statistics.median(t) for t in timings]
    return TableCheck([str(a) for a in archs], predicted, measured, spearman(predicted, measured))
