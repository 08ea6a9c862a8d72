"""Sampling searches end to end: one-shot supernet training on sampled paths, candidates scored
with inherited weights or trained from scratch, recorded, resumed after a crash, on Ray actors."""

from __future__ import annotations

import random
import statistics
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.errors import ConfigError
from raynas.evaluators.supernet import SupernetEvaluator
from raynas.runs import run_search, run_seeds
from raynas.runs.jobs import parse_job
from raynas.runs.report import build_report
from raynas.runs.sampling import search_state
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.spaces.nb201 import Nb201SpaceConfig
from raynas.supernet import build_supernet
from raynas.tracking.results import ResultsStore
from raynas.types import Architecture, DatasetInfo
from tests.conftest import tiny_job


def sampling_job(tmp_path: Path, strategy: dict, evaluator: dict, **sections: dict) -> dict:
    job = tiny_job(
        tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        data={"name": "digits", "batch_size": 32, "limit": 192}, **sections,
    )
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"], job["evaluator"] = strategy, evaluator
    if evaluator.get("name") != "supernet" and "train" not in sections:
        del job["train"]  # only a one-shot supernet is trained by train.*
    return job


SPOS = {"name": "spos", "population_size": 4, "sample_size": 2, "evaluations": 8}


@pytest.mark.parametrize("space", ["darts", "nb201"])
def test_single_path_forward_equals_the_dense_mixture_with_one_hot_weights(space: str) -> None:
    # Independent check of the fast path: skipping the zero-weighted candidates must give what the
    # dense weighted sum gives with the same one-hot weights (computed with grad, so nothing is skipped).
    cfg = DartsSpaceConfig(channels=4, layers=3, nodes=2) if space == "darts" else Nb201SpaceConfig(
        channels=4, cells_per_stage=1
    )
    torch.manual_seed(0)
    sp = SPACES.create(space, cfg)
    net = build_supernet(sp, DatasetInfo("x", 3, 10, 16)).eval()
    arch = sp.sample(random.Random(3))
    x = torch.randn(2, 3, 16, 16)
    net.set_path(arch)
    with torch.no_grad():
        fast = net(x)
    path = net.path
    net.path = (
        {k: v.clone().requires_grad_() for k, v in path.items()} if isinstance(path, dict)
        else path.clone().requires_grad_()
    )
    dense = net(x)
    torch.testing.assert_close(fast, dense.detach())


def test_one_shot_training_updates_only_the_sampled_path() -> None:
    sp = SPACES.create("nb201", Nb201SpaceConfig(channels=4, cells_per_stage=1))
    net = build_supernet(sp, DatasetInfo("x", 3, 10, 16))
    arch = sp.decode([3, 0, 3, 0, 0, 3])  # a chain of conv3x3: 0->1->2->3, nothing else
    net.set_path(arch)
    net(torch.randn(2, 3, 16, 16)).sum().backward()
    touched = {n.split(".ops.")[1].split(".")[0] for n, p in net.named_parameters()
               if ".ops." in n and p.grad is not None and p.grad.abs().sum() > 0}
    assert touched == {"3"}  # nor_conv_3x3's index in NB201_OPS


def test_spos_search_records_every_candidate_in_mlflow_and_parquet(tmp_path: Path) -> None:
    job = sampling_job(tmp_path, SPOS, {"name": "supernet", "bn_batches": 2}, train={"epochs": 2},
                       tracking={"pictures": True})
    result = run_search(parse_job(job), echo=lambda _: None)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raynas.architecture_key"] == result.architecture.key()
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == 8
    assert result.metrics["valid_acc"] == max(c.data.metrics["valid_acc"] for c in children)
    for child in children:  # each candidate with its picture
        assert "architecture.png" in {a.path for a in client.list_artifacts(child.info.run_id)}
    artifacts = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"pareto.png", "architecture.png", "cell_shapes.png"} <= artifacts
    rows = ResultsStore(tmp_path / "runs" / "results").read_frame()
    assert len(rows) == 8 and rows["trial_id"].is_unique
    # Every candidate's cell width and depth (Shu et al., read on NAS-Bench-201 cells) in its
    # Parquet row and its child run.
    by_trial = {c.data.tags["raynas.trial_id"]: c.data.metrics for c in children}
    space = SPACES.create("nb201")
    for _, row in rows.iterrows():
        shape = space.cell_shape(Architecture.from_json(row["architecture"]))
        assert set(shape) == {"cell_width", "cell_depth"}
        assert {k: row[f"metric.{k}"] for k in shape} == shape
        assert {k: by_trial[row["trial_id"]][k] for k in shape} == shape


