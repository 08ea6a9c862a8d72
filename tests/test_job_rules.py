"""Settings a search would silently ignore are refused where the job is loaded, in one line that
names the key, or made to work: ``train`` only where a supernet is trained, ``tune`` only where
candidates train (from scratch, or fine-tuned from a supernet's weights, on Ray),
``execution.concurrency`` only where candidates are evaluated at once; and HyperBand trains
at most ``execution.concurrency`` trials at a time."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from conftest import tiny_job

from raynas.errors import ConfigError
from raynas.execution.tune import RunningLimitedHyperBand, make_scheduler
from raynas.runs.jobs import parse_job


def sampling(evaluator: str, **sections: Any) -> dict[str, Any]:
    job = tiny_job(Path("/tmp"), space={"name": "nb201", "channels": 4, "cells_per_stage": 1})
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"] = {"name": "random", "evaluations": 2}
    job["evaluator"] = {"name": evaluator}
    job.pop("train")
    job.update(sections)
    return job


def test_a_train_section_where_no_supernet_is_trained_is_refused() -> None:
    for evaluator in ("scratch", "training_free"):
        with pytest.raises(ConfigError, match=r"config section 'train'.*remove it"):
            parse_job(sampling(evaluator, train={"epochs": 3}))
    assert parse_job(sampling("supernet", train={"epochs": 3})).train.epochs == 3


def test_a_tune_section_where_no_candidate_trains_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"config section 'tune' schedules candidates that train"):
        parse_job(sampling("supernet", tune={"scheduler": "asha"}))  # inherited weights, as they are
    with pytest.raises(ConfigError, match=r"config section 'tune' schedules candidates that train"):
        parse_job(sampling("training_free", tune={"scheduler": "asha"}))
    with pytest.raises(ConfigError, match=r"config section 'tune' schedules candidates that train"):
        parse_job(tiny_job(Path("/tmp"), tune={"scheduler": "asha"}))  # a gradient search
    finetuned = sampling("supernet", tune={"scheduler": "asha"}, execution={"backend": "ray"})
    finetuned["evaluator"]["epochs"] = 2
    assert parse_job(finetuned).evaluator.config.epochs == 2


def test_fine_tuning_inherited_weights_without_tune_is_refused() -> None:
    job = sampling("supernet")
    job["evaluator"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"'evaluator.epochs' fine-tunes candidates as Ray Tune trials"):
        parse_job(job)
    job["tune"] = {"enabled": False}
    with pytest.raises(ConfigError, match=r"'evaluator.epochs' fine-tunes candidates as Ray Tune trials"):
        parse_job(job)


def test_tune_in_this_process_is_refused_unless_disabled() -> None:
    with pytest.raises(ConfigError, match=r"'tune' needs execution.backend: ray.*tune.enabled: false"):
        parse_job(sampling("scratch", tune={"scheduler": "asha"}))
    parse_job(sampling("scratch", tune={"enabled": False}))
    parse_job(sampling("scratch", tune={"scheduler": "asha"}, execution={"backend": "ray"}))


def test_concurrency_is_refused_where_candidates_cannot_be_evaluated_at_once() -> None:
    with pytest.raises(ConfigError, match=r"'execution.concurrency' is 2.*backend: local"):
        parse_job(sampling("training_free", execution={"backend": "local", "concurrency": 2}))
    with pytest.raises(ConfigError, match=r"'execution.concurrency' is for sampling searches"):
        parse_job(tiny_job(Path("/tmp"), execution={"backend": "ray", "concurrency": 2}))


def test_hyperband_lets_go_a_paused_trial_whose_bracket_waits_for_peers_that_are_gone() -> None:
    """Tune's HyperBand skips a bracket when a trial completes while the bracket is marked as being
    processed; its paused trial then waits for peers that are gone, and with nothing running the
    search would wait forever (a resumed HyperBand search did). raynas's processes the bracket
    when nothing runs or waits: here the trial paused at max_t is stopped, its result final."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import HyperBandScheduler

    scheduler = RunningLimitedHyperBand(running=2, time_attr="training_iteration", max_t=4,
                                        reduction_factor=2)
    scheduler.set_search_properties("valid_acc", "max")
    stopped: list[Any] = []
    paused, done = (Trial("stub", config={}, stub=True, trial_id=name) for name in ("paused", "done"))
    controller = SimpleNamespace(
        get_trials=lambda: [paused, done],
        stop_trial=lambda trial: (stopped.append(trial), trial.set_status(Trial.TERMINATED)),
    )
    for trial in (paused, done):
        scheduler.on_trial_add(controller, trial)
    bracket = scheduler._trial_info[paused][0]
    assert scheduler._trial_info[done][0] is bracket and bracket._cumul_r == 4
    paused.set_status(Trial.RUNNING)
    actions = [scheduler.on_trial_result(controller, paused, {"training_iteration": i, "valid_acc": 0.5})
               for i in range(1, 5)]
    assert actions[-1] == "PAUSE"  # at the milestone, waiting for its peer
    paused.set_status(Trial.PAUSED)
    bracket.is_being_processed = True
    done.set_status(Trial.TERMINATED)
    scheduler.on_trial_complete(controller, done, {"training_iteration": 1, "valid_acc": 0.1})
    assert HyperBandScheduler.choose_trial_to_run(scheduler, controller) is None  # Tune's: stuck
    assert scheduler.choose_trial_to_run(controller) is None
    assert stopped == [paused] and paused.status == Trial.TERMINATED


