"""The layer-count study (``raynas study``, PIBConv's accuracy against evaluation layer count):
one child run per (cell, layer count), and a summary table and plot whose numbers are the child
runs' own."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raynas.cli import main
from raynas.config import load_yaml
from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.profile import count_params
from raynas.runs.study import parse_study_job
from raynas.spaces import SPACES
from tests.conftest import mlflow_store

JOBS = Path(__file__).parents[1] / "jobs"
PIB = json.dumps({
    "normal": [["pib_conv_3x3", 0], ["pib_conv_3x3", 1], ["skip_connect", 0], ["pib_conv_5x5", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3],
})
DARTS = json.dumps({
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0], ["dil_conv_3x3", 2]],
    "normal_concat": [2, 3],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3],
})


def study_job(tmp_path: Path, **study: object) -> dict:
    return {
        "name": "study-tiny",
        "space": {"name": "darts", "nodes": 2},
        "data": {"name": "digits", "batch_size": 32, "limit": 96, "train_portion": 0.75},
        "retrain": {"epochs": 1, "channels": 4, "learning_rate": 0.05},
        "study": {
            "layers": [2, 3],
            "cells": {"DARTS": {"architecture": DARTS},
                      "PIBConv": {"architecture": PIB, "space": {"operations": "convnext"}}},
            **study,
        },
        "execution": {"backend": "local", "cpus_per_worker": 1},
        "tracking": {"experiment": "tests", "tracking_uri": mlflow_store(tmp_path),
                     "output_dir": str(tmp_path / "runs")},
    }


def test_the_study_table_holds_the_child_runs_numbers(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """jobs/layer_count_quickstart.yaml through `raynas study`, shrunk to two layer counts of
    4-channel networks trained one epoch on 96 digits."""
    path = JOBS / "layer_count_quickstart.yaml"
    uri = mlflow_store(tmp_path)
    assert main([
        "study", str(path), "--set", "study.layers=[2,3]", "--set", "retrain.epochs=1",
        "--set", "retrain.channels=4", "--set", "data.limit=96", "--set", "data.batch_size=32",
        "--set", "tracking.experiment=tests", "--set", f"tracking.tracking_uri={uri}",
        "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ]) == 0
    cells = load_yaml(path)["study"]["cells"]
    client = MlflowClient(uri)
    parent = client.search_runs(
        [client.get_experiment_by_name("tests").experiment_id], "tags.`raynas.kind` = 'layer_study'"
    )[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_id in capsys.readouterr().out
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"layer_count.csv", "layer_count.png", "layer_count_table.json"} <= artifacts
    table = list(csv.DictReader(io.StringIO(
        Path(client.download_artifacts(parent.info.run_id, "layer_count.csv", str(tmp_path))).read_text()
    )))
    assert [(r["cell"], int(r["layers"])) for r in table] == [
        ("DARTS", 2), ("DARTS", 3), ("PIBConv", 2), ("PIBConv", 3)
    ]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert len(children) == 4
    by_id = {c.info.run_id: c for c in children}
    info = dataset_info("digits")
    for row in table:
        child = by_id[row["run_id"]]
        assert child.info.status == "FINISHED"
        assert child.data.tags["raynas.study.cell"] == row["cell"]
        assert child.data.tags["raynas.study.layers"] == row["layers"]
        history = client.get_metric_history(child.info.run_id, "test_acc")
        assert len(history) == 1
        assert float(row["test_acc"]) == pytest.approx(history[-1].value, abs=1e-6)
        assert float(row["test_acc"]) == pytest.approx(child.data.metrics["final.test_acc"], abs=1e-6)
        assert float(row["params"]) == child.data.metrics["final.params"]
        # The parameters of the network as the space builds it, counted here independently.
        operations = "convnext" if row["cell"] == "PIBConv" else "darts"
        space = SPACES.create("darts", SPACES.entry("darts").config(operations=operations))
        arch = space.parse(cells[row["cell"]]["architecture"])
        network = space.build(arch, info, channels=4, layers=int(row["layers"]))
        assert int(row["params"]) == count_params(network)
    # Every trained network is a version of the study's registered model, tagged with its row.
    versions = client.search_model_versions("name = 'raynas-layer-count-quickstart'")
    assert sorted((v.tags["raynas.study.cell"], int(v.tags["raynas.study.layers"]), v.run_id)
                  for v in versions) == sorted((r["cell"], int(r["layers"]), r["run_id"]) for r in table)
    assert all(v.tags["raynas.trained"] == "true" for v in versions)
    for label in ("DARTS", "PIBConv"):  # the plot's series, as metrics stepped by the layer count
        series = client.get_metric_history(parent.info.run_id, f"test_acc.{label}")
        assert {(m.step, round(m.value, 6)) for m in series} == {
            (int(r["layers"]), round(float(r["test_acc"]), 6)) for r in table if r["cell"] == label
        }


def test_a_study_killed_after_making_its_run_goes_on_in_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed once its MLflow run is made, before its first checkpoint names the run: the study
    run again finds that run by the attempt id kept beside its checkpoint and finishes in it;
    ``fresh`` makes a new one."""
    from raynas.runs.study import run_study
    from raynas.tracking.mlflow_tracker import MlflowTracker

    job = parse_study_job(study_job(tmp_path, layers=[2], cells={"DARTS": {"architecture": DARTS}}))
    start, made = MlflowTracker.start, []

    def start_and_die(self: MlflowTracker, *args: object, **kwargs: object) -> str:
        made.append(start(self, *args, **kwargs))
        raise KeyboardInterrupt  # the process dies here, its checkpoint not yet written

    monkeypatch.setattr(MlflowTracker, "start", start_and_die)
    with pytest.raises(KeyboardInterrupt):
        run_study(job, echo=lambda _: None)
    assert not (tmp_path / "runs" / "study-tiny" / "study.pt").exists()
    monkeypatch.setattr(MlflowTracker, "start", start)
    result = run_study(job, echo=lambda _: None)
    client = MlflowClient(mlflow_store(tmp_path))
    experiment = client.get_experiment_by_name("tests").experiment_id
    parents = client.search_runs([experiment], "tags.`raynas.kind` = 'layer_study'")
    assert [p.info.run_id for p in parents] == made and result.run_id == made[0]
    assert parents[0].info.status == "FINISHED"
    again = run_study(job, fresh=True, echo=lambda _: None)
    assert again.run_id != made[0]
    assert len(client.search_runs([experiment], "tags.`raynas.kind` = 'layer_study'")) == 2


