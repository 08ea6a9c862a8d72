"""The ``nb201_table`` evaluator: a NAS-Bench-201 cell scored with the benchmark's own accuracy,
read from a file laid out as the benchmark's release (``tests/fixtures.py``'s
``write_nb201_table``), as ``nas_201_api``'s ``ArchResults.get_metrics(dataset, setname)`` reads it:
each trial's last epoch, the mean over the cell's trials, here recomputed from the fixture's own
formula (``nb201_accuracy``)."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from raynas.data import dataset_info
from raynas.data.mirror import locked
from raynas.errors import ConfigError, DataError
from raynas.evaluators import EVALUATORS, nb201_table
from raynas.evaluators.nb201_table import extract_path, read_table
from raynas.runs import run_search
from raynas.runs.jobs import parse_job
from raynas.spaces import SPACES
from raynas.spaces.nb201 import Nb201Arch
from raynas.strategies import STRATEGIES
from raynas.tracking.results import ResultsStore
from raynas.types import Architecture
from tests.conftest import BIN, mlflow_store
from tests.fixtures import (
    NB201_SEEDS,
    every_nb201_cell,
    nb201_accuracy,
    write_nats_tss,
    write_nb201_table,
    write_whole_nb201_table,
)

SPACE = SPACES.create("nb201")
CELLS = [str(SPACE.sample(random.Random(seed))) for seed in range(6)]


def table_job(tmp_path: Path, path: Path, **evaluator: Any) -> dict[str, Any]:
    return {
        "name": "table", "seed": 0,
        "space": {"name": "nb201"},
        "strategy": {"name": "random", "evaluations": 4},
        "evaluator": {"name": "nb201_table", "path": str(path), **evaluator},  # (no data: none read)
        "execution": {"backend": "local"},
        "tracking": {"experiment": "tests", "tracking_uri": mlflow_store(tmp_path),
                     "output_dir": str(tmp_path / "runs"), "pictures": False},
    }


def evaluator(tmp_path: Path, path: Path, **settings: Any) -> Any:
    job = parse_job(table_job(tmp_path, path, **settings))
    return EVALUATORS.create("nb201_table", job.evaluator.config, search=job)


def expected(index: int, dataset: str, setname: str, epochs: int = 200) -> float:
    """The API's mean over the cell's trials of its last epoch, as a fraction."""
    seeds = NB201_SEEDS[dataset]
    total = sum(nb201_accuracy(index, dataset, s, setname, epochs - 1, epochs) for s in seeds)
    return total / len(seeds) / 100


def test_a_cell_scores_the_benchmarks_mean_over_its_trials_of_its_last_epoch(tmp_path: Path) -> None:
    path = write_nb201_table(tmp_path / "nb201.pth", CELLS)
    scorer = evaluator(tmp_path, path, dataset="cifar100", setname="x-test")
    result = scorer.evaluate(_cell(2), trial_id="t")
    assert result.objective == "valid_acc" and result.trial_id == "t"
    assert result.score == pytest.approx(expected(2, "cifar100", "x-test"), abs=1e-12)
    for setname in ("x-valid", "x-test", "ori-test", "train"):  # every set of the dataset, too
        key = f"bench_{setname.replace('-', '_')}_acc"
        assert result.metrics[key] == pytest.approx(expected(2, "cifar100", setname), abs=1e-12)
    assert result.metrics["params"] == pytest.approx((0.1 + 2 / 100) * 1e6)  # the file's millions
    assert result.metrics["flops"] == pytest.approx(12.0 * 1e6)
    assert result.metrics["bench_index"] == 2 and result.budget == 200


def _cell(index: int) -> Nb201Arch:
    return Nb201Arch.parse(CELLS[index])


def test_the_12_epoch_schedule_and_each_datasets_default_set_are_read(tmp_path: Path) -> None:
    path = write_nb201_table(tmp_path / "nb201.pth", CELLS)
    cell = _cell(4)
    # cifar10-valid: its validation set; cifar10 has none: its test set (api.py's print_information).
    assert evaluator(tmp_path, path).evaluate(cell).score == pytest.approx(
        expected(4, "cifar10-valid", "x-valid"))
    assert evaluator(tmp_path, path, dataset="cifar10").evaluate(cell).score == pytest.approx(
        expected(4, "cifar10", "ori-test"))
    short = evaluator(tmp_path, path, epochs=12).evaluate(cell)  # the release's 'less' record
    assert short.score == pytest.approx(expected(4, "cifar10-valid", "x-valid", epochs=12))
    assert short.budget == 12
    # A set the record was not evaluated on (the fixture's 12-epoch one has x-valid alone, as the
    # API's get_more_info allows): one line naming those it has.
    assert {k for k in short.metrics if k.startswith("bench_") and k.endswith("_acc")} == {
        "bench_x_valid_acc", "bench_train_acc"}
    with pytest.raises(DataError, match="has no ori-test accuracy of cifar10-valid after 12 epochs "
                                        r"\(it has x-valid, train\)"):
        evaluator(tmp_path, path, epochs=12, setname="ori-test").evaluate(cell)
    with pytest.raises(DataError, match="no cell trained on cifar100 for 12 epochs"):
        read_table(str(path), "cifar100", 12)


def test_a_missing_file_a_corrupt_one_and_a_cell_it_lacks_are_each_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "none.pth"
    with pytest.raises(DataError, match=f"NAS-Bench-201 file {missing} not found"):
        evaluator(tmp_path, missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    with pytest.raises(DataError) as info:
        evaluator(tmp_path, corrupt)
    assert f"{corrupt} is not a NAS-Bench-201 release" in str(info.value) and "\n" not in str(info.value)
    path = write_nb201_table(tmp_path / "nb201.pth", CELLS[:2])
    with pytest.raises(DataError, match="has no cifar10-valid entry for the cell"):
        evaluator(tmp_path, path).evaluate(_cell(3))


def test_a_set_the_dataset_lacks_and_another_space_are_refused_naming_what_is_allowed(tmp_path: Path) -> None:
    path = tmp_path / "nb201.pth"
    with pytest.raises(ConfigError, match=r"'evaluator\.setname' is 'x-valid'.*allowed: ori-test, train"):
        parse_job(table_job(tmp_path, path, dataset="cifar10", setname="x-valid"))
    allowed = "evaluator.dataset must be one of cifar10-valid, cifar10, cifar100, ImageNet16-120"
    with pytest.raises(ConfigError, match=re.escape(allowed)):
        parse_job(table_job(tmp_path, path, dataset="imagenet"))
    job = table_job(tmp_path, path)
    job["space"] = {"name": "darts"}
    with pytest.raises(ConfigError, match="evaluator 'nb201_table' reads NAS-Bench-201's accuracies"):
        parse_job(job)


def test_a_table_search_without_data_is_recorded_on_the_tables_dataset(tmp_path: Path) -> None:
    """A table's search names no dataset: its data is the table's (cifar100 here, whose images
    are nowhere on this machine: the search opens none), recorded as the run's dataset, and its
    networks, counted for the parameters, are built for that dataset's 100 classes."""
    job = parse_job(table_job(tmp_path, tmp_path / "nb201.pth", dataset="cifar100"))
    drawn = STRATEGIES.create("random", job.strategy.config, space=SPACE, seed=job.seed)
    cells = [str(drawn.propose()) for _ in range(4)]  # the search's own draws
    write_nb201_table(tmp_path / "nb201.pth", cells, datasets=("cifar100",))
    assert job.data.name == "cifar100" and job.data.config is None
    result = run_search(job, echo=lambda _: None)
    run = MlflowClient(mlflow_store(tmp_path)).get_run(result.run_id)
    assert run.data.tags["raynas.dataset"] == "cifar100" and run.data.params["data.name"] == "cifar100"

    def counted(dataset: str) -> int:
        return sum(p.numel() for p in SPACE.build(result.architecture, dataset_info(dataset)).parameters())

    assert result.params == counted("cifar100") > counted("cifar10")  # a classifier of 100 classes