def test_synchronous_pbt_lets_a_paused_trial_go_on_once_nothing_runs_or_waits() -> None:
    """A paused trial past the perturbation point whose peer completed (a resumed PBT search):
    Tune's synchronous PBT offers nothing, for ever; raynas's lets it go on."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import PopulationBasedTraining

    from raynas.execution.tune import PeerlessSynchronousPBT

    config = parse_job(sampling("scratch", tune={"scheduler": "pbt"}, execution={"backend": "ray"}))
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, PeerlessSynchronousPBT)
    scheduler.set_search_properties("valid_acc", "max")
    paused, done = (Trial("stub", config={}, stub=True, trial_id=name) for name in ("paused", "done"))
    controller = SimpleNamespace(get_trials=lambda: [paused, done], search_alg=None)
    for trial in (paused, done):
        scheduler.on_trial_add(controller, trial)
    paused.set_status(Trial.PAUSED)
    done.set_status(Trial.TERMINATED)
    scheduler._trial_state[paused].last_train_time = 2
    scheduler._next_perturbation_sync = 2  # reached: it waits for a peer to reach it too
    assert PopulationBasedTraining.choose_trial_to_run(scheduler, controller) is None  # Tune's: stuck
    assert scheduler.choose_trial_to_run(controller) is paused
    running = Trial("stub", config={}, stub=True, trial_id="running")
    running.set_status(Trial.RUNNING)
    busy = SimpleNamespace(get_trials=lambda: [paused, running], search_alg=None)
    scheduler.on_trial_add(busy, running)
    assert scheduler.choose_trial_to_run(busy) is None  # a trial still trains: the peer may come


def test_hyperband_starts_a_trial_only_while_fewer_than_concurrency_train(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.tune.schedulers import HyperBandScheduler

    config = parse_job(sampling(
        "scratch", tune={"scheduler": "hyperband"}, execution={"backend": "ray", "concurrency": 2}
    ))
    scheduler = make_scheduler(config)
    assert isinstance(scheduler, RunningLimitedHyperBand) and scheduler.running == 2
    # HyperBand's own choice (a pending trial, or a paused one its bracket lets go on) is "next".
    monkeypatch.setattr(HyperBandScheduler, "choose_trial_to_run", lambda self, controller: "next")

    def choose(statuses: list[str]) -> Any:
        trials = [SimpleNamespace(status=status) for status in statuses]
        return scheduler.choose_trial_to_run(SimpleNamespace(get_trials=lambda: trials))

    assert choose(["RUNNING", "PAUSED", "PENDING"]) == "next"
    assert choose(["RUNNING", "RUNNING", "PAUSED", "PENDING"]) is None  # two train already
    assert choose(["PAUSED", "PAUSED", "PENDING"]) == "next"  # paused trials do not count


@pytest.mark.parametrize(
    ("space", "data", "says"),
    [
        ("darts", {"name": "ptb", "path": "/tmp"},
         "dataset 'ptb' holds token text, but the 'darts' space's networks read images: use an image "
         "dataset"),
        ("darts_rnn", {"name": "digits"},
         "dataset 'digits' holds images, but the 'darts_rnn' space's networks read token ids (language "
         "models): use a text dataset (ptb, wikitext2)"),
    ],
)
def test_a_space_and_a_dataset_of_other_inputs_are_refused_by_search_train_and_describe(
    space: str, data: dict[str, Any], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CNN space on Penn Treebank's text searched until its first batch met a convolution (a
    traceback); a recurrent space on images was a vocabulary of 10 "words" in `describe`."""
    from conftest import answers_without_heavy_imports, write_job

    from raynas.cli import main
    from raynas.runs.jobs import parse_retrain_job

    job = tiny_job(tmp_path)
    job["space"], job["data"] = {"name": space}, data
    with pytest.raises(ConfigError) as refused:
        parse_job(job)
    assert str(refused.value) == says
    [[status, err]] = answers_without_heavy_imports([["search", str(write_job(tmp_path, job))]])
    assert (status, err) == (2, f"raynas: error: {says}\n")  # from the job file, before torch loads
    retraining = {"name": "r", "architecture": "DARTS_V2", "space": {"name": space}, "data": data}
    with pytest.raises(ConfigError) as refused:
        parse_retrain_job(retraining)
    assert str(refused.value) == says
    capsys.readouterr()
    assert main(["describe", "--space", space, "--genotype", "DARTS_V2", "--dataset", data["name"]]) == 2
    assert capsys.readouterr().err == f"raynas: error: {says}\n"


@pytest.mark.parametrize(
    ("space", "data", "says"),
    [
        ("nb201", {"name": "cityscapes", "path": "/tmp"},
         "dataset 'cityscapes' labels every pixel (segmentation), but the 'nb201' space's search networks "
         "classify whole images: search it with auto_deeplab, or retrain a cell found on images on it"),
        ("darts", {"name": "cityscapes", "path": "/tmp"}, "but the 'darts' space's search networks classify"),
        ("auto_deeplab", {"name": "digits"},
         "dataset 'digits' labels whole images, but the 'auto_deeplab' space's search networks label every "
         "pixel: use a segmentation dataset"),
    ],
)
def test_a_search_whose_space_predicts_other_labels_than_its_dataset_holds_is_refused(
    space: str, data: dict[str, Any], says: str, tmp_path: Path
) -> None:
    """A classifier's supernet on Cityscapes, Auto-DeepLab's on the digits: each searched until
    the loss met labels of the other shape (a traceback)."""
    import re

    job = tiny_job(tmp_path)
    job["space"], job["data"] = {"name": space}, data
    with pytest.raises(ConfigError, match=re.escape(says)):
        parse_job(job)
