"""``raynas report``: the best table, the Pareto front, mean ± std over seeds, text/HTML/PNG."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest

from raynas.cli import main
from raynas.runs.report import build_report, format_text, pareto_figure
from raynas.spaces.nb201 import Nb201Space
from raynas.tracking.plots import pareto_front
from raynas.tracking.results import ResultsStore, SearchInfo
from raynas.types import EvalResult


def fill(store: ResultsStore) -> None:
    rng = random.Random(7)
    space = Nb201Space()
    for search, strategy, seed, top in (("evo-a", "evolution", 0, 0.90), ("evo-b", "evolution", 1, 0.80),
                                        ("rs-a", "random", 0, 0.70)):
        results = [
            EvalResult(architecture=space.sample(rng),
                       metrics={"valid_acc": top - 0.05 * i, "params": 1e5 * (1 + rng.random())},
                       trial_id=f"{search}-{i}")
            for i in range(5)
        ]
        store.append(results, info=SearchInfo(search=search, name=search[:-2], strategy=strategy,
                                              dataset="cifar10", seed=seed))


def dominated(p: tuple[float, float], points: list[tuple[float, float]]) -> bool:
    return any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in points)


def test_pareto_front_matches_a_brute_force_dominance_check() -> None:
    rng = random.Random(0)
    for _ in range(20):
        points = [(round(rng.uniform(0, 10), 1), round(rng.uniform(0, 1), 2)) for _ in range(30)]
        expected = {p for p in points if not dominated(p, points)}
        front = pareto_front(points)
        assert {points[i] for i in front} == expected
        assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)


def test_report_tables_and_seed_statistics(tmp_path: Path) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    fill(store)
    report = build_report(store, top=3)
    (ranking,) = report.rankings
    assert ranking.objective == "valid_acc"
    assert [r.score for r in ranking.best] == pytest.approx([0.90, 0.85, 0.80])
    evolution = next(s for s in report.seeds if s.strategy == "evolution")
    # Best scores 0.90 and 0.80: mean 0.85, sample std sqrt(((0.05)^2 * 2) / 1) = 0.0707107.
    assert evolution.mean == pytest.approx(0.85) and evolution.std == pytest.approx(math.sqrt(0.005))
    assert sorted(evolution.seeds) == [0, 1]
    random_search = next(s for s in report.seeds if s.strategy == "random")
    assert (random_search.mean, random_search.std) == (pytest.approx(0.70), 0.0)
    best_per_arch: dict[str, tuple[float, float]] = {}  # an architecture counts with its best evaluation
    for r in ranking.rows:
        if r.architecture_key not in best_per_arch or r.score > best_per_arch[r.architecture_key][1]:
            best_per_arch[r.architecture_key] = (r.cost, r.score)
    points = list(best_per_arch.values())
    assert {(r.cost, r.score) for r in ranking.front} == {p for p in points if not dominated(p, points)}

    only = build_report(store, select=["evo"])  # a job name selects its searches
    assert only.searches == ("evo-a", "evo-b")
    text = format_text(only)
    assert "evolution/cifar10: valid_acc 0.8500 ± 0.0707" in text and "Pareto front" in text


def test_report_command_writes_html_and_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    fill(store)
    root = str(tmp_path / "results")
    assert main(["report", "--results", root, "--search", "evo-a", "--out", str(tmp_path / "r.html")]) == 0
    out = capsys.readouterr().out
    assert "Best architectures" in out and "r.html" in out
    page = (tmp_path / "r.html").read_text()
    assert page.count("<table>") == 3 and "data:image/png;base64," in page
    assert main(["report", "--results", root, "--out", str(tmp_path / "pareto.png")]) == 0
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_searches_of_different_objectives_are_ranked_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A training-free search's scores (NASWOT's log-determinant, here in the thousands) are not
    accuracies: ranked with them they took every row of the best table and the whole Pareto front.
    Each objective has its own table, front and plot panel."""
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    fill(store)
    rng, space = random.Random(11), Nb201Space()
    proxy = [EvalResult(architecture=space.sample(rng), objective="naswot", trial_id=f"wot-{i}",
                        metrics={"naswot": 1500.0 + i, "params": 1e5 * (1 + i)}) for i in range(3)]
    # Its best candidate retrained (`final`): scored by accuracy, a row of the same search.
    retrained = EvalResult(architecture=proxy[2].architecture, metrics={"valid_acc": 0.6, "params": 3e5},
                           trial_id="wot-2-retrained")
    store.append([*proxy, retrained], info=SearchInfo(search="wot-a", name="wot", strategy="random",
                                                      dataset="cifar10", seed=0))
    report = build_report(store, top=3)
    assert [r.objective for r in report.rankings] == ["naswot", "valid_acc"]
    naswot, accuracy = report.rankings
    assert naswot.searches == ("wot-a",) and [r.score for r in naswot.best] == [1502.0, 1501.0, 1500.0]
    assert accuracy.searches == ("evo-a", "evo-b", "rs-a", "wot-a")
    assert [r.score for r in accuracy.best] == pytest.approx([0.90, 0.85, 0.80])
    assert {r.search for r in accuracy.front} <= {"evo-a", "evo-b", "rs-a", "wot-a"} and accuracy.front
    assert {r.search for r in naswot.front} == {"wot-a"}
    wot = sorted((s.objective, s.best_scores) for s in report.seeds if s.job == "wot")
    assert wot == [("naswot", (1502.0,)), ("valid_acc", (0.6,))]  # the search's best by each
    assert report.searches == ("evo-a", "evo-b", "rs-a", "wot-a")
    text = format_text(report)
    assert "(objectives: naswot, valid_acc)" in text
    assert "Ranked by naswot: wot-a" in text and "Ranked by valid_acc: evo-a, evo-b, rs-a, wot-a" in text
    assert "wot nb201/random/cifar10: naswot 1502.0  (n=1, seed 0)" in text
    assert "wot nb201/random/cifar10: valid_acc 0.6000  (n=1, seed 0)" in text
    root = str(tmp_path / "results")
    assert main(["report", "--results", root, "--out", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "<h2>Best architectures by naswot</h2>" in page and "<h2>Pareto front by valid_acc</h2>" in page
    assert page.count("<table>") == 5  # a best table and a front per objective, the seeds
    panels = pareto_figure(report).axes
    assert [ax.get_ylabel() for ax in panels] == ["naswot", "valid_acc"]
    assert main(["report", "--results", root, "--out", str(tmp_path / "pareto.png")]) == 0
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    fill(store)
    root = str(tmp_path / "results")
    assert main(["report", "--results", root, "--search", "nope"]) == 2
    assert "no results for searches nope" in capsys.readouterr().err
    assert main(["report", "--results", root, "--cost", "latency_ms"]) == 2
    assert "choose one of: params, valid_acc" in capsys.readouterr().err
    assert main(["report", "--results", root, "--out", str(tmp_path / "r.pdf")]) == 2


def test_report_shows_whole_architectures_marks_early_stops_and_counts_what_has_no_cost(
    tmp_path: Path,
) -> None:
    from raynas.spaces.darts_genotype import published_genotype

    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    darts = published_genotype("DARTS_V2")
    space = Nb201Space()
    results = [
        EvalResult(architecture=darts, metrics={"valid_acc": 0.9, "params": 3e6}, trial_id="t1"),
        EvalResult(architecture=space.sample(random.Random(1)), metrics={"valid_acc": 0.8, "params": 1e5},
                   trial_id="t2", stopped_early=True),
        EvalResult(architecture=space.sample(random.Random(2)), metrics={"valid_acc": 0.7}, trial_id="t3"),
    ]
    store.append(results, info=SearchInfo(search="mixed-1", name="mixed", strategy="random",
                                          dataset="cifar10", seed=0))
    report = build_report(store)
    text = format_text(report, width=40)
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if " t1 " in line)
    wrapped = "".join(part.strip() for part in lines[first:first + 20] if not part.lstrip()[:2].isdigit())
    assert str(darts).replace(" ", "") in (lines[first].split("t1", 1)[1] + wrapped).replace(" ", "")
    assert "t2*" in text and "stopped early" in text
    assert "(1 architecture(s) without a params metric left out)" in text
    assert "mixed darts/random/cifar10: valid_acc 0.9000  (n=1, seed 0)" in text  # no ± for a single search


def test_report_logs_its_cell_shape_plot_to_each_searchs_mlflow_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raynas report --mlflow` logs the plot of the best cells against random cells of their
    space to the MLflow run of every reported search, read back here from a real SQLite store: the
    same PNG as the report's own figure of it."""
    import io

    from conftest import mlflow_store
    from mlflow.tracking import MlflowClient

    uri = mlflow_store(tmp_path)
    client = MlflowClient(uri)
    experiment = client.create_experiment("searches")
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    rng, space, run_ids = random.Random(3), Nb201Space(), []
    for seed in (0, 1):
        run_ids.append(client.create_run(experiment).info.run_id)
        results = [EvalResult(architecture=space.sample(rng), metrics={"valid_acc": 0.5 + 0.1 * i},
                              trial_id=f"t{i}") for i in range(4)]
        store.append(results, info=SearchInfo(search=f"evo-{seed}", name="evo", run_id=run_ids[-1],
                                              strategy="evolution", dataset="cifar10", seed=seed))
    root = str(tmp_path / "results")
    assert main(["report", "--results", root, "--cost", "valid_acc", "--mlflow", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert f"Logged report/cell_shapes_nb201.png to MLflow run(s) {', '.join(run_ids)}" in out

    (shape,) = build_report(store, cost="valid_acc").shapes
    expected = io.BytesIO()
    shape.figure().savefig(expected, format="png", dpi=110)
    for run_id in run_ids:
        assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/cell_shapes_nb201.png"]
        local = client.download_artifacts(run_id, "report/cell_shapes_nb201.png", str(tmp_path))
        assert Path(local).read_bytes() == expected.getvalue()


def test_report_mlflow_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import mlflow_store

    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    fill(store)  # searches without an MLflow run
    root, uri = str(tmp_path / "results"), mlflow_store(tmp_path)
    assert main(["report", "--results", root, "--mlflow", "--tracking-uri", uri]) == 2
    assert "none of these searches recorded an MLflow run" in capsys.readouterr().err
    store.append([EvalResult(architecture=Nb201Space().sample(random.Random(0)),
                             metrics={"valid_acc": 0.5, "params": 1e5}, trial_id="t0")],
                 info=SearchInfo(search="lost-0", name="lost", run_id="0" * 32, strategy="random"))
    assert main(["report", "--results", root, "--search", "lost", "--mlflow", "--tracking-uri", uri]) == 2
    assert f"the MLflow run {'0' * 32} of search lost-0 is not in" in capsys.readouterr().err
    missing = tmp_path / "elsewhere" / "mlflow.db"
    assert main(["report", "--results", root, "--search", "lost", "--mlflow",
                 "--tracking-uri", f"sqlite:///{missing}"]) == 2
    assert f"there is no MLflow store at sqlite:///{missing}" in capsys.readouterr().err
    assert not missing.parent.exists()
    assert main(["report", "--results", root, "--tracking-uri", uri]) == 2
    assert "add --mlflow" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["report", "--results", root, "--out", str(tmp_path / "a-file" / "r.html")]) == 2
    assert f"cannot create the folder {tmp_path / 'a-file'}: a file has that name" in capsys.readouterr().err
    # /proc refuses new files with ENOENT, which read "No such file or directory" for a folder that is there.
    assert main(["report", "--results", root, "--out", "/proc/r.html"]) == 2
    assert "cannot write in the folder /proc: no file can be made there;" in capsys.readouterr().err
