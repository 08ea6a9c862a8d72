"""Candidate training under Ray Tune: the searcher adapter driven as Tune drives it, the learning-rate
change PBT makes, and end-to-end searches with ASHA and PBT on a real local Ray cluster."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import ray
import torch
from conftest import tiny_job
from ray.tune.search import Searcher

from raynas.config import SearchConfig
from raynas.errors import ConfigError, RaynasError
from raynas.execution.controller import build_controller
from raynas.execution.tune import (
    CandidateLedger,
    ControllerSearcher,
    last_trial_state,
    make_scheduler,
    run_tune_search,
    trial_resources,
    with_learning_rate,
)
from raynas.runs.jobs import parse_job
from raynas.spaces.darts_genotype import published_genotype
from raynas.strategies.sampling.random_search import RandomConfig, RandomSearch
from raynas.types import Architecture, EvalResult, best_at_equal_budget

EPOCHS = 4


def nb201_job(tmp_path: Path, **sections: dict) -> SearchConfig:
    """Random search over a 4-channel NAS-Bench-201 network on 256 digits, 4 epochs per candidate."""
    job = tiny_job(tmp_path)
    job.update(
        space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
        strategy={"name": "random", "evaluations": 8},
        data={"name": "digits", "batch_size": 32, "limit": 256},
        evaluator={"name": "scratch", "epochs": EPOCHS, "learning_rate": 0.1, "channels": 8, "layers": 1},
        tune={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
        execution={"backend": "ray", "cpus_per_worker": 1, "concurrency": 2},
    )
    del job["train"]  # candidates are trained from scratch: no supernet
    for key, value in sections.items():
        job[key] = {**job[key], **value}
    return parse_job(job)


def epoch_result(trial: str, arch: Architecture, epoch: int, acc: float, **extra: object) -> dict:
    """A result of ``trial`` as the trainable reports it, with some of the keys Tune adds."""
    return {"trial_id": trial,
        "epoch": float(epoch), "valid_acc": acc, "train_loss": 1.0, "learning_rate": 0.1,
        "node": "cpu", "node_id": "abc", "arch": arch.key(), "training_iteration": epoch,
        "time_this_iter_s": 2.0, "time_total_s": 2.0 * epoch, "done": False, "pid": 1, **extra,
    }


# --- The searcher, driven by hand exactly as Tune's SearchGenerator calls it -----------------------


def test_searcher_tells_every_trial_once_stopped_failed_or_finished(tmp_path: Path) -> None:
    controller = build_controller(nb201_job(tmp_path, strategy={"evaluations": 3}))
    recorded: list[EvalResult] = []
    searcher = ControllerSearcher(controller=controller, epochs=EPOCHS, on_result=recorded.append)

    configs = {trial: searcher.suggest(trial) for trial in ("a", "b", "c")}
    archs = {trial: Architecture.from_json(cfg["architecture"]) for trial, cfg in configs.items()}
    assert searcher.suggest("d") is None  # all 3 asked, results pending: wait

    searcher.on_trial_result("a", epoch_result("a", archs["a"], 1, 0.3))
    searcher.on_trial_complete("a", epoch_result("a", archs["a"], 1, 0.3))  # ASHA stopped it at rung 1
    for epoch in range(1, EPOCHS + 1):
        searcher.on_trial_result("b", epoch_result("b", archs["b"], epoch, 0.5 + epoch / 100))
    searcher.on_trial_complete("b", epoch_result("b", archs["b"], EPOCHS, 0.54))
    searcher.on_trial_result("c", epoch_result("c", archs["c"], 1, 0.2))
    searcher.on_trial_complete("c", None, error=True)  # the worker crashed in epoch 2
    searcher.on_trial_complete("c", None, error=True)  # a repeated notification is ignored
    assert searcher.suggest("e") == Searcher.FINISHED

    assert [r.trial_id for r in recorded] == ["a", "b", "c"]
    assert [r.trial_id for r in controller.history] == ["a", "b", "c"]
    a, b, c = recorded
    assert a.architecture == archs["a"] and a.budget == 1 and a.stopped_early and a.score == 0.3
    assert a.metrics == {"epoch": 1.0, "valid_acc": 0.3, "train_loss": 1.0, "learning_rate": 0.1}
    assert a.node == "cpu" and a.seconds == 2.0
    assert b.budget == EPOCHS and not b.stopped_early and b.score == pytest.approx(0.54)
    assert b.seconds == 2.0 * EPOCHS  # the sum of its epochs' times
    assert c.metrics == {} and c.score == float("-inf") and not c.stopped_early and c.budget == 1
    assert controller.best().trial_id == "b"


def test_a_trial_lost_while_starting_trains_on_in_a_new_trial_and_is_told_once(tmp_path: Path) -> None:
    # Tune recovers a running trial whose node is lost, but fails for good one that was starting
    # or restoring then; RetryLostTrials tells the searcher which failures were such losses.
    controller = build_controller(nb201_job(tmp_path, strategy={"evaluations": 2}))
    searcher = ControllerSearcher(controller=controller, epochs=EPOCHS, retries=1,
                                  last_state=lambda trial: f"/ckpt/{trial}/state.pt")
    lost = Architecture.from_json(searcher.suggest("a")["architecture"])
    searcher.on_trial_result("a", epoch_result("a", lost, 1, 0.3))
    searcher.on_trial_complete("a", None, error=True)
    searcher.trial_failed("a", lost=True)
    assert controller.history == []  # not told: it trains on
    again = searcher.suggest("b")  # before the controller is asked for anything new
    assert Architecture.from_json(again["architecture"]) == lost
    assert again["resume_from"] == "/ckpt/a/state.pt"
    searcher.on_trial_complete("b", None, error=True)
    searcher.trial_failed("b", lost=True)  # lost again: its one retry is spent
    assert [(r.trial_id, r.score) for r in controller.history] == [("b", float("-inf"))]
    other = Architecture.from_json(searcher.suggest("c")["architecture"])
    assert other != lost
    searcher.on_trial_complete("c", None, error=True)
    searcher.trial_failed("c", lost=False)  # Tune used up its own retries: failed, not retried
    assert [r.trial_id for r in controller.history] == ["b", "c"]
    assert searcher.suggest("d") == Searcher.FINISHED


def test_ledger_tells_a_candidate_pbt_replaced_as_stopped_early(tmp_path: Path) -> None:
    controller = build_controller(nb201_job(tmp_path, strategy={"evaluations": 2}))
    ledger = CandidateLedger(controller=controller, epochs=EPOCHS)
    weak_arch, strong_arch = controller.ask(), controller.ask()
    ledger.start("weak", weak_arch)
    ledger.start("strong", strong_arch)
    ledger.observe("weak", epoch_result("weak", weak_arch, 1, 0.2))
    ledger.observe("strong", epoch_result("strong", strong_arch, 1, 0.8))
    # PBT copied the strong trial into the weak one: from now on it trains the strong candidate.
    ledger.start("weak", strong_arch)  # a restart keeps the candidate it was asked for
    for epoch in (2, 3):
        ledger.observe("weak", epoch_result("weak", strong_arch, epoch, 0.9))
    ledger.finish("weak", epoch_result("weak", strong_arch, EPOCHS, 0.9, learning_rate=0.12))
    ledger.finish("weak", epoch_result("weak", strong_arch, EPOCHS, 0.9))

    assert set(ledger.pending) == {"strong"}
    told, copy = controller.history
    assert told.trial_id == "weak" and told.architecture == weak_arch
    assert told.budget == 1 and told.stopped_early and told.score == 0.2
    assert copy.trial_id == "weak~1" and copy.architecture == strong_arch
    assert copy.budget == EPOCHS and not copy.stopped_early and copy.metrics["learning_rate"] == 0.12
    assert copy.seconds == 3 * 2.0  # the copy's own epochs 2-4


def test_ledger_ignores_the_result_pbt_copies_from_another_trial(tmp_path: Path) -> None:
    # PBT copied a finished trial into "weak", which then ends without training: Tune hands over
    # the other trial's last result, which is not an evaluation of a copy.
    controller = build_controller(nb201_job(tmp_path, strategy={"evaluations": 2}))
    ledger = CandidateLedger(controller=controller, epochs=EPOCHS)
    weak_arch, strong_arch = controller.ask(), controller.ask()
    ledger.start("weak", weak_arch)
    ledger.start("strong", strong_arch)
    ledger.observe("weak", epoch_result("weak", weak_arch, 2, 0.2))
    ledger.finish("strong", epoch_result("strong", strong_arch, EPOCHS, 0.8))
    ledger.finish("weak", epoch_result("strong", strong_arch, EPOCHS, 0.8))

    assert [(r.trial_id, r.budget, r.stopped_early) for r in controller.history] == [
        ("strong", EPOCHS, False), ("weak", 2, True),
    ]


def test_searcher_refuses_to_wait_forever(tmp_path: Path) -> None:
    config = nb201_job(tmp_path, strategy={"name": "evolution", "population_size": 2, "sample_size": 2,
                                           "evaluations": 4})
    controller = build_controller(config)
    searcher = ControllerSearcher(controller=controller, epochs=EPOCHS)
    searcher.suggest("a")
    searcher.suggest("b")
    assert searcher.suggest("c") is None  # evolution waits for its population
    searcher.pending.clear()  # results that will never come
    with pytest.raises(RaynasError, match="wait forever"):
        searcher.suggest("c")


def test_tune_needs_candidates_that_train(tmp_path: Path) -> None:
    job = nb201_job(tmp_path).to_dict()
    with pytest.raises(ConfigError, match=r"'tune' schedules candidates that train"):
        parse_job({**job, "evaluator": {"name": "supernet"}})  # refused where the job is loaded
    without_tune = {k: v for k, v in job.items() if k != "tune"}
    one_shot = parse_job({**without_tune, "evaluator": {"name": "supernet"}})
    with pytest.raises(ConfigError, match=r"evaluator\.name"):
        make_scheduler(one_shot)  # and by Tune itself


def test_schedulers_and_resources_follow_the_config(tmp_path: Path) -> None:
    asha = make_scheduler(nb201_job(tmp_path, tune={"grace_period": 2, "reduction_factor": 3}))
    assert (asha._max_t, asha._reduction_factor) == (EPOCHS, 3)
    assert [milestone for milestone, _ in asha._brackets[0]._rungs] == [2]  # 2 * 3 > 4: one rung
    pbt = make_scheduler(nb201_job(tmp_path, tune={"scheduler": "pbt", "perturbation_interval": 2}))
    assert pbt._perturbation_interval == 2 and set(pbt._hyperparam_mutations) == {"learning_rate"}
    assert type(make_scheduler(nb201_job(tmp_path, tune={"scheduler": "none"}))).__name__ == "FIFOScheduler"
    pinned = nb201_job(
        tmp_path, execution={"gpus_per_worker": 0.5, "accelerator": "A100", "cpus_per_worker": 2}
    )
    assert trial_resources(pinned) == {"cpu": 2.0, "gpu": 0.5, "A100": 0.5}


def test_a_new_learning_rate_rescales_the_rest_of_the_cosine_schedule() -> None:
    # CosineAnnealingLR (eta_min 0) follows lr(t) = lr0 * (1 + cos(pi t / T)) / 2 (Loshchilov &
    # Hutter, SGDR, ICLR 2017, eq. 5 without restarts); after a switch to lr1 at step k the rates
    # must be lr1 * (1 + cos(pi t / T)) / 2 for t > k.
    total, switch, lr0, lr1 = 8, 3, 0.1, 0.025
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr0, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    for _ in range(switch):
        optimizer.step()
        schedule.step()
    state = with_learning_rate(
        {"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict()}, lr1
    )
    optimizer = torch.optim.SGD([param], lr=lr0, momentum=0.9)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total)
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    rates = [optimizer.param_groups[0]["lr"]]
    for _ in range(switch, total):
        optimizer.step()
        schedule.step()
        rates.append(optimizer.param_groups[0]["lr"])
    expected = [lr1 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(switch, total + 1)]
    assert rates == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("where", ["folder", "s3"])
def test_the_checkpoint_a_killed_trial_goes_on_from_is_its_newest_whole_one(
    where: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # Ray writes a checkpoint's folder before its files (StorageContext.persist_current_checkpoint):
    # a trial killed meanwhile leaves the newest folder empty or its state.pt cut short.
    from raynas import storage

    if where == "s3":
        root = f"{request.getfixturevalue('s3_env').create_bucket('raynas-trial-states')}/tune"
    else:
        root = str(tmp_path / "tune")
    local = tmp_path / "state.pt"
    torch.save({"state": {"epoch": 1}, "weights": torch.zeros(2000)}, local)
    whole = local.read_bytes()

    def write(folder: str, data: bytes | None) -> str:
        uri = storage.join(root, "search", "t1", folder, "state.pt")
        fs, path = storage.filesystem(uri)
        fs.create_dir(path.rsplit("/", 1)[0])
        if data is not None:
            with fs.open_output_stream(path) as stream:
                stream.write(data)
        return uri

    assert last_trial_state(root, "search", "t1") is None
    first = write("checkpoint_000000", whole)
    assert last_trial_state(root, "search", "t1") == first
    write("checkpoint_000001", None)  # the folder, no file yet
    assert last_trial_state(root, "search", "t1") == first
    write("checkpoint_000001", whole[: len(whole) // 2])  # half the file
    assert last_trial_state(root, "search", "t1") == first
    write("checkpoint_000001", whole[:-1])  # all but its last byte
    assert last_trial_state(root, "search", "t1") == first
    second = write("checkpoint_000001", whole)
    assert last_trial_state(root, "search", "t1") == second


# --- End to end on a real local Ray cluster ------------------------------------------------------


@pytest.fixture(scope="module")
def ray_client(ray_head: str):
    ray.shutdown()  # a connection an earlier test left (no-op otherwise)
    ray.init(address=ray_head, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray_head
    finally:
        ray.shutdown()


@pytest.mark.integration
def test_asha_stops_some_candidates_early_and_every_one_is_recorded(tmp_path: Path, ray_client: str) -> None:
    config = nb201_job(tmp_path)
    controller = build_controller(config)
    recorded: list[EvalResult] = []
    run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))

    assert len(recorded) == 8 and recorded == controller.history
    assert Counter(r.trial_id for r in recorded).most_common(1)[0][1] == 1
    assert {r.architecture.key() for r in recorded} == controller.seen  # every asked one told
    stopped = [r for r in recorded if r.stopped_early]
    assert stopped and all(r.budget < EPOCHS for r in stopped)
    assert all(r.budget == EPOCHS for r in recorded if not r.stopped_early)
    for r in recorded:
        assert set(r.metrics) == {
            "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "params", "learning_rate",
        }
        assert r.node == "cpu" and r.metrics["epoch"] == r.budget and r.seconds > 0
    best = controller.best()
    assert best.score == max(r.score for r in recorded)
    assert best.score > 0.3 and not best.stopped_early  # well above chance (0.1) on the digits


@pytest.mark.integration
def test_tune_ranks_language_models_by_their_log_likelihood(tmp_path: Path, ray_client: str) -> None:
    """On text, Tune's scheduler and the controller are given the mean log-likelihood per token
    (``valid_loglik``, the negative log of the perplexity), the higher the better: ASHA keeps the
    trials of lowest perplexity, and the answer is the candidate of lowest perplexity."""
    from fixtures import FIXTURES

    job = tiny_job(tmp_path)
    job.update(
        space={"name": "darts_rnn", "channels": 8, "nodes": 2},
        strategy={"name": "random", "evaluations": 2},
        data={"name": "ptb", "path": str(FIXTURES["ptb"](tmp_path / "data")), "bptt": 4, "batch_size": 2},
        evaluator={"name": "scratch", "epochs": 2, "learning_rate": 1.0},
        tune={"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
        execution={"backend": "ray", "cpus_per_worker": 1, "concurrency": 2},
    )
    del job["train"]
    config = parse_job(job)
    controller = build_controller(config)
    recorded: list[EvalResult] = []
    run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))
    assert len(recorded) == 2 and {r.objective for r in recorded} == {"valid_loglik"}
    for r in recorded:
        assert r.score == pytest.approx(-r.metrics["valid_loss"])
        assert math.exp(-r.score) == pytest.approx(r.metrics["valid_ppl"])
        assert len(r.curve) == r.budget and r.curve[-1] == r.score  # the scheduler's, epoch by epoch
    best = controller.best()
    finished = [r for r in recorded if not r.stopped_early]
    assert best.metrics["valid_ppl"] == min(r.metrics["valid_ppl"] for r in finished)


class ProposesOneForeignCandidate(RandomSearch):
    """Random search whose second candidate is a DARTS genotype, which the nb201 space cannot
    build: its trial fails on the worker."""

    def propose(self) -> Architecture | None:
        if self.asked == 1:
            return published_genotype("DARTS_V2")
        return super().propose()


@pytest.mark.integration
def test_a_failed_trial_is_told_without_metrics_and_the_search_goes_on(
    tmp_path: Path, ray_client: str
) -> None:
    config = nb201_job(tmp_path, evaluator={"epochs": 1}, tune={"scheduler": "none"})
    space = build_controller(config).space
    controller = ProposesOneForeignCandidate(RandomConfig(evaluations=3), space=space, seed=0)
    recorded: list[EvalResult] = []
    run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))

    assert len(recorded) == 3 and recorded == controller.history
    (failed,) = [r for r in recorded if r.architecture.space == "darts"]
    assert failed.metrics == {} and failed.score == float("-inf") and not failed.stopped_early
    assert failed.budget == 0 and failed.node == "cpu"  # it ran, and ended without retries
    assert all(r.budget == 1 and r.score > 0 for r in recorded if r is not failed)


@pytest.mark.integration
def test_a_tune_search_keeps_tunes_json_and_csv_results_and_writes_no_tensorboard_events(
    tmp_path: Path, ray_client: str
) -> None:
    """Each trial keeps Tune's result.json and progress.csv; Tune's TensorBoard logger is not set
    up (no event file anywhere): its tensorboardX writers' exit handler, joining a thread per trial,
    hung a `raynas search` stopped by SIGUSR1 for good (seen once in a full run of the suite)."""
    import os

    config = nb201_job(tmp_path, evaluator={"epochs": 1}, tune={"scheduler": "none"},
                       strategy={"evaluations": 2})
    run_tune_search(config, build_controller(config), on_result=lambda _: None,
                    storage_path=str(tmp_path / "tune"))
    results = list((tmp_path / "tune").rglob("result.json"))
    assert len(results) == 2  # one per trial
    for result in results:
        assert result.read_text().strip() and (result.parent / "progress.csv").read_text().strip()
    assert not list((tmp_path / "tune").rglob("events.out.tfevents*"))
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ  # the switch is the search's only


@pytest.mark.integration
def test_hyperband_stops_candidates_at_its_rungs(tmp_path: Path, ray_client: str) -> None:
    # HyperBand with max_t 4, eta 2 (Li et al. 2018, Algorithm 1): the first bracket trains
    # 3 candidates fully; the next trains 3 for 2 epochs and goes on with the best of them, 2 in
    # Tune (ceil(3 / 2); the paper's floor would keep 1).
    config = nb201_job(tmp_path, strategy={"evaluations": 6}, tune={"scheduler": "hyperband"})
    controller = build_controller(config)
    recorded: list[EvalResult] = []
    run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))

    assert len(recorded) == 6 and recorded == controller.history
    assert {r.architecture.key() for r in recorded} == controller.seen
    assert sorted(r.budget for r in recorded) == [2, 4, 4, 4, 4, 4]
    assert [r.stopped_early for r in recorded].count(True) == 1


@pytest.mark.integration
def test_pbt_copies_and_perturbs_candidates_and_records_every_one(tmp_path: Path, ray_client: str) -> None:
    config = nb201_job(
        tmp_path, strategy={"evaluations": 4}, evaluator={"epochs": 3},
        tune={"scheduler": "pbt", "perturbation_interval": 1},
    )
    controller = build_controller(config)
    recorded: list[EvalResult] = []
    run_tune_search(config, controller, on_result=recorded.append, storage_path=str(tmp_path / "tune"))

    assert recorded == controller.history
    assert len({r.trial_id for r in recorded}) == len(recorded)
    asked = [r for r in recorded if "~" not in r.trial_id]
    copies = [r for r in recorded if "~" in r.trial_id]
    assert len(asked) == 4 and {r.architecture.key() for r in asked} == controller.seen
    # Two populations of two trials side by side. Under PBT no scheduler stops a trial: a
    # candidate ends early only when PBT copies the other trial into its trial, which happens to
    # the worse of two once the better one has a checkpoint from its own perturbation step.
    replaced = [r for r in asked if r.stopped_early]
    assert replaced and all(r.budget < 3 for r in replaced)
    assert {p.name for p in (tmp_path / "tune").iterdir()} == {"tiny_pbt000", "tiny_pbt001"}
    assert all(r.budget == 3 for r in asked if not r.stopped_early)
    for copy in copies:  # a copy goes on from the other trial's checkpoint with a perturbed rate
        assert copy.trial_id.split("~")[0] in {r.trial_id for r in replaced}
        assert copy.architecture.key() in controller.seen and (copy.budget == 3 or copy.stopped_early)
        assert copy.metrics["learning_rate"] != 0.1


# --- Candidates fine-tuned from a one-shot supernet's weights, as Tune trials ------------------------


def finetune_job(tmp_path: Path, **execution: object) -> dict:
    """SPOS on a 4-channel NAS-Bench-201 supernet trained one epoch; candidates then fine-tuned
    from its weights for up to 2 epochs under ASHA."""
    job = tiny_job(tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
                   data={"name": "digits", "batch_size": 32, "limit": 192}, train={"epochs": 1})
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    job["strategy"] = {"name": "spos", "population_size": 2, "sample_size": 2, "evaluations": 4}
    job["evaluator"] = {"name": "supernet", "bn_batches": 1, "epochs": 2, "learning_rate": 0.05}
    job["tune"] = {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2}
    job["execution"] = {"backend": "ray", "cpus_per_worker": 1, "concurrency": 2, **execution}
    return job


def test_fine_tuning_starts_from_the_inherited_weights_and_trains_only_the_path(tmp_path: Path) -> None:
    from raynas.evaluators.supernet import SupernetEvaluator
    from raynas.spaces.nb201 import Nb201Arch

    config = parse_job(finetune_job(tmp_path))
    space = build_controller(config).space
    heir = SupernetEvaluator(config.evaluator.config, search=config)
    initial = {k: v.clone() for k, v in heir.weights().items()}
    torch.manual_seed(1)  # the weights a trained supernet passes on: any but the initial ones
    inherited = {k: v + 0.01 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in initial.items()}
    heir.load_weights(inherited)
    chain = space.decode([3, 0, 3, 0, 0, 3])  # conv3x3 on 0->1->2->3, nothing else
    assert isinstance(chain, Nb201Arch)
    metrics, state = next(heir.finetune(chain))
    assert metrics["epoch"] == 1 and 0.0 <= metrics["valid_acc"] <= 1.0
    tuned = state["model"]
    ops = [k for k in inherited if ".ops." in k and tuned[k].is_floating_point()]
    changed = {k for k in ops if not torch.equal(tuned[k], inherited[k])}
    assert changed and all(".ops.3." in k for k in changed)  # only the path's conv3x3 trained
    # What it did not train is what it inherited, not the initial weights.
    kept = [k for k in ops if k not in changed]
    assert kept and all(not torch.equal(tuned[k], initial[k]) for k in kept)
    assert heir.supernet.path is None  # the supernet is left without a fixed path


@pytest.mark.integration
def test_asha_fine_tunes_candidates_from_the_supernet_and_records_their_budgets(
    tmp_path: Path, ray_head: str
) -> None:
    from raynas.runs import run_search
    from raynas.runs.sampling import search_state

    ray.shutdown()  # the driver connects by itself, as `raynas search` does
    job = finetune_job(tmp_path, address=ray_head)
    lines: list[str] = []
    result = run_search(parse_job(job), echo=lines.append)
    state = search_state(result.checkpoint)
    told = [EvalResult.from_dict(r) for r in state["results"]]
    assert len(told) == 4 and len({r.trial_id for r in told}) == 4
    trials = list((tmp_path / "runs" / "tiny" / "tune" / "tiny").glob("*/result.json"))
    assert len(trials) == 4  # each candidate a Tune trial
    for r in told:  # each fine-tuned, its budget the epochs it got, its curve epoch by epoch
        assert r.budget in (1.0, 2.0) and r.stopped_early == (r.budget < 2)
        assert len(r.curve) == r.budget and r.curve[-1] == r.score
    assert any(r.budget == 2 for r in told)
    assert result.metrics["valid_acc"] == best_at_equal_budget(told).score  # type: ignore[union-attr]
