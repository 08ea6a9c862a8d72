"""NAS-Bench-201's own accuracies: a cell scored by looking it up in the benchmark's file instead
of training it, as the benchmark's papers and the searches run on it do (NASWOT's
``nasspace.py`` reads the chosen cell's accuracy so; the benchmark's REA, REINFORCE and random
search baselines are run on the table alone).

The file is the benchmark's release, ``NAS-Bench-201-v1_0-e61699.pth`` or
``NAS-Bench-201-v1_1-096897.pth`` (a ``torch.save`` of plain Python data): ``meta_archs``, the
15,625 cells' strings in their index order, and ``arch2infos``, for each index a ``less`` (12
epochs) and a ``full`` (200 epochs) record of its trainings: ``dataset_seed`` (the seeds each
dataset was trained with) and ``all_results``, one per ``(dataset, seed)``, holding ``epochs``,
``params`` (millions), ``flop`` (millions), ``train_acc1es`` and ``eval_acc1es`` (percentages, by
epoch, ``"<set>@<epoch>"``). The layout and what is read of it follow the benchmark's API
(``D-X-Y/NAS-Bench-201``, ``nas_201_api/api_utils.py``: ``ArchResults.get_metrics`` with
``iepoch=None, is_random=False``: each trial's last epoch, the mean over the trials).
NATS-Bench's topology search space is the same 15,625 cells, trained the same way; its release
(``D-X-Y/NATS-Bench``, ``nats_bench/api_topology.py`` and ``api_utils.py``) holds the same
``ArchResults`` records keyed by the schedule's epochs (``"12"``, ``"200"``), each a bz2-compressed
pickle: the whole benchmark in one file (``NATS-tss-v1_0-3ffb9.pickle.pbz2``), or the folder the
API's ``fast_mode`` reads (``NATS-tss-v1_0-3ffb9-simple``: ``meta.pickle.pbz2``, the cells'
strings, and one ``<index:06d>.pickle.pbz2`` per cell). Both are read as the NAS-Bench-201 release is.
"""

from __future__ import annotations

import bz2
import contextlib
import functools
import logging
import os
import pickle
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from raynas.config import Check, Rule, SearchConfig, check_rules
from raynas.data.mirror import locked, mirror, mirror_file
from raynas.data.pickled import PlainUnpickler, UnsafePickleError
from raynas.environment import TABLE_RELEASES, release_found
from raynas.errors import DataError
from raynas.evaluators.registry import EVALUATORS
from raynas.types import Architecture, EvalResult

log = logging.getLogger(__name__)

# Each training schedule's record, by its epochs: NAS-Bench-201's name, then NATS-Bench's (its hp).
SCHEDULE_KEYS = {200: ("full", "200"), 12: ("less", "12")}
# The benchmark's datasets and, for each, the sets its trials were evaluated on (api_utils.py's
# get_metrics docstring): cifar10-valid trains on CIFAR-10's training half, cifar10 on all of its
# training set; cifar100 and ImageNet16-120 split their test set into x-valid and x-test.
SETS: dict[str, tuple[str, ...]] = {
    "cifar10-valid": ("x-valid", "ori-test", "train"),
    "cifar10": ("ori-test", "train"),
    "cifar100": ("x-valid", "x-test", "ori-test", "train"),
    "ImageNet16-120": ("x-valid", "x-test", "ori-test", "train"),
}