def test_a_table_on_a_path_from_the_home_folder_reads_as_its_full_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_nb201_table(tmp_path / "nb201.pth", CELLS)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert read_table("~/nb201.pth", "cifar10-valid", 200) == read_table(str(tmp_path / "nb201.pth"),
                                                                         "cifar10-valid", 200)


def test_a_table_searchs_data_is_the_tables_and_retraining_needs_its_path(tmp_path: Path) -> None:
    """A data section given to a table's search names the dataset the table recorded (else the
    parameters counted and the run's dataset would be another's); ``final`` retrains, which
    reads images, so it needs the dataset's path: each one line, what to write instead."""
    path = tmp_path / "nb201.pth"
    job = table_job(tmp_path, path, dataset="cifar10-valid")
    job["data"] = {"name": "digits"}
    with pytest.raises(ConfigError, match=r"^config key 'data.name' is 'digits', but evaluator 'nb201_table' "
                                          r"scores candidates by what its table recorded on 'cifar10'"):
        parse_job(job)
    job["data"] = {"name": "cifar10", "path": str(tmp_path)}
    assert parse_job(job).data.config.path == str(tmp_path)
    job = table_job(tmp_path, path)
    job["final"] = {"top": 2}
    retraining = r"^config key 'final.top': retraining .* dataset.* its name \('cifar10'\) and path$"
    with pytest.raises(ConfigError, match=retraining):
        parse_job(job)
    del job["evaluator"], job["final"]
    job["strategy"] = "darts"  # (an evaluator's absence is then no error of its own)
    with pytest.raises(ConfigError, match=r"^config section 'data' is missing; it needs a 'name', one of: "):
        parse_job(job)


