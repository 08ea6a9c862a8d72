"""DARTS's choice among its searches: "we run DARTS four times and pick the best cell based on
its validation performance obtained by training from scratch for a short period" (Liu et al.,
2019, Sec. 3.3): a job with ``seeds`` and ``final`` retrains the best seeds' cells and answers
with the best retrained, checkpointed after each retraining."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pytorch
import pytest
import torch
from conftest import tiny_job
from fixtures import write_random_ptb
from mlflow.tracking import MlflowClient

from raynas.errors import ConfigError
from raynas.evaluators.scratch import ScratchEvaluator
from raynas.runs.common import final_evaluator
from raynas.runs.jobs import parse_job
from raynas.runs.search import run_seeds
from raynas.tracking.mlflow_tracker import MlflowTracker
from raynas.types import Architecture


def seeds_job(tmp_path: Path, **sections: Any) -> dict[str, Any]:
    return tiny_job(tmp_path, seeds=[0, 1, 2], train={"epochs": 1},
                    final={"top": 2, "epochs": 1, "channels": 4, "layers": 2, "learning_rate": 0.05},
                    **sections)


def test_the_best_seeds_cells_are_retrained_and_the_best_retrained_is_the_answer_after_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = parse_job(seeds_job(tmp_path))
    evaluate, calls = ScratchEvaluator.evaluate, []

    def crash_on_the_second(self: ScratchEvaluator, arch: Architecture, **kw: Any) -> Any:
        calls.append(kw["trial_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the driver dies during the second retraining
        return evaluate(self, arch, **kw)

    start, made = MlflowTracker.start, []

    def start_and_die(self: MlflowTracker, job: Any, **kw: Any) -> str:
        run_id = start(self, job, **kw)
        if job.name.endswith("-selection") and not made:
            made.append(run_id)
            raise KeyboardInterrupt  # the driver dies once the choice's run is made, unnamed yet
        return run_id

    monkeypatch.setattr(MlflowTracker, "start", start_and_die)
    with pytest.raises(KeyboardInterrupt):
        run_seeds(config, echo=lambda _: None)
    monkeypatch.setattr(ScratchEvaluator, "evaluate", crash_on_the_second)
    with pytest.raises(KeyboardInterrupt):
        run_seeds(config, echo=lambda _: None)
    lines: list[str] = []
    seeds = run_seeds(config, echo=lines.append)
    chosen = seeds.selection
    assert chosen is not None
    # The two seeds whose searches scored best (the first listed of equals), ranked by search.
    order = sorted(range(3), key=lambda i: (-seeds.results[i].metrics["valid_acc"], i))
    top = [config.seeds[i] for i in order[:2]]
    assert calls == [f"select-seed{top[0]}", f"select-seed{top[1]}", f"select-seed{top[1]}"]
    assert "Resuming the choice among seeds: 1 of 2 retrained" in lines
    assert sorted(chosen.retrained) == sorted(top)
    for seed in top:
        assert chosen.retrained[seed].architecture == seeds.results[config.seeds.index(seed)].architecture
    best = max(top, key=lambda s: (chosen.retrained[s].metrics["valid_acc"], -s))
    assert chosen.seed == best and chosen.result == chosen.retrained[best]
    # Retrained with final's budget and the job's seed alone: the same training gives the same score.
    monkeypatch.setattr(ScratchEvaluator, "evaluate", evaluate)
    evaluator = final_evaluator(config)
    again = evaluator.evaluate(chosen.result.architecture)
    assert again.metrics["valid_acc"] == chosen.result.metrics["valid_acc"] and again.budget == 1
    # Each seed's search retrained nothing itself.
    assert all(not any(k.startswith("retrain") for k in r.metrics) for r in seeds.results)

    client = MlflowClient(config.tracking.tracking_uri)
    run = client.get_run(chosen.run_id)
    assert run.info.run_name == "tiny-selection" and run.info.status == "FINISHED"
    # The run made before the first death is the one the choice went on in: no second one.
    assert chosen.run_id == made[0]
    assert len(client.search_runs([run.info.experiment_id], "attributes.run_name = 'tiny-selection'")) == 1
    assert run.data.tags["raynas.kind"] == "selection"
    assert run.data.metrics["final.valid_acc"] == chosen.result.metrics["valid_acc"]
    assert run.data.metrics["final.seed"] == best
    children = client.search_runs([run.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{chosen.run_id}'")
    assert sorted(c.data.tags["raynas.trial_id"] for c in children) == sorted(f"select-seed{s}" for s in top)
    # The chosen, trained network is the newest version of the job's model (one per seed before it).
    versions = sorted(client.search_model_versions("name = 'raynas-tiny'"), key=lambda v: int(v.version))
    assert [int(v.version) for v in versions] == [1, 2, 3, 4] and chosen.registered_version == "4"
    assert versions[-1].tags["raynas.trained"] == "true"
    assert versions[-1].tags["raynas.architecture_key"] == chosen.result.architecture.key()
    mlflow.set_tracking_uri(config.tracking.tracking_uri)
    registered = mlflow.pytorch.load_model("models:/raynas-tiny/4", map_location="cpu")
    trained = evaluator.network.state_dict()
    assert registered.state_dict().keys() == trained.keys()
    assert all(torch.equal(v, trained[k]) for k, v in registered.state_dict().items())

    # Run a third time: nothing is searched or retrained again.
    calls.clear()
    monkeypatch.setattr(ScratchEvaluator, "evaluate", crash_on_the_second)
    lines.clear()
    third = run_seeds(config, echo=lines.append)
    assert calls == [] and third.selection is not None and third.selection.seed == best
    assert third.selection.run_id == chosen.run_id
    assert any(line.startswith("The choice among seeds was made before") for line in lines)


def test_the_seeds_of_a_search_on_text_are_chosen_by_perplexity(tmp_path: Path) -> None:
    """DARTS picks its recurrent cell among four searches by validation perplexity: the seeds
    retrained are those whose searches reached the highest log-likelihood per token (the lowest
    perplexity), not the best next-word accuracy, and the answer is the retrained network of the
    lowest perplexity; the console shows log-likelihoods with their perplexities. Each cell is
    retrained as rnn/train.py trains it (the language_model evaluator, checked against the
    retraining job in tests/test_language_model_evaluator.py): scored by the network of its
    lowest validation loss, the test text never read."""
    job = seeds_job(tmp_path)
    job["final"] = {"top": 2, "epochs": 2, "channels": 8, "batch_size": 4}
    data = write_random_ptb(tmp_path / "data", train_words=300, valid_words=300)
    job.update(space={"name": "darts_rnn", "channels": 8, "nodes": 2},
               data={"name": "ptb", "path": str(data), "bptt": 4, "batch_size": 2, "limit": 32})
    config = parse_job(job)
    lines: list[str] = []
    seeds = run_seeds(config, echo=lines.append)
    chosen = seeds.selection
    assert chosen is not None
    order = sorted(range(3), key=lambda i: (-seeds.results[i].metrics["valid_loglik"], i))
    assert sorted(chosen.retrained) == sorted(config.seeds[i] for i in order[:2])
    assert all(r.objective == "valid_loglik" for r in chosen.retrained.values())
    for r in chosen.retrained.values():
        assert r.budget == 2 and "asgd" in r.metrics  # rnn/train.py's trainer, two epochs
        assert r.metrics["valid_loss"] == r.metrics["best_valid_loss"] and r.score == -r.metrics["valid_loss"]
        assert not any(key.startswith(("test_", "best_test_")) for key in r.metrics)
    best = max(chosen.retrained, key=lambda s: (-chosen.retrained[s].metrics["valid_ppl"], -s))
    assert chosen.seed == best
    retrained = [line for line in lines if line.startswith("seed ") and " retrained: " in line]
    assert len(retrained) == 2
    assert all("valid_loglik -" in line and "(perplexity " in line for line in retrained)


def test_final_of_a_darts_job_needs_seeds(tmp_path: Path) -> None:
    job = tiny_job(tmp_path, final={"top": 2})
    with pytest.raises(ConfigError, match="add seeds, or remove the section"):
        parse_job(job)


def test_the_darts_cifar10_jobs_choice_trains_each_cell_as_the_retraining_job_of_train_py() -> None:
    """jobs/darts_cifar10.yaml's choice among four searches trains each cell for 100 epochs (the
    paper's Sec. 3.3) with cnn/train.py's settings, as jobs/retrain_darts_cifar10.yaml gives them
    (checked against the script in tests/test_retrain.py): the evaluation network's size, SGD's
    rate, momentum, decay and clip, and its batch of 96."""
    from raynas.runs.jobs import load_job, load_retrain_job

    jobs = Path(__file__).parents[1] / "jobs"
    search = load_job(jobs / "darts_cifar10.yaml")
    official = load_retrain_job(jobs / "retrain_darts_cifar10.yaml")
    evaluator = final_evaluator(search)
    assert isinstance(evaluator, ScratchEvaluator)
    cfg, train = evaluator.config, official.retrain
    assert (search.seeds, search.final.top, cfg.epochs) == ((0, 1, 2, 3), 4, 100)
    assert (cfg.channels, cfg.layers) == (train.channels, train.layers) == (36, 20)
    assert (cfg.learning_rate, cfg.momentum, cfg.weight_decay, cfg.grad_clip) == (
        train.learning_rate, train.momentum, train.weight_decay, train.grad_clip
    )
    assert evaluator.data.config.batch_size == official.data.config.batch_size == 96
    assert search.data.config.batch_size == 64  # the search's own (train_search.py's)