@dataclass(frozen=True)
class Nb201TableConfig:
    """Where the benchmark is and what of it scores a cell.

    Attributes:
        path: The benchmark's file (``NAS-Bench-201-v1_0-e61699.pth`` or ``-v1_1-096897.pth``), or
            NATS-Bench's topology release (``NATS-tss-v1_0-3ffb9.pickle.pbz2``, or the folder
            ``NATS-tss-v1_0-3ffb9-simple``): a local path (``~`` expanded) or on ``s3://``, an
            object or a folder kept in the mirror cache (:mod:`raynas.data.mirror`) and downloaded
            again once it changes.
        dataset: ``cifar10-valid``, ``cifar10``, ``cifar100`` or ``ImageNet16-120``.
        setname: The set whose accuracy is the objective (``x-valid``, ``x-test``,
            ``ori-test`` or ``train``, as the dataset has them: the API's ``setname``); empty:
            ``x-valid``, or ``ori-test`` for ``cifar10``, which has no validation set.
        epochs: The training schedule read: 200 (the benchmark's) or 12.
    """

    path: Annotated[str, Rule(missing="the NAS-Bench-201 file (NAS-Bench-201-v1_0-e61699.pth)")] = ""
    dataset: Annotated[str, Rule(one_of=tuple(SETS))] = "cifar10-valid"
    setname: str = ""
    epochs: Annotated[int, Rule(one_of=tuple(SCHEDULE_KEYS))] = 200

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not setname or setname in sets[dataset]",
            "config key 'evaluator.setname' is {setname!r}, which NAS-Bench-201's {dataset} does not have; "
            "allowed: {join(sets[dataset])}",
            tables={"sets": {name: list(sets) for name, sets in SETS.items()}},
        ),
    )
    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space == 'nb201'",
            "evaluator 'nb201_table' reads NAS-Bench-201's accuracies of its cells: set space.name to "
            "'nb201' (got {space!r})",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "evaluator")

    @property
    def set_read(self) -> str:
        """The set read: ``setname``, else the dataset's validation set (``ori-test`` for cifar10)."""
        return self.setname or ("ori-test" if self.dataset == "cifar10" else "x-valid")


@dataclass(frozen=True)
class TableEntry:
    """What the benchmark holds of one cell for one dataset and schedule: accuracies as fractions,
    each the mean over the cell's trials of its last epoch."""

    index: int
    accuracy: dict[str, float]  # by set
    params: float  # the benchmark's network's parameters, millions
    flops: float  # its multiply-adds, millions
    seconds: float | None = None  # its recorded training and validation time (see _row)


# -- reading the release -------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch/serialization.py's MAGIC_NUMBER
NATS_SUFFIX = ".pickle.pbz2"  # api_utils.py's PICKLE_EXT


def _load_release(file: Path) -> Any:
    """What the release ``file`` holds: NATS-Bench's folder or bz2 pickle (:func:`_load_nats`),
    else :func:`_load_torch_file`'s."""
    if file.is_dir() or file.name.endswith(NATS_SUFFIX):
        return _load_nats(file)
    return _load_torch_file(file)


def _load_nats(file: Path) -> dict[str, Any]:
    """NATS-Bench's topology release as the API reads it: the one file's ``meta_archs`` and
    ``arch2infos``, or the ``fast_mode`` folder's ``meta.pickle.pbz2`` and each cell's file
    (``<index:06d>``, else ``<index>``, as ``reload`` looks for them; a cell with no file is one
    the benchmark did not evaluate)."""
    if not file.is_dir():
        return _bz2_pickle(file)
    archs = _bz2_pickle(file / f"meta{NATS_SUFFIX}")["meta_archs"]
    infos = {}
    for index in range(len(archs)):
        for name in (f"{index:06d}{NATS_SUFFIX}", f"{index}{NATS_SUFFIX}"):
            if (file / name).is_file():
                infos[index] = _bz2_pickle(file / name)
                break
    return {"meta_archs": archs, "arch2infos": infos}


def _bz2_pickle(file: Path) -> Any:
    """``api_utils.py``'s ``pickle_load``: a bz2-compressed pickle, here of plain data alone."""
    with bz2.open(file, "rb") as stream:
        return PlainUnpickler(stream).load()