def test_both_of_torchs_formats_read_as_the_same_table(tmp_path: Path) -> None:
    """The 2020 releases are in torch's format before its zip archives; a file saved since, in
    the zip one: both read, to the same entries."""
    legacy = write_nb201_table(tmp_path / "legacy.pth", CELLS, legacy=True)
    archive = write_nb201_table(tmp_path / "archive.pth", CELLS)
    assert not zipfile.is_zipfile(legacy) and zipfile.is_zipfile(archive)
    for dataset in NB201_SEEDS:
        assert read_table(str(legacy), dataset, 200) == read_table(str(archive), dataset, 200)
        assert len(read_table(str(legacy), dataset, 200)) == len(CELLS)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_numbers_saved_as_numpy_scalars_read_as_the_same_table(legacy: bool, tmp_path: Path) -> None:
    """A release whose numbers are NumPy scalars (what np.mean returns) reads as one of floats."""
    import numpy as np

    floats = write_nb201_table(tmp_path / "floats.pth", CELLS[:2], legacy=legacy)
    scalars = write_nb201_table(tmp_path / "numpy.pth", CELLS[:2], legacy=legacy, number=np.float64)
    assert read_table(str(scalars), "cifar100", 200) == read_table(str(floats), "cifar100", 200)


class _Call:
    """Pickles as a call of ``os.system``: what a file that is not plain data can hold."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_a_file_holding_more_than_plain_data_is_refused_without_running_it(
    legacy: bool, tmp_path: Path
) -> None:
    import torch

    marker = tmp_path / "ran"
    path = tmp_path / "nb201.pth"
    torch.save({"meta_archs": [CELLS[0]], "arch2infos": _Call(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DataError) as info:
        read_table(str(path), "cifar10-valid", 200)
    assert "is not a NAS-Bench-201 release: it names 'posix.system', which would import or run code" in str(
        info.value) and not marker.exists()
    torch.save({"meta_archs": [CELLS[0]], "arch2infos": {0: torch.zeros(2)}}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(DataError, match=r"it names 'torch\._utils\._rebuild_tensor"):  # a tensor
        read_table(str(path), "cifar10-valid", 200)


@pytest.mark.parametrize("folder", [True, False], ids=["fast_mode_folder", "one_file"])
def test_nats_bench_topology_releases_read_as_nas_bench_201s(folder: bool, tmp_path: Path) -> None:
    """NATS-Bench's topology release (the same cells; records keyed by their hp, "12" and "200";
    bz2-compressed pickles), as its API's fast_mode folder or its one file: each cell scores the
    mean over its trials of its last epoch, on either schedule (NATS-Bench trains every dataset
    for 12 epochs too, each evaluated on its sets), by the evaluator as by ``read_table``."""
    name = "NATS-tss-v1_0-3ffb9-simple" if folder else "NATS-tss-v1_0-3ffb9.pickle.pbz2"
    path = write_nats_tss(tmp_path / name, CELLS, folder=folder)
    for dataset, setname, epochs in (("cifar100", "x-test", 200), ("ImageNet16-120", "x-valid", 12),
                                     ("cifar10", "ori-test", 12)):
        table = read_table(str(path), dataset, epochs)
        assert sorted(table) == sorted(CELLS)
        for index, cell in enumerate(CELLS):
            assert table[cell].index == index
            assert table[cell].accuracy[setname] == pytest.approx(expected(index, dataset, setname, epochs))
    scored = evaluator(tmp_path, path, dataset="cifar100", epochs=12).evaluate(_cell(2))
    assert scored.score == pytest.approx(expected(2, "cifar100", "x-valid", epochs=12))
    ori_test = expected(2, "cifar100", "ori-test", epochs=12)
    assert scored.metrics["bench_ori_test_acc"] == pytest.approx(ori_test)
    read_table.cache_clear()


def test_a_nats_bench_folder_lacking_a_cells_file_and_one_naming_code_are_each_one_line(
    tmp_path: Path,
) -> None:
    """A cell whose file the folder lacks is one the benchmark did not evaluate (the API's
    ``evaluated_indexes``): asking for it is one line. A file of the folder that names code to
    run is refused before anything it names is imported."""
    import bz2
    import pickle

    path = write_nats_tss(tmp_path / "NATS-tss-v1_0-3ffb9-simple", CELLS, folder=True)
    (path / "000003.pickle.pbz2").unlink()
    table = read_table(str(path), "cifar10-valid", 200)
    assert sorted(table) == sorted(CELLS[:3] + CELLS[4:])
    with pytest.raises(DataError, match=r"has no cifar10-valid entry for the cell \|"):
        evaluator(tmp_path, path).evaluate(_cell(3))
    marker = tmp_path / "ran"
    with bz2.BZ2File(path / "000004.pickle.pbz2", "wb") as out:
        pickle.dump({"200": _Call(marker)}, out, protocol=4)
    read_table.cache_clear()
    extract_path(path).unlink()
    with pytest.raises(DataError, match=r"is not a NAS-Bench-201 release: it names 'posix.system'"):
        read_table(str(path), "cifar10-valid", 200)
    assert not marker.exists()
    read_table.cache_clear()


def test_the_extract_beside_the_release_is_read_in_its_place_until_the_release_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_nb201_table(tmp_path / "nb201.pth", CELLS[:3])
    first = read_table(str(path), "cifar100", 200)
    assert extract_path(path).is_file() and not list(tmp_path.glob("*.part"))
    read_table.cache_clear()

    def unread(file: Path) -> Any:
        raise AssertionError(f"{file} read again")

    with monkeypatch.context() as patch:
        patch.setattr(nb201_table, "_load_release", unread)
        assert read_table(str(path), "cifar100", 200) == first  # from the extract
        read_table.cache_clear()
    write_nb201_table(path, CELLS[3:])  # a new release in the same place
    assert set(read_table(str(path), "cifar100", 200)) == set(CELLS[3:])
    read_table.cache_clear()
    # A folder that cannot be written keeps no extract (and no part of one): each read reads the release.
    extract_path(path).unlink()

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise PermissionError("read-only folder")

    monkeypatch.setattr(pq, "write_table", refuse)
    assert set(read_table(str(path), "cifar100", 200)) == set(CELLS[3:])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["nb201.pth"]
    read_table.cache_clear()


def test_processes_first_reading_a_release_at_once_read_it_once(tmp_path: Path) -> None:
    """Ray actors of a node that read the release at the same moment take turns (a lock beside
    it): one reads the release whole and keeps the extract, the other reads the extract. This
    test holds the lock until both are ready to read, so both ask at once."""
    path = write_nb201_table(tmp_path / "nb201.pth", CELLS)
    script = (
        "import logging, sys; logging.basicConfig(level=logging.INFO, format='%(message)s'); "
        "from raynas.evaluators.nb201_table import read_table; print('ready', flush=True); "
        "print(len(read_table(sys.argv[1], 'cifar10-valid', 200)))"
    )
    with locked(extract_path(path).with_name(f".{extract_path(path).name}.lock")):
        procs = [subprocess.Popen([sys.executable, "-c", script, str(path)], text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        assert [p.stdout.readline().strip() for p in procs] == ["ready", "ready"]  # type: ignore[union-attr]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert [out.strip() for out, _ in outputs] == [str(len(CELLS))] * 2
    reads = [line for _, err in outputs for line in err.splitlines() if line.startswith("reading ")]
    assert reads == [f"reading {path} whole (once: kept as {extract_path(path).name})"], outputs


@pytest.fixture(scope="module")
def whole_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The benchmark's file of all 15,625 cells, trained on cifar10-valid and cifar10."""
    return write_whole_nb201_table(tmp_path_factory.mktemp("nb201") / "nb201.pth")


