"""A recurrent cell's language model trained from scratch as DARTS's rnn/train.py trains it (the
``language_model`` evaluator): how DARTS chose its recurrent cell among four searches, "based on
its validation performance obtained by training from scratch for a short period" (Liu et al.,
ICLR 2019, Sec. 3.3; 300 epochs on PTB). raynas's retraining job of the paper's cell,
``jobs/retrain_darts_rnn_ptb.yaml``, is rnn/train.py's training (tests/test_retrain.py checks it
step by step); here the evaluator and ``final``'s retraining on text are checked against that job.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
import torch
from fixtures import write_random_ptb

from raynas.errors import ConfigError
from raynas.evaluators.language_model import LanguageModelConfig, LanguageModelEvaluator
from raynas.evaluators.scratch import candidate_seed
from raynas.runs.common import final_evaluator
from raynas.runs.jobs import load_job, load_retrain_job
from raynas.runs.retrain import RetrainWorker
from raynas.spaces import SPACES
from tests.conftest import tiny_job

JOBS = Path(__file__).parents[1] / "jobs"


def search_job(data: Path, *overrides: str) -> object:
    """DARTS's recurrent search job (jobs/darts_rnn_ptb.yaml) on ``data``, at 8 units and 2 nodes."""
    return load_job(JOBS / "darts_rnn_ptb.yaml", [
        f"data.path={data}", "data.bptt=5", "data.batch_size=4", "space.channels=8", "space.nodes=2",
        "execution.backend=local", *overrides,
    ])


def test_final_on_text_takes_the_settings_of_the_retraining_job_of_rnn_train_py(tmp_path: Path) -> None:
    """The DARTS recurrent job's ``final`` trains each cell with rnn/train.py's settings, as
    jobs/retrain_darts_rnn_ptb.yaml gives them (its comments quote the script's flags): the
    learning rate, decay, clip, AR and TAR, the switch to averaged SGD, the streams, the size;
    and the same dropouts (the space's: the same in rnn/train_search.py and rnn/train.py)."""
    data = write_random_ptb(tmp_path / "penn", train_words=200, valid_words=100)
    search = load_job(JOBS / "darts_rnn_ptb.yaml", [f"data.path={data}"])
    retrain = load_retrain_job(JOBS / "retrain_darts_rnn_ptb.yaml", [f"data.path={data}"])
    evaluator = final_evaluator(search)
    assert isinstance(evaluator, LanguageModelEvaluator)
    cfg, official = evaluator.config, retrain.retrain
    assert (cfg.epochs, search.final.top, search.seeds) == (300, 4, (0, 1, 2, 3))  # the paper's choice
    assert cfg.channels == official.channels == 850
    assert (cfg.learning_rate, cfg.weight_decay, cfg.grad_clip, cfg.ar, cfg.tar, cfg.nonmono) == (
        official.learning_rate, official.weight_decay, official.grad_clip, official.ar, official.tar,
        official.nonmono,
    )
    assert (cfg.streams, cfg.valid_streams) == (retrain.data.config.batch_size, official.valid_streams)
    dropouts = ("dropout", "dropouth", "dropoutx", "dropouti", "dropoute")
    assert [getattr(search.space.config, d) for d in dropouts] == [
        getattr(retrain.space.config, d) for d in dropouts
    ]
    # The evaluator's own defaults are the same (final's zeros keep them).
    assert dataclasses.replace(LanguageModelConfig(), epochs=300, channels=850) == cfg


def test_a_candidate_trains_as_the_retraining_job_trains_it_epoch_by_epoch(tmp_path: Path) -> None:
    """The evaluator's training of a cell is the retraining job's, seeded alike: the same
    validation losses epoch by epoch (through the switch to averaged SGD), the same network kept
    (the lowest validation loss), whose validation scores are the candidate's; the test text is
    never read."""
    data = write_random_ptb(tmp_path / "penn", train_words=400, valid_words=200)
    search = search_job(data)
    arch = SPACES.create("darts_rnn", search.space.config).sample(random.Random(3))
    settings = LanguageModelConfig(epochs=6, channels=8, streams=4, valid_streams=2, nonmono=1)
    evaluator = LanguageModelEvaluator(settings, search=search)
    epochs = [metrics for metrics, _ in evaluator.train(arch)]

    retrain = load_retrain_job(JOBS / "retrain_darts_rnn_ptb.yaml", [
        f"data.path={data}", "data.bptt=5", "data.batch_size=4", "space.nodes=2", "retrain.epochs=6",
        "retrain.channels=8", "retrain.valid_streams=2", "retrain.nonmono=1",
        f"seed={candidate_seed(search.seed, arch)}", "execution.backend=local",
    ])
    worker = RetrainWorker(retrain, arch.to_json())
    official = [worker.run_epoch()[0] for _ in range(6)]

    assert [m["valid_loss"] for m in epochs] == pytest.approx([m["valid_loss"] for m in official], abs=1e-6)
    assert [m["asgd"] for m in epochs] == [m["asgd"] for m in official]
    assert any(m["asgd"] for m in epochs), "averaged SGD took over within the six epochs"
    assert epochs[-1]["best_epoch"] == official[-1]["best_epoch"]
    assert not any(key.startswith("test_") or key.startswith("best_test_") for m in epochs for key in m)
    kept = worker.model.state_dict()
    assert evaluator.network is not None
    assert all(torch.allclose(v, kept[k], atol=1e-6) for k, v in evaluator.network.state_dict().items())

    result = evaluator.evaluate(arch, trial_id="t")
    assert result.objective == "valid_loglik" and result.budget == 6
    assert result.score == pytest.approx(-official[-1]["best_valid_loss"], abs=1e-6)
    assert result.metrics["valid_ppl"] == pytest.approx(math.exp(official[-1]["best_valid_loss"]), rel=1e-5)
    assert result.metrics["last_valid_loss"] == pytest.approx(official[-1]["valid_loss"], abs=1e-6)


def test_final_on_images_trains_on_its_own_batch_size(tmp_path: Path) -> None:
    """``final.batch_size`` sets the retraining's batches (0: the job's ``data.batch_size``)."""
    from raynas.data import search_loaders
    from raynas.runs.jobs import parse_job

    job = tiny_job(tmp_path, seeds=[0, 1], final={"top": 2, "epochs": 1, "batch_size": 8})
    config = parse_job(job)
    assert config.data.config.batch_size != 8
    evaluator = final_evaluator(config)
    train, _ = search_loaders(evaluator.data, seed=0)
    assert next(iter(train))[0].shape[0] == 8
    unset = dataclasses.replace(config.final, batch_size=0)
    plain = final_evaluator(dataclasses.replace(config, final=unset))
    assert plain.data.config.batch_size == config.data.config.batch_size


def test_the_language_model_evaluator_refuses_images(tmp_path: Path) -> None:
    from raynas.runs.jobs import parse_job

    config = parse_job(tiny_job(tmp_path))
    with pytest.raises(ConfigError, match="evaluator language_model trains language models on a text corpus"):
        LanguageModelEvaluator(LanguageModelConfig(), search=config)