@pytest.mark.integration
def test_a_study_on_ray_outlives_a_lost_worker_and_ends_as_an_undisturbed_one(
    tmp_path: Path, ray_head: str
) -> None:
    """A retraining's worker killed once it has told its size: the study ended. Now it says so in
    one line, a new worker trains the network from its start, and the study's table is the
    undisturbed study's (in this process)."""
    import ray
    from test_quiet_failures import WorkerLosses

    from raynas.runs.study import run_study

    cells = {"DARTS": {"architecture": DARTS}}
    local = parse_study_job(study_job(tmp_path / "local", layers=[2], cells=cells))
    reference = run_study(local, echo=lambda _: None)
    on_ray = {**study_job(tmp_path, layers=[2], cells=cells),
              "execution": {"backend": "ray", "address": ray_head, "cpus_per_worker": 1}}
    losses = WorkerLosses(ray_head, at="  DARTS at 2 layers: ", in_setup=False)
    try:
        result = run_study(parse_study_job(on_ray), echo=losses.echo)
    finally:
        ray.shutdown()
    assert losses.said() == ["restarting the worker from its start (1 of at most 10 restarts)"]
    drop = ("seconds", "run_id")
    assert [{k: v for k, v in row.items() if k not in drop} for row in result.rows] == [
        {k: v for k, v in row.items() if k not in drop} for row in reference.rows
    ]


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"layers": []}, "study.layers"),
        ({"layers": [2, 2]}, "twice"),
        ({"cells": {"a.b": {"architecture": "DARTS_V2"}}}, "label"),
        ({"cells": {"DARTS": {"architecture": "DARTS_V2", "space": {"name": "nb201"}}}},
         "study.cells.DARTS.space"),
        ({"cells": {"PIB": {"architecture": PIB}}}, "study.cells.PIB.architecture"),  # darts ops lack PIB
        ({"cells": {"X": {"architecture": "NO_SUCH_CELL"}}}, "study.cells.X.architecture"),
        ({"concurrency": 2}, "execution.backend: local"),
        ({"epochs": 3}, "unknown config key 'study.epochs'"),
    ],
)
def test_a_bad_study_section_is_one_clear_error(tmp_path: Path, study: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        parse_study_job(study_job(tmp_path, **study))


@pytest.mark.parametrize("name", ["layer_count_quickstart.yaml", "layer_count_cifar10.yaml"])
def test_the_study_jobs_compare_darts_and_pibconv_cells_from_2_to_20_layers(name: str) -> None:
    job = parse_study_job(load_yaml(JOBS / name, ["tracking.tracking_uri=sqlite:////nonexistent/x.db"]))
    assert [c.label for c in job.cells] == ["DARTS", "PIBConv"]
    assert min(job.layers) == 2 and max(job.layers) == 20
    assert {config.space.config.operations for (label, _), config in job.retrainings.items()
            if label == "PIBConv"} == {"convnext"}
    for (_, layers), config in job.retrainings.items():
        assert config.retrain.layers == layers


def test_raynas_study_answers_a_bad_job_in_one_line_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study_job(tmp_path, layers="all")))
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: config key 'study.layers'") and err.count("\n") == 1


def test_an_unfinished_study_run_with_another_config_is_refused_naming_what_changed(tmp_path: Path) -> None:
    from raynas.runs.study import run_study

    job = study_job(tmp_path, layers=[2], cells={"DARTS": {"architecture": DARTS}})

    def stop_once_checkpointed(line: str) -> None:
        if line.startswith("Study "):  # said after its first checkpoint
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(parse_study_job(job), echo=stop_once_checkpointed)
    changed = parse_study_job({**job, "retrain": {**job["retrain"], "epochs": 2}})
    with pytest.raises(ConfigError, match=re.escape(
            "belongs to an unfinished study of 'study-tiny' with another config (retrain.epochs was 1, "
            "is 2); pass --fresh to start over, give the job another name, or undo the change")):
        run_study(changed, echo=lambda _: None)