def test_an_evolution_search_on_the_table_answers_the_best_cell_it_evaluated(
    tmp_path: Path, whole_table: Path
) -> None:
    """Regularized evolution (the benchmark paper's REA baseline) over the whole table: every
    candidate is recorded with the table's accuracy, and the answer is the best of them."""
    cells = every_nb201_cell()
    assert len(cells) == 15625 and len(set(cells)) == 15625
    job = table_job(tmp_path, whole_table)
    job["strategy"] = {"name": "evolution", "population_size": 6, "sample_size": 3, "evaluations": 20}
    result = run_search(parse_job(job), echo=lambda _: None)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert len(children) == 20
    index = {cell: i for i, cell in enumerate(cells)}
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) == 20
    for _, row in rows.iterrows():
        cell = str(Architecture.from_json(row["architecture"]))
        assert row["metric.valid_acc"] == pytest.approx(expected(index[cell], "cifar10-valid", "x-valid"))
    assert result.metrics["valid_acc"] == max(c.data.metrics["valid_acc"] for c in children)
    assert result.metrics["valid_acc"] == pytest.approx(rows["metric.valid_acc"].max())


def recorded_seconds(index: int, dataset: str = "cifar10-valid", epochs: int = 12) -> float:
    """The fixture's cost of a cell as R_EA.py reads it (train-all-time + valid-per-time): every
    epoch's training time (10 + index % 7 s) plus one epoch's x-valid evaluation (1 + seed % 3 s,
    the same every epoch), the mean over the cell's trials."""
    seeds = NB201_SEEDS[dataset]
    return sum(epochs * (10.0 + index % 7) + (1.0 + s % 3) for s in seeds) / len(seeds)