def _load_torch_file(file: Path) -> Any:
    """The object ``torch.save`` wrote to ``file``, in either of its formats: a zip archive
    (``<name>/data.pkl``, torch >= 1.6), or the earlier stream of pickles (magic number, protocol,
    system info, the object, its storages' keys) in which the 2020 releases were written. Read by
    Python's own (C) unpickler allowed plain data alone (:class:`raynas.data.pickled.PlainUnpickler`):
    the release holds no tensors, and torch's ``weights_only`` unpickler, pure Python, read a
    29 MB one 4.6 times slower here."""
    if zipfile.is_zipfile(file):
        with zipfile.ZipFile(file) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if not names:
                raise ValueError("a zip archive without data.pkl")
            with archive.open(names[0]) as stream:
                return PlainUnpickler(stream).load()
    with open(file, "rb") as stream:
        if PlainUnpickler(stream).load() != _LEGACY_MAGIC:
            raise ValueError("not a file torch.save wrote")
        PlainUnpickler(stream).load()  # protocol version
        PlainUnpickler(stream).load()  # system info
        return PlainUnpickler(stream).load()


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _row(index: int, cell: str, epochs: int, record: dict[str, Any], dataset: str) -> dict[str, Any]:
    """One cell's row of the extract for one dataset and schedule, from its ``ArchResults`` record
    as ``get_metrics`` reads it: the mean over its trials of their last epoch, for the sets every
    trial was evaluated on (the API's ``get_more_info`` allows a record without ``ori-test``)."""
    seeds = record["dataset_seed"][dataset]
    trials = [record["all_results"][dataset, seed] for seed in seeds]
    row: dict[str, Any] = {
        "cell": cell, "epochs": epochs, "dataset": dataset, "index": index, "trials": len(trials),
        "params": _mean([float(t["params"]) for t in trials]),
        "flops": _mean([float(t["flop"]) for t in trials]),
    }
    seconds = [_seconds(t) for t in trials]
    if all(v is not None for v in seconds):
        row["seconds"] = _mean(seconds)  # type: ignore[arg-type]
    for name in SETS[dataset]:
        if name == "train":
            values = [t["train_acc1es"].get(t["epochs"] - 1) for t in trials]
        else:
            values = [t["eval_acc1es"].get(f"{name}@{t['epochs'] - 1}") for t in trials]
        if all(v is not None for v in values):
            row[f"acc:{name}"] = _mean([float(v) for v in values]) / 100
    return row


def _seconds(trial: dict[str, Any]) -> float | None:
    """What one trial's training cost as the benchmark's REA simulates it (``R_EA.py``'s
    ``train_and_eval``: ``train-all-time + valid-per-time`` of ``get_more_info``): every epoch's
    recorded training time, plus the validation set's evaluation time averaged over the epochs
    (``x-valid``; ``ori-test`` where the dataset has no validation set, as CIFAR-10's full
    training set). None where the record lacks an epoch's time."""
    epochs = range(trial["epochs"])
    train, evals = trial.get("train_times") or {}, trial.get("eval_times") or {}
    name = "x-valid" if f"x-valid@{trial['epochs'] - 1}" in evals else "ori-test"
    try:
        validating = sum(float(evals[f"{name}@{e}"]) for e in epochs) / len(epochs)
        return sum(float(train[e]) for e in epochs) + validating
    except (KeyError, TypeError):
        return None


def _extract(file: Path) -> list[dict[str, Any]]:
    """Every entry of the release, all datasets and both schedules, as rows (cell, epochs,
    dataset, index, trials, params, flops, one ``acc:<set>`` per set the trials have)."""
    data = _load_release(file)
    archs, infos = data["meta_archs"], data["arch2infos"]
    return [
        _row(index, str(arch), epochs, record, dataset)
        for index, arch in enumerate(archs) if index in infos  # a cell not in arch2infos: untrained
        for epochs, record in _schedules(infos[index]).items()
        for dataset in SETS if dataset in record["dataset_seed"]
    ]