@pytest.mark.parametrize("kind", ["gradient", "sampling"])
def test_a_search_without_pictures_records_everything_but_pictures(kind: str, tmp_path: Path) -> None:
    """``tracking.pictures: false``: the runs hold their metrics, results and model, and no PNG."""
    job = (tiny_job(tmp_path, train={"epochs": 1}) if kind == "gradient" else sampling_job(
        tmp_path, {**SPOS, "evaluations": 4}, {"name": "supernet", "bn_batches": 2}, train={"epochs": 1}))
    assert job["tracking"]["pictures"] is False
    result = run_search(parse_job(job), echo=lambda _: None)
    client = MlflowClient(job["tracking"]["tracking_uri"])
    run = client.get_run(result.run_id)
    children = client.search_runs(
        [run.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == (1 if kind == "gradient" else 4)  # an epoch's child, or each candidate's
    for one in [run, *children]:
        artifacts = {a.path for a in client.list_artifacts(one.info.run_id)}
        assert not any(a.endswith(".png") for a in artifacts), artifacts
    assert all(child.data.metrics["valid_acc"] >= 0 for child in children)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["final.valid_acc"] == result.metrics["valid_acc"]
    assert "model" in {a.path for a in client.list_artifacts(result.run_id)}


def test_a_crashed_search_resumes_without_losing_evaluated_candidates(tmp_path: Path) -> None:
    job = sampling_job(tmp_path, SPOS, {"name": "supernet", "bn_batches": 2}, train={"epochs": 2})
    config = parse_job(job)
    reference = run_search(config, echo=lambda _: None, fresh=True)
    ref_state = search_state(reference.checkpoint)

    lines: list[str] = []

    def crash_after_three(line: str) -> None:
        lines.append(line)
        if sum(line.startswith("candidate") for line in lines) == 3:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_search(config, echo=crash_after_three, fresh=True)
    crashed = search_state(reference.checkpoint)
    assert len(crashed["results"]) == 3 and crashed["phase"] == "search"

    resumed_lines: list[str] = []
    resumed = run_search(config, echo=resumed_lines.append)
    assert any(line.startswith("Resuming") for line in resumed_lines)
    state = search_state(resumed.checkpoint)
    assert state["results"][:3] == crashed["results"]  # nothing evaluated was lost or redone
    assert len(state["results"]) == 8
    # The supernet phase was not repeated, and the whole search is the uninterrupted one.
    assert not any(line.startswith("supernet epoch") for line in resumed_lines)
    assert [r["metrics"] for r in state["results"]] == [r["metrics"] for r in ref_state["results"]]
    assert resumed.architecture == reference.architecture


def test_the_search_phase_checkpoints_every_30_seconds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between phases a sampling search checkpoints its state once SNAPSHOT_SECONDS (30) of search
    have passed since the last checkpoint: with the interval at 0, a search that crashes after its
    third candidate has a checkpoint that points past them in the journal; with an interval longer
    than the test, its checkpoint points to the start of the search phase."""
    from raynas.runs import journal, sampling
    from raynas.train.checkpoint import load_checkpoint

    assert journal.SNAPSHOT_SECONDS == 30.0 and sampling.SNAPSHOT_SECONDS == journal.SNAPSHOT_SECONDS
    job = sampling_job(tmp_path, SPOS, {"name": "supernet", "bn_batches": 1}, train={"epochs": 1})
    config = parse_job(job)
    checkpoint = tmp_path / "runs" / config.name / "checkpoint.pt"
    seqs = []
    for interval in (1e9, 0.0):
        monkeypatch.setattr(sampling, "SNAPSHOT_SECONDS", interval)
        lines: list[str] = []

        def crash_after_three(line: str, lines: list[str] = lines) -> None:
            lines.append(line)
            if sum(line.startswith("candidate") for line in lines) == 3:
                raise RuntimeError("simulated crash")

        with pytest.raises(RuntimeError, match="simulated crash"):
            run_search(config, echo=crash_after_three, fresh=True)
        seqs.append(load_checkpoint(checkpoint)["seq"])
    assert seqs[1] > seqs[0]  # three results and their asks past the start of the search phase


def test_evolution_with_training_from_scratch_and_retraining_the_best(tmp_path: Path) -> None:
    job = sampling_job(
        tmp_path, {"name": "evolution", "population_size": 2, "sample_size": 2, "evaluations": 3},
        {"name": "scratch", "epochs": 1, "channels": 4, "layers": 1},
        final={"top": 1, "epochs": 1, "channels": 4, "layers": 1},
    )
    result = run_search(parse_job(job), echo=lambda _: None)
    state = search_state(result.checkpoint)
    assert len(state["results"]) == 3 and len(state["retrained"]) == 1
    assert all(r["budget"] == 1 for r in state["results"])
    assert state["retrained"][0]["trial_id"].startswith("retrain-")
    client = MlflowClient(job["tracking"]["tracking_uri"])
    children = client.search_runs(
        [client.get_run(result.run_id).info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{result.run_id}'",
    )
    assert sorted(c.data.tags["raynas.trial_id"] for c in children)[-1].startswith("retrain-")
    assert len(children) == 4


def test_inherited_weight_scores_do_not_disturb_training() -> None:
    # Scoring a candidate must leave the random stream (and so the next epoch) untouched.
    job = sampling_job(Path("/tmp"), SPOS, {"name": "supernet"})
    config = parse_job(job)
    evaluator = SupernetEvaluator(config.evaluator.config, search=config)
    arch = SPACES.create("nb201", config.space.config).sample(random.Random(0))
    state = torch.get_rng_state()
    first = evaluator.evaluate(arch)
    assert torch.equal(state, torch.get_rng_state())
    assert evaluator.evaluate(arch).metrics == first.metrics  # a pure function of weights and arch


def test_sampling_strategies_reject_a_gradient_only_setting(tmp_path: Path) -> None:
    job = sampling_job(tmp_path, SPOS, {"name": "scratch"})
    with pytest.raises(ConfigError, match=r"evaluator\.name"):
        parse_job(job)  # refused where the job is loaded, before anything starts
    job = tiny_job(tmp_path)
    job["evaluator"] = {"name": "supernet"}
    with pytest.raises(ConfigError, match="gradient strategy"):
        parse_job(job)


@pytest.mark.integration
def test_supernet_replicas_on_ray_score_candidates_concurrently(tmp_path: Path, ray_head: str) -> None:
    job = sampling_job(
        tmp_path, SPOS, {"name": "supernet", "bn_batches": 2}, train={"epochs": 1},
        execution={"backend": "ray", "address": ray_head, "concurrency": 2, "cpus_per_worker": 1},
    )
    lines: list[str] = []
    result = run_search(parse_job(job), echo=lines.append)
    assert "2 Ray actor(s)" in lines[0]
    state = search_state(result.checkpoint)
    assert len(state["results"]) == 8
    assert {r["node"] for r in state["results"]} == {"cpu"}
    assert len({r["trial_id"] for r in state["results"]}) == 8


def test_the_evaluator_actors_of_a_search_on_ray_start_without_waiting_for_its_controller_actor(
    tmp_path: Path, ray_head: str
) -> None:
    # Each Ray actor is a new worker process that takes seconds to start and import torch: the
    # search starts its controller's actor and goes on to start its evaluators' beside it. Here
    # the controller asks for a resource no node has, so its actor is never placed; the
    # evaluators start all the same, and only a call to the controller would wait for it.
    import ray

    from raynas.execution.pool import start_pool
    from raynas.runs.journal import Journal
    from raynas.runs.sampling import SamplingSearch

    job = sampling_job(
        tmp_path, {"name": "random", "evaluations": 2}, {"name": "supernet", "bn_batches": 1},
        train={"epochs": 1},
        execution={"backend": "ray", "address": ray_head, "controller_resources": {"nowhere": 1}},
    )
    config = parse_job(job)
    started: dict[str, Any] = {}

    def start() -> None:  # as run_sampling_search does; in a thread, so that a wait fails the test
        started["search"] = SamplingSearch(
            config, journal=Journal(str(tmp_path / "journal.jsonl")), echo=lambda _: None
        )
        started["pool"] = start_pool(config, echo=lambda _: None)

    starting = threading.Thread(target=start, daemon=True)
    starting.start()
    starting.join(timeout=120)
    try:
        assert not starting.is_alive(), "the search waited for its controller's actor to be placed"
        pool, controller = started["pool"], started["search"].strategy
        assert pool.describe_location().startswith("1 Ray actor(s) on 1 node(s)")
        evaluator_ready, _ = ray.wait([pool.actors[0].__ray_ready__.remote()], timeout=30)
        controller_ready, _ = ray.wait([controller.actor.__ray_ready__.remote()], timeout=1)
        assert evaluator_ready and not controller_ready
    finally:
        for part in (started.get("pool"), getattr(started.get("search"), "strategy", None)):
            if part is not None:
                part.close()


def test_seeds_run_one_search_each_and_report_mean_and_std(tmp_path: Path) -> None:
    job = sampling_job(
        tmp_path, {"name": "random", "evaluations": 2}, {"name": "supernet", "bn_batches": 1},
        train={"epochs": 1}, seeds=[0, 1],
    )
    seeds = run_seeds(parse_job(job), echo=lambda _: None)
    results, summary = seeds.results, seeds.summary
    assert seeds.selection is None  # a sampling search's final section retrains within each search
    accs = [r.metrics["valid_acc"] for r in results]
    assert len(results) == 2 and results[0].run_id != results[1].run_id
    mean, std = summary["valid_acc"]
    assert mean == pytest.approx(statistics.mean(accs))
    assert std == pytest.approx(statistics.stdev(accs))
    assert (tmp_path / "runs" / "tiny-seed1" / "checkpoint.pt").is_file()
    # One registered model for the job, a version per seed; the job's name selects both in the report.
    client = MlflowClient(job["tracking"]["tracking_uri"])
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'raynas-tiny'")) == [1, 2]
    report = build_report(ResultsStore(tmp_path / "runs" / "results"), select=["tiny"])
    assert len(report.searches) == 2
    (summary_row,) = report.seeds
    assert summary_row.job == "tiny" and sorted(summary_row.seeds) == [0, 1]
    assert summary_row.text() == f"{summary_row.mean:.4f} ± {summary_row.std:.4f}"


def test_a_single_path_runs_only_its_own_candidates() -> None:
    # Candidates off the path are never called (their parameters get no gradient at all), in
    # every supernet with a single-path mode; the dense mixture would give them zero gradients.
    from raynas.spaces.fbnet import FbnetSpaceConfig

    configs = {
        "darts": DartsSpaceConfig(channels=4, layers=3, nodes=2),
        "nb201": Nb201SpaceConfig(channels=4, cells_per_stage=1),
        "fbnet": FbnetSpaceConfig(stem_channels=8, stem_stride=1, stage_channels=(8, 16), stage_depths=(1, 1),
                                  stage_strides=(1, 2), head_channels=16),
    }
    for name, cfg in configs.items():
        sp = SPACES.create(name, cfg)
        net = build_supernet(sp, DatasetInfo("x", 3, 10, 16))
        net.set_path(sp.sample(random.Random(0)))
        net(torch.randn(2, 3, 16, 16)).sum().backward()
        candidates = [p for n, p in net.named_parameters() if ".ops." in n or ".candidates." in n]
        assert any(p.grad is None for p in candidates), name
        assert any(p.grad is not None for p in candidates), name


@pytest.mark.parametrize("space", ["nexception", "convnext"])
def test_a_space_whose_networks_do_not_run_on_the_inputs_is_refused_before_the_search_starts(
    space: str, tmp_path: Path
) -> None:
    """NEXcepTion's and ConvNeXt's default networks downsample the 8x8 digits to nothing (ConvNeXt's
    macro space only for some architectures: its stem and stages are choices): one line naming the
    inputs and an architecture that fails, before any run or checkpoint is made (a traceback from the
    evaluator at a candidate, the search's run left unfinished, before)."""
    job = tiny_job(tmp_path, evaluator={"name": "training_free", "proxy": "ntk"})
    job["space"], job["strategy"] = {"name": space}, {"name": "random", "evaluations": 3}
    job.pop("train")
    with pytest.raises(ConfigError, match=rf"the '{space}' space's networks do not run on digits's 8x8 "
                                          r"inputs \(as .+: .+\): use a dataset of larger images"):
        run_search(parse_job(job), echo=lambda _: None)
    # Nothing but the lock a run holds while it works (raynas.runs.common.sole_writer).
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["checkpoint.pt.lock"]
    assert MlflowClient(job["tracking"]["tracking_uri"]).search_runs(
        [e.experiment_id for e in MlflowClient(job["tracking"]["tracking_uri"]).search_experiments()]) == []