@pytest.mark.parametrize("budget", [1.0, 2000.0])
def test_rea_spends_the_benchmarks_recorded_training_time_as_r_ea_py_does(
    budget: float, tmp_path: Path, whole_table: Path
) -> None:
    """R_EA.py's regularized_evolution with a time budget: each candidate costs its recorded
    training and validation time (bench_seconds); the first population is evaluated whole, even
    past the budget; then the first child whose cost would pass it ends the search, and is not
    kept: the answer is chosen among the others."""
    from raynas.strategies.sampling.evolution import EvolutionConfig

    scorer = evaluator(tmp_path, whole_table, epochs=12)
    index = {cell: i for i, cell in enumerate(every_nb201_cell())}
    config = EvolutionConfig(population_size=4, sample_size=2, evaluations=1000, time_budget=budget)
    strategy = STRATEGIES.create("evolution", config, space=SPACE, seed=0)
    told = []
    while not strategy.done:
        arch = strategy.ask()
        assert arch is not None
        told.append(scorer.evaluate(arch, trial_id=str(len(told))))
        strategy.tell(told[-1])
    costs = [recorded_seconds(index[str(r.architecture)]) for r in told]
    assert [r.metrics["bench_seconds"] for r in told] == pytest.approx(costs)
    kept = len(strategy.history)
    assert strategy.history == told[:kept] and len(told) == kept + 1  # the last child left out
    assert strategy.spent == pytest.approx(sum(costs[:kept]))
    assert sum(costs) > budget
    if budget == 1.0:
        assert kept == 4  # the first population, whole
    else:
        assert sum(costs[:kept]) <= budget and kept > 4
    assert strategy.best() in strategy.history and strategy.ask() is None