def _schedules(info: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A cell's records by the epochs of their schedule, whichever names the release gives them."""
    return {epochs: info[key] for epochs, keys in SCHEDULE_KEYS.items() for key in keys if key in info}


def extract_path(file: Path) -> Path:
    """Where the release's extract is kept: beside it, ``<file>.raynas.parquet``."""
    return file.with_name(file.name + ".raynas.parquet")


# The extract's rows as _row writes them: an extract of another layout is made again.
EXTRACT_LAYOUT = 2


def _stamp(file: Path) -> str:
    """The release's size and modification time (a folder's: its meta file's, its own and how many
    files it holds), and the layout of the rows, which its extract is kept for."""
    info = file.stat()
    if file.is_dir():
        meta = (file / f"meta{NATS_SUFFIX}").stat()
        stat = f"{meta.st_size}:{meta.st_mtime_ns}:{info.st_mtime_ns}:{sum(1 for _ in file.iterdir())}"
    else:
        stat = f"{info.st_size}:{info.st_mtime_ns}"
    return f"{stat}:v{EXTRACT_LAYOUT}"


def _cached_rows(file: Path) -> list[dict[str, Any]]:
    """The release's rows: from its extract where one was written for this very file (its size
    and modification time), else read from the release (all of it in memory, as the benchmark's
    own API reads it) and then kept as the extract, written whole or not at all, where its folder
    can be written."""
    cache = extract_path(file)
    kept = _kept_rows(file, cache)
    if kept is not None:
        return kept
    with contextlib.ExitStack() as turn:  # processes of a node reading it at once: one reads it
        with contextlib.suppress(OSError):  # (a read-only folder: no extract, each reads the release)
            turn.enter_context(locked(cache.with_name(f".{cache.name}.lock")))
        kept = _kept_rows(file, cache)  # (written while this process waited its turn)
        if kept is not None:
            return kept
        log.info("reading %s whole (once: kept as %s)", file, cache.name)
        rows = _extract(file)
        _keep_rows(file, cache, rows)
    return rows


def _kept_rows(file: Path, cache: Path) -> list[dict[str, Any]] | None:
    """The rows of the extract ``cache`` if it was written for this very ``file``, else None."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if cache.is_file():
        try:
            kept = pq.read_table(cache)
            if (kept.schema.metadata or {}).get(b"raynas.release") == _stamp(file).encode():
                return kept.to_pylist()
        except (OSError, pa.ArrowException):
            pass  # an unreadable extract is made again
    return None


def _keep_rows(file: Path, cache: Path, rows: list[dict[str, Any]]) -> None:
    """Write ``rows`` as the extract ``cache`` of ``file``, whole or not at all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if rows:
        columns = sorted({key for row in rows for key in row})  # each dataset has its own sets
        table = pa.Table.from_pylist([{c: row.get(c) for c in columns} for row in rows])
        table = table.replace_schema_metadata({"raynas.release": _stamp(file)})
        partial = cache.with_name(f"{cache.name}.{os.getpid()}.part")
        try:
            pq.write_table(table, partial)
            os.replace(partial, cache)
        except OSError:  # a read-only folder: read the release again next time
            partial.unlink(missing_ok=True)


def _local_release(path: str, setting: str) -> Path:
    """The release at ``path`` on this machine: a local path (``~`` expanded), or an ``s3://``
    object or folder brought into the mirror cache."""
    if not path.startswith("s3://"):
        return Path(path).expanduser()
    try:
        return mirror_file(path, setting=setting)
    except DataError:  # no object of that name: a folder (NATS-Bench's), or nothing
        try:
            return mirror(path)
        except DataError:
            raise DataError(f"{setting} {path!r}: no such object or folder ({TABLE_RELEASES})") from None


@functools.lru_cache(maxsize=2)
def read_table(
    path: str, dataset: str, epochs: int, *, setting: str = "evaluator.path"
) -> dict[str, TableEntry]:
    """The benchmark's entries for ``dataset`` and the ``epochs`` schedule, by cell string, read
    once per process (from the release's extract, :func:`extract_path`, after the first time).
    ``setting`` names the job's key that gave ``path``, for the line that says it is missing.

    Raises:
        DataError: The file is missing or not a NAS-Bench-201 release.
    """
    file = _local_release(path, setting)
    if not release_found(str(file)):
        raise DataError(f"NAS-Bench-201 file {path} not found ({setting}: {TABLE_RELEASES})")
    try:
        rows = _cached_rows(file)
    except UnsafePickleError as exc:
        raise DataError(
            f"{path} is not a NAS-Bench-201 release: it names {exc.what!r}, which would import or run "
            "code, so it was not loaded (the release holds only dicts, lists, strings and numbers)"
        ) from None
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, EOFError, OSError,
            zipfile.BadZipFile, pickle.UnpicklingError) as exc:  # (bz2: OSError, "Invalid data stream")
        said = (str(exc).strip().splitlines() or [""])[0][:160]  # one line, whatever was found
        raise DataError(
            f"{path} is not a NAS-Bench-201 release readable here ({type(exc).__name__}: {said}); "
            f"expected {TABLE_RELEASES}"
        ) from None
    table = {
        row["cell"]: TableEntry(
            index=row["index"], params=row["params"], flops=row["flops"], seconds=row.get("seconds"),
            accuracy={
                name: row[f"acc:{name}"] for name in SETS[dataset] if row.get(f"acc:{name}") is not None
            },
        )
        for row in rows if row["dataset"] == dataset and row["epochs"] == epochs
    }
    if not table:
        raise DataError(f"{path} holds no cell trained on {dataset} for {epochs} epochs")
    return table


