"""What users see and keep, on every kind of search (issue 14): one results store and one MLflow
store holding a gradient search (DARTS), a one-shot search (SPOS), a search that trains its
candidates from scratch (evolution, the best retrained) and a training-free one (NASWOT), each
small and in-process. ``raynas report`` works on it with its defaults; every row has its
network's size and speaks the vocabulary docs/results.md lists; MLflow has the final results as
metrics, child runs that last as long as their evaluations, and models with a signature."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.cli import main
from raynas.profile import count_params
from raynas.runs import run_search
from raynas.runs.common import SearchResult
from raynas.runs.jobs import parse_job
from raynas.runs.report import build_report
from raynas.spaces import SPACES
from raynas.spaces.nb201 import Nb201SpaceConfig
from raynas.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG
from raynas.tracking.results import ResultsStore
from raynas.tracking.vocabulary import NODES
from raynas.types import Architecture, DatasetInfo, EvalResult
from tests.conftest import mlflow_store, tiny_job

DOCS = Path(__file__).parents[1] / "docs" / "results.md"
NB201 = {"name": "nb201", "channels": 4, "cells_per_stage": 1}


def jobs(root: Path) -> dict[str, dict]:
    """One small job per kind of search, all recorded in the same stores under ``root``."""
    tracking = {"experiment": "every-kind", "tracking_uri": mlflow_store(root),
                "output_dir": str(root / "runs"), "results": str(root / "results")}
    darts = tiny_job(root, name="darts", tracking=tracking, data={"limit": 64})

    def sampling(name: str, strategy: dict, evaluator: dict, **sections: dict) -> dict:
        job = tiny_job(root, name=name, tracking=tracking, data={"limit": 96, "batch_size": 16})
        job["space"], job["strategy"], job["evaluator"] = dict(NB201), strategy, evaluator
        if "train" in sections:
            job["train"] = sections.pop("train")
        else:
            del job["train"]  # no supernet is trained
        return {**job, **sections}

    return {
        "darts": darts,
        "spos": sampling("spos", {"name": "spos", "population_size": 2, "sample_size": 2, "evaluations": 3},
                         {"name": "supernet", "bn_batches": 1}, train={"epochs": 1, "learning_rate": 0.05}),
        # No evaluator.channels: candidates train at the space's size (space.channels, cells_per_stage).
        "scratch": sampling("scratch", {"name": "random", "evaluations": 2}, {"name": "scratch", "epochs": 1},
                            final={"top": 1, "epochs": 1}),
        "naswot": sampling("naswot", {"name": "random", "evaluations": 3},
                           {"name": "training_free", "proxy": "naswot", "batch_size": 16, "channels": 4,
                            "layers": 1}),
    }


Searches = tuple[Path, dict[str, SearchResult], dict[str, dict]]  # the stores' folder, results, jobs


@pytest.fixture(scope="module")
def searches(tmp_path_factory: pytest.TempPathFactory) -> Searches:
    root = tmp_path_factory.mktemp("every-kind")
    specs = jobs(root)
    return root, {kind: run_search(parse_job(job), echo=lambda _: None) for kind, job in specs.items()}, specs


def rows(root: Path) -> list[dict]:
    return ResultsStore(root / "results").read_table().to_pylist()


def test_report_with_its_defaults_works_on_a_store_of_every_kind_of_search(
    searches: Searches, capsys: pytest.CaptureFixture[str]
) -> None:
    root, _, _ = searches
    report = build_report(ResultsStore(root / "results"))  # cost "params", as `raynas report` has it
    assert {s.strategy for s in report.seeds} == {"darts", "spos", "random"}
    assert len(report.searches) == 4
    # NASWOT's scores are not accuracies: ranked apart from the three searches that train.
    assert [(r.objective, len(r.searches)) for r in report.rankings] == [("naswot", 1), ("valid_acc", 3)]
    # none drops out of a front
    assert all(r.cost is not None and r.cost > 0 for ranking in report.rankings for r in ranking.rows)
    assert main(["report", "--results", str(root / "results")]) == 0
    out = capsys.readouterr().out
    assert "Pareto front" in out and "no candidate has" not in out
    assert main(["report", "--results", str(root / "results"), "--cost", "macs"]) == 0


def test_every_row_has_its_network_s_size_and_the_documented_vocabulary(
    searches: Searches,
) -> None:
    root, _, _ = searches
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \| metric", DOCS.read_text(), flags=re.M))
    table = rows(root)
    assert {r["strategy"] for r in table} == {"darts", "spos", "random"}
    for row in table:
        metrics = dict(row["metrics"])
        assert metrics["params"] > 0 and metrics["macs"] > 0, row["trial_id"]
        assert set(metrics) <= documented, set(metrics) - documented
        assert row["node"] in NODES
        assert row["started_at"] is not None and row["ended_at"] >= row["started_at"]


def test_the_result_s_size_is_the_size_of_the_network_that_scored_and_was_registered(
    searches: Searches,
) -> None:
    root, results, specs = searches
    client = MlflowClient(specs["darts"]["tracking"]["tracking_uri"])
    space = SPACES.create("nb201", Nb201SpaceConfig(channels=4, cells_per_stage=1))
    digits = DatasetInfo("digits", 1, 10, 8)
    scratch = results["scratch"]
    # The scratch evaluator trained the space's network (4 channels, 1 cell per stage), not the
    # benchmark's (16 channels, 5 cells): its rows, the result and the registered model agree.
    expected = count_params(space.build(scratch.architecture, digits, channels=4, layers=1))
    assert scratch.params == expected
    for row in rows(root):
        if row["name"] == "scratch":
            arch = Architecture.from_json(row["architecture"])
            network = space.build(arch, digits, channels=4, layers=1)
            assert dict(row["metrics"])["params"] == count_params(network)
    for kind, result in results.items():
        run = client.get_run(result.run_id)
        assert run.data.metrics["final.params"] == result.params, kind
        assert run.data.metrics["final.paper_params"] == result.params_cifar10, kind
        versions = client.search_model_versions(f"name = 'raynas-{kind}'")
        assert len(versions) == 1
        model_dir = client.download_artifacts(result.run_id, "model", str(root / f"model-{kind}"))
        import mlflow.pytorch

        network = mlflow.pytorch.load_model(model_dir)
        assert count_params(network) == result.params, kind
    assert client.get_model_version("raynas-scratch", "1").tags["raynas.trained"] == "true"  # retrained


def test_mlflow_runs_compare_well(searches: Searches) -> None:
    import mlflow.models

    root, results, specs = searches
    client = MlflowClient(specs["darts"]["tracking"]["tracking_uri"])
    experiment = client.get_experiment_by_name("every-kind")
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND  # the UI's model-training view
    for kind, result in results.items():
        run = client.get_run(result.run_id)
        objective = "naswot" if kind == "naswot" else "valid_acc"
        assert run.data.metrics[f"final.{objective}"] == pytest.approx(result.metrics[objective])
        assert not any(k.startswith("final.") and k in run.data.metrics for k in run.data.params)
        artifacts = {a.path for a in client.list_artifacts(result.run_id)}
        assert ("arch_weights.json" in artifacts) == (kind == "darts")  # no empty files
        folder = client.download_artifacts(result.run_id, "model", str(root / f"signed-{kind}"))
        info = mlflow.models.Model.load(folder)
        assert info.signature is not None and info.saved_input_example_info is not None, kind
        children = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
        )
        assert children
        for child in children:  # as long as the evaluation took, not as long as logging it
            seconds = child.data.metrics["seconds"]
            lasted = (child.info.end_time - child.info.start_time) / 1000
            assert lasted == pytest.approx(seconds, abs=max(0.2, 0.1 * seconds))
            assert child.data.tags["raynas.node"] in NODES
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(str(root / "signed-darts" / "model"))
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)


def test_recording_writes_other_spellings_under_the_one_vocabulary(tmp_path: Path) -> None:
    from raynas.tracking.mlflow_tracker import MlflowTracker
    from raynas.tracking.results import SearchInfo

    space = SPACES.create("nb201")
    arch = space.sample(__import__("random").Random(0))
    # As a Ray Tune trial or a Ray actor reports it: node "cpu", the loop's "lr".
    result = EvalResult(architecture=arch, metrics={"valid_acc": 0.5, "lr": 0.1, "params": 10.0},
                        trial_id="t1", seconds=2.0, node="cpu")
    store = ResultsStore(tmp_path / "results", spool_dir=tmp_path / "spool")
    store.append([result], info=SearchInfo(search="s"))
    (row,) = store.read_table().to_pylist()
    assert row["node"] == "ray-cpu" and dict(row["metrics"]) == {"valid_acc": 0.5, "learning_rate": 0.1,
                                                                 "params": 10.0}
    tracker = MlflowTracker(tracking_uri=mlflow_store(tmp_path), experiment="vocabulary")
    tracker.start(parse_job(tiny_job(tmp_path)))
    child = tracker.client.get_run(tracker.log_candidate(result))
    assert child.data.tags["raynas.node"] == "ray-cpu" and "learning_rate" in child.data.metrics
    assert "lr" not in child.data.metrics
    assert (child.info.end_time - child.info.start_time) == 2000  # its duration, not logging's
    # A Tune trial's result: its objective after every epoch is the metric's history.
    trained = EvalResult(architecture=arch, metrics={"valid_acc": 0.7, "epoch": 3.0}, trial_id="t2",
                         budget=3.0, seconds=3.0, curve=(0.3, 0.5, 0.7))
    run_id = tracker.log_candidate(trained)
    history = tracker.client.get_metric_history(run_id, "valid_acc")
    curve = [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)]
    assert curve == [(1, 0.3), (2, 0.5), (3, 0.7)]


def test_the_alpha_heat_map_names_edges_by_their_nodes_and_scales_to_the_weights() -> None:
    from raynas.tracking.plots import plot_arch_weights

    space = SPACES.create("darts")
    edges, ops = len(space.edge_names), len(space.op_names)
    # A short search: every weight within 0.01 of uniform.
    history = [{"alpha_normal": [[0.001 * (e + o + t) for o in range(ops)] for e in range(edges)]}
               for t in range(3)]
    figure = plot_arch_weights(history, op_names=space.op_names, edge_names=space.edge_names)
    axes = figure.axes[0]
    labels = [t.get_text() for t in axes.get_yticklabels()]
    assert labels[0] == f"node 0 → node 2: {space.op_names[0]}" and space.edge_names[-1] == "node 4 → node 5"
    low, high = axes.images[0].get_clim()
    assert 1 / ops - 0.01 < low < high < 1 / ops + 0.01  # the colours span the weights, not 0 to 1


def test_an_architecture_reads_back_after_a_bare_import_raynas() -> None:
    import subprocess
    import sys

    code = (
        "import sys, raynas.types as t\n"
        "assert 'raynas.spaces' not in sys.modules\n"
        "a = t.Architecture.from_json('{\"space\": \"nb201\", \"arch\": "
        "\"|nor_conv_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|none~2|\"}')\n"
        "print(type(a).__name__)\n"
        "try:\n    t.Architecture.from_json('{\"space\": \"nope\"}')\n"
        "except t.ArchitectureError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    name, error = done.stdout.splitlines()
    assert name == "Nb201Arch"
    assert {"darts", "nb201"} <= set(error.split("known: ")[1].split(", "))  # not an empty list