def test_rea_with_a_time_budget_resumed_midway_spends_and_stops_as_one_run(
    tmp_path: Path, whole_table: Path
) -> None:
    """The budget spent and whether it ran out are part of the strategy's state: a search saved
    after any result and continued asks and keeps what one uninterrupted run does."""
    from raynas.strategies.sampling.evolution import EvolutionConfig

    scorer = evaluator(tmp_path, whole_table, epochs=12)
    config = EvolutionConfig(population_size=4, sample_size=2, evaluations=1000, time_budget=1500.0)

    def run(strategy: Any, stop_after: int | None = None) -> list[Any]:
        told: list[Any] = []
        while not strategy.done and (stop_after is None or len(told) < stop_after):
            arch = strategy.ask()
            told.append(scorer.evaluate(arch, trial_id=f"{len(strategy.history)}-{len(told)}"))
            strategy.tell(told[-1])
        return told

    whole = STRATEGIES.create("evolution", config, space=SPACE, seed=3)
    run(whole)
    for stop in (3, len(whole.history), len(whole.history) + 1):  # in the population, at the end, past it
        first = STRATEGIES.create("evolution", config, space=SPACE, seed=3)
        run(first, stop)
        second = STRATEGIES.create("evolution", config, space=SPACE, seed=99)
        second.load_state_dict(first.state_dict())
        run(second)
        assert [r.architecture for r in second.history] == [r.architecture for r in whole.history], stop
        assert second.spent == whole.spent and second.over_budget and second.ask() is None