def entry_of(table: dict[str, TableEntry], arch: Architecture, *, path: str, dataset: str) -> TableEntry:
    """``arch``'s entry in ``table`` (read from ``path`` for ``dataset``).

    Raises:
        DataError: The table has no entry for it.
    """
    entry = table.get(str(arch))
    if entry is None:
        raise DataError(f"{path} has no {dataset} entry for the cell {arch}")
    return entry


def bench_metrics(entry: TableEntry) -> dict[str, float]:
    """The benchmark's accuracy of a cell on each set of its dataset (``bench_<set>_acc``, the
    set's dashes as underscores: ``bench_x_valid_acc``), the cell's index in the benchmark
    (``bench_index``) and, where recorded, what training and validating it took
    (``bench_seconds``: :func:`_seconds`, the mean over its trials), as a candidate records them."""
    return {
        **{f"bench_{name.replace('-', '_')}_acc": acc for name, acc in entry.accuracy.items()},
        "bench_index": float(entry.index),
        **({"bench_seconds": entry.seconds} if entry.seconds is not None else {}),
    }


@EVALUATORS.register(
    "nb201_table", config=Nb201TableConfig,
    traits={"table": {"expr": "'cifar10' if dataset in ('cifar10-valid', 'cifar10') else dataset"}},
)
class Nb201TableEvaluator:
    """Scores each NAS-Bench-201 cell with the benchmark's accuracy of it, without training.

    Args:
        config: The file, dataset, set and schedule.
        search: The search job (its space must be ``nb201``).
    """

    def __init__(self, config: Nb201TableConfig, *, search: SearchConfig) -> None:
        self.config = config
        self.search = search
        self.table = read_table(config.path, config.dataset, config.epochs)

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """``arch``'s accuracy on the set read (``valid_acc``), on every set of the dataset
        (:func:`bench_metrics`), and the benchmark's network's ``params`` and ``flops`` (counts,
        from the file's millions); ``budget`` is the schedule's epochs.

        Raises:
            DataError: The file has no entry for ``arch``.
        """
        start = time.perf_counter()
        cfg = self.config
        entry = entry_of(self.table, arch, path=cfg.path, dataset=cfg.dataset)
        if cfg.set_read not in entry.accuracy:
            raise DataError(
                f"{cfg.path} has no {cfg.set_read} accuracy of {cfg.dataset} after {cfg.epochs} epochs "
                f"(it has {', '.join(entry.accuracy)}): set evaluator.setname to one of them"
            )
        metrics = {
            "valid_acc": entry.accuracy[cfg.set_read], **bench_metrics(entry),
            "params": entry.params * 1e6, "flops": entry.flops * 1e6,
        }
        return EvalResult(
            architecture=arch, metrics=metrics, trial_id=trial_id, budget=float(cfg.epochs),
            seconds=time.perf_counter() - start,
        )