def test_raynas_search_with_a_missing_table_exits_2_in_one_line(tmp_path: Path) -> None:
    """A release that is not there (the table a search scores by, or the benchmark a NASWOT search
    reads) is one line, exit 2, answered before torch, Ray or MLflow is imported."""
    from tests.conftest import answers_without_heavy_imports

    job = table_job(tmp_path, tmp_path / "NAS-Bench-201-v1_0-e61699.pth")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    done = subprocess.run([str(BIN / "raynas"), "search", str(tmp_path / "job.yaml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "NAS-Bench-201-v1_0-e61699.pth not found" in lines[0], done.stderr
    naswot = {**job, "data": {"name": "digits"}, "evaluator": {
        "name": "training_free", "benchmark": str(tmp_path / "NATS-tss-v1_0-3ffb9-simple")}}
    (tmp_path / "naswot.yaml").write_text(yaml.safe_dump(naswot))
    answers = answers_without_heavy_imports([["search", str(tmp_path / "job.yaml")],
                                             ["search", str(tmp_path / "naswot.yaml")]])
    for (status, err), key, name in zip(answers, ("path", "benchmark"), (
        "NAS-Bench-201-v1_0-e61699.pth", "NATS-tss-v1_0-3ffb9-simple"
    ), strict=True):
        assert status == 2 and err.count("\n") == 1, err
        assert f"{name} not found (evaluator.{key}: the benchmark's NAS-Bench-201-v1_0-e61699.pth" in err


def test_a_naswot_search_records_each_candidates_benchmark_accuracy(
    tmp_path: Path, whole_table: Path
) -> None:
    """NASWOT's Algorithm 1 with ``evaluator.benchmark``: each candidate scored at initialisation
    also records the benchmark's accuracies of its cell (search.py's ``ori-test`` of cifar10 among
    them), and the answer, the highest score, carries its own."""
    job = table_job(tmp_path, whole_table)
    job["evaluator"] = {"name": "training_free", "proxy": "naswot", "batch_size": 8, "channels": 4,
                        "layers": 1, "benchmark": str(whole_table)}
    job["data"] = {"name": "digits", "batch_size": 16, "limit": 64}
    job["final"] = {"top": 0}
    result = run_search(parse_job(job), echo=lambda _: None)
    index = {cell: i for i, cell in enumerate(every_nb201_cell())}
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) == 4
    for _, row in rows.iterrows():
        cell = str(Architecture.from_json(row["architecture"]))
        assert row["metric.bench_ori_test_acc"] == pytest.approx(expected(index[cell], "cifar10", "ori-test"))
        assert row["metric.bench_index"] == index[cell]
    best = rows.loc[rows["metric.naswot"].idxmax()]
    assert result.architecture == Architecture.from_json(best["architecture"])
    assert result.metrics["bench_ori_test_acc"] == pytest.approx(best["metric.bench_ori_test_acc"])


def test_a_naswot_search_reads_nats_benchs_release_as_its_benchmark(tmp_path: Path) -> None:
    """``evaluator.benchmark`` names NATS-Bench's topology release (its one file here): each
    candidate records its cell's accuracies from it, indexed as NATS-Bench indexes the cells."""
    job = table_job(tmp_path, tmp_path / "nats")
    job["evaluator"] = {"name": "training_free", "proxy": "naswot", "batch_size": 8, "channels": 4,
                        "layers": 1, "benchmark": str(tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2")}
    job["data"] = {"name": "digits", "batch_size": 16, "limit": 64}
    config = parse_job(job)
    drawn = STRATEGIES.create("random", config.strategy.config, space=SPACE, seed=config.seed)
    cells = [str(drawn.propose()) for _ in range(4)][::-1]  # (the search's own draws, reindexed)
    write_nats_tss(tmp_path / "NATS-tss-v1_0-3ffb9.pickle.pbz2", cells, folder=False)
    run_search(config, echo=lambda _: None)
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) == 4
    for _, row in rows.iterrows():
        index = cells.index(str(Architecture.from_json(row["architecture"])))
        assert row["metric.bench_index"] == index
        assert row["metric.bench_ori_test_acc"] == pytest.approx(expected(index, "cifar10", "ori-test"))


def test_a_benchmark_for_another_space_is_refused(tmp_path: Path) -> None:
    job = table_job(tmp_path, tmp_path / "nb201.pth")
    job["space"] = {"name": "darts"}
    job["evaluator"] = {"name": "training_free", "benchmark": str(tmp_path / "nb201.pth")}
    job["data"] = "digits"
    with pytest.raises(ConfigError, match=r"'evaluator\.benchmark' reads NAS-Bench-201's accuracies"):
        parse_job(job)
