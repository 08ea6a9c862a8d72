"""Retraining a found architecture from scratch: lineage to the search run, the Model Registry,
resuming, transfer to other data, and clear errors for what cannot be retrained."""

from __future__ import annotations

import copy
import math
import os
import re
import signal
from pathlib import Path

import mlflow.models
import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from raynas.data import DATASETS
from raynas.errors import ArchitectureError, ConfigError
from raynas.runs import run_search
from raynas.runs.jobs import load_job, load_retrain_job, parse_job, parse_retrain_job
from raynas.runs.retrain import _loaders, run_retrain
from raynas.train.loop import fit, train_epoch
from raynas.train.segmentation import mean_cross_entropy
from tests.conftest import driver_processes, mlflow_store, tiny_job, write_job
from tests.fixtures import write_ptb
from tests.test_data import write_batch

ALL_CONV = "|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|"

JOBS = Path(__file__).parents[1] / "jobs"


def retrain_job(tmp_path: Path, architecture: str, **sections: object) -> dict:
    job = {
        "name": "retrain-tiny",
        "architecture": architecture,
        "space": {"name": "nb201", "channels": 4, "cells_per_stage": 1},
        "data": {"name": "digits", "batch_size": 32, "limit": 160, "train_portion": 0.8},
        "retrain": {"epochs": 2, "channels": 4, "layers": 1, "learning_rate": 0.05},
        "tracking": {
            "experiment": "tests", "tracking_uri": mlflow_store(tmp_path),
            "output_dir": str(tmp_path / "runs"),
        },
    }
    job.update(sections)
    return job


def nb201_search(tmp_path: Path) -> str:
    job = tiny_job(tmp_path, space={"name": "nb201", "channels": 4, "cells_per_stage": 1},
                   data={"name": "digits", "batch_size": 16, "limit": 64}, train={"epochs": 1})
    for key in ("layers", "nodes"):
        job["space"].pop(key)
    return run_search(parse_job(job), echo=lambda _: None).run_id


def test_retraining_a_search_result_is_tied_to_its_search_and_registered(tmp_path: Path) -> None:
    search_run = nb201_search(tmp_path)
    config = parse_retrain_job(retrain_job(tmp_path, f"run:{search_run}"))
    result = run_retrain(config, echo=lambda _: None)
    client = MlflowClient(config.tracking.tracking_uri)
    source = client.get_run(search_run)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raynas.lineage.source_run_id"] == search_run
    assert run.data.tags["raynas.lineage.kind"] == "retrain"  # searched and retrained on digits
    assert run.data.tags["raynas.lineage.architecture_key"] == source.data.tags["raynas.architecture_key"]
    assert result.architecture.key() == source.data.tags["raynas.architecture_key"]
    assert len(client.get_metric_history(result.run_id, "test_acc")) == 2
    version = client.get_model_version("raynas-retrain-tiny", result.registered_version)
    assert version.tags["raynas.architecture_key"] == result.architecture.key()
    assert version.tags["raynas.trained"] in ("true", "True")


def test_an_interrupted_retraining_resumes_after_its_last_epoch_with_its_own_config(tmp_path: Path) -> None:
    job = retrain_job(tmp_path, "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+"
                                "|skip_connect~0|none~1|nor_conv_3x3~2|")
    config = parse_retrain_job(job)
    reference = run_retrain(config, echo=lambda _: None, fresh=True)

    def crash_after_first_epoch(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_retrain(config, echo=crash_after_first_epoch, fresh=True)
    changed = parse_retrain_job({**job, "retrain": {**job["retrain"], "learning_rate": 0.2}})
    with pytest.raises(ConfigError, match=re.escape(
            "belongs to an unfinished retraining of 'retrain-tiny' with another config "
            "(retrain.learning_rate was 0.05, is 0.2); pass --fresh to start over")):
        run_retrain(changed, echo=lambda _: None)
    lines: list[str] = []
    resumed = run_retrain(config, echo=lines.append)
    assert any(line.startswith("Resuming") for line in lines)
    assert next(line for line in lines if line.startswith("epoch")).startswith("epoch   2/")
    assert resumed.metrics == pytest.approx(reference.metrics, rel=1e-5, abs=1e-6)


@pytest.mark.integration
def test_a_retraining_on_ray_outlives_a_lost_worker_and_ends_as_an_undisturbed_one(
    tmp_path: Path, ray_head: str
) -> None:
    """Its worker killed after epoch 1: the retraining ended ("run the same command again"). Now
    it says so in one line, a new worker goes on from epoch 1's state, and the retraining ends as
    the same retraining undisturbed (in this process) ends. (A worker lost while it sets up is
    started again as a search's is: tests/test_search.py.)"""
    import ray
    from test_quiet_failures import WorkerLosses

    reference = run_retrain(parse_retrain_job(retrain_job(tmp_path / "local", ALL_CONV)), echo=lambda _: None)
    on_ray = {"backend": "ray", "address": ray_head}
    config = parse_retrain_job(retrain_job(tmp_path, ALL_CONV, execution=on_ray))
    losses = WorkerLosses(ray_head, at="epoch   1/", in_setup=False)
    try:
        result = run_retrain(config, echo=losses.echo)
    finally:
        ray.shutdown()
    assert losses.said() == ["restarting the worker from epoch 1 (1 of at most 10 restarts)"]
    assert [line.split()[1] for line in losses.lines if line.startswith("epoch")] == ["1/2", "2/2"]
    assert result.metrics == reference.metrics
    assert MlflowClient(config.tracking.tracking_uri).get_run(result.run_id).info.status == "FINISHED"


@pytest.mark.parametrize("recurrent", [False, True], ids=["image classifier", "language model"])
def test_a_retraining_crashed_after_its_last_epoch_registers_the_trained_network(
    recurrent: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its last epoch's checkpoint, before its network was registered: run again,
    the retraining has no epoch left to train, and it registered the network its worker was built
    with (its initial weights), the state it resumed from loaded only once an epoch ran. Now the
    network registered is the trained one (a language model's: the network of the lowest
    validation loss, as rnn/train.py tests it)."""
    from raynas.tracking.mlflow_tracker import MlflowTracker

    if recurrent:  # rnn/train.py's job, shrunk
        config = load_retrain_job(JOBS / "retrain_darts_rnn_ptb.yaml", [
            f"data.path={write_ptb(tmp_path / 'penn')}", "data.bptt=2", "data.batch_size=2",
            "retrain.epochs=2", "retrain.channels=6", "retrain.valid_streams=2",
            "execution.backend=local", f"tracking.tracking_uri={mlflow_store(tmp_path)}",
            f"tracking.output_dir={tmp_path / 'runs'}",
        ])
    else:
        config = parse_retrain_job(retrain_job(tmp_path, ALL_CONV))
    registered: list[dict[str, torch.Tensor]] = []
    register = MlflowTracker.register_model

    def crash_once(self: MlflowTracker, *args: object, network: torch.nn.Module, **kwargs: object) -> str:
        registered.append({k: v.clone() for k, v in network.state_dict().items()})
        if len(registered) == 1:
            raise RuntimeError("simulated crash")
        return register(self, *args, network=network, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(MlflowTracker, "register_model", crash_once)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_retrain(config, echo=lambda _: None)
    lines: list[str] = []
    run_retrain(config, echo=lines.append)
    assert any(line.startswith("Resuming") for line in lines)
    assert not any(line.startswith("epoch") for line in lines)  # nothing left to train
    trained, resumed = registered
    assert trained.keys() == resumed.keys()
    for key in trained:
        torch.testing.assert_close(resumed[key], trained[key], rtol=0, atol=0, msg=key)


def retrain_dying_once_its_run_is_made(config: object, opener: str) -> None:
    """A driver that retrains ``config`` and SIGKILLs itself once ``MlflowTracker.<opener>`` has
    made its MLflow run."""
    from raynas.tracking.mlflow_tracker import MlflowTracker

    open_run = getattr(MlflowTracker, opener)

    def open_and_die(self: MlflowTracker, *args: object, **kwargs: object) -> str:
        open_run(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("not killed")

    setattr(MlflowTracker, opener, open_and_die)
    run_retrain(config, echo=lambda _: None)


@pytest.mark.parametrize("source", ["a search's run", "a genotype"])
def test_a_retraining_killed_after_making_its_run_goes_on_in_that_run(source: str, tmp_path: Path) -> None:
    """SIGKILLed once its MLflow run is made (derived from a search's run, or a plain one), before
    its first checkpoint: run again, it goes on in that run (the attempt id kept beside its
    checkpoint), with no second one."""
    architecture = f"run:{nb201_search(tmp_path)}" if source == "a search's run" else ALL_CONV
    config = parse_retrain_job(retrain_job(tmp_path, architecture))
    opener = "start_derived_run" if architecture.startswith("run:") else "start"

    process = driver_processes().Process(target=retrain_dying_once_its_run_is_made, args=(config, opener))
    process.start()
    process.join()
    assert process.exitcode == -signal.SIGKILL
    client = MlflowClient(config.tracking.tracking_uri)
    experiment = client.get_experiment_by_name("tests").experiment_id
    (made,) = client.search_runs([experiment], filter_string="attributes.run_name = 'retrain-tiny'")
    assert made.info.status == "RUNNING"
    result = run_retrain(config, echo=lambda _: None)
    assert result.run_id == made.info.run_id
    runs = client.search_runs([experiment], filter_string="attributes.run_name = 'retrain-tiny'")
    assert [r.info.run_id for r in runs] == [made.info.run_id]
    assert client.get_run(made.info.run_id).info.status == "FINISHED"


def test_retraining_tests_on_the_official_test_split_where_there_is_one(tmp_path: Path) -> None:
    # CIFAR-10 in its real format: 16 training images and a test batch of 6.
    rng = np.random.default_rng(0)
    for name, n in (("data_batch_1", 16), ("test_batch", 6)):
        write_batch(tmp_path / "cifar-10-batches-py" / name, {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        })
    for i in range(2, 6):
        write_batch(tmp_path / "cifar-10-batches-py" / f"data_batch_{i}",
                    {b"data": np.zeros((0, 3072), np.uint8), b"labels": []})
    job = retrain_job(tmp_path, ALL_CONV, data={"name": "cifar10", "path": str(tmp_path), "batch_size": 8})
    config = parse_retrain_job({**job, "retrain": {**job["retrain"], "epochs": 1}})
    train, test, split = _loaders(DATASETS.create("cifar10", config.data.config), seed=0)
    assert (len(train.dataset), len(test.dataset), split) == (16, 6, "test")  # all 16 train
    assert not test.dataset.dataset.augment  # type: ignore[attr-defined]
    lines: list[str] = []
    result = run_retrain(config, echo=lines.append, fresh=True)
    assert "testing on its test split" in lines[0]
    run = MlflowClient(job["tracking"]["tracking_uri"]).get_run(result.run_id)
    assert run.data.params["final.test_split"] == "test"

    digits = parse_retrain_job(retrain_job(tmp_path, ALL_CONV))  # no test split: 20% held out
    train, test, split = _loaders(DATASETS.create("digits", digits.data.config), seed=0)
    assert (len(train.dataset), len(test.dataset), split) == (128, 32, "held_out")


def test_auxiliary_loss_is_added_with_its_weight() -> None:
    # train_epoch's loss with an auxiliary head is CE(logits) + w * CE(aux), as DARTS's train.py.
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.main, self.aux = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.main(x), self.aux(x)

    torch.manual_seed(0)
    model = TwoHeads()
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    expected_grad = torch.autograd.grad(
        0.4 * torch.nn.functional.cross_entropy(model.aux(x), y), model.aux.weight
    )[0]
    before = model.aux.weight.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    train_epoch(model, opt, [(x, y)], torch.device("cpu"), grad_clip=1e9, auxiliary_weight=0.4)
    torch.testing.assert_close(before - model.aux.weight.detach(), expected_grad)


@pytest.mark.parametrize("name", ["NASNet", "AmoebaNet"])
def test_a_published_network_outside_the_darts_space_retrains_as_train_py_trains_it(
    name: str, tmp_path: Path
) -> None:
    """NASNet's and AmoebaNet's cells (5 nodes, sep_conv_7x7, conv_7x1_1x7) are not in the darts
    search space (4 nodes, 8 operations), but DARTS's train.py trains them from genotypes.py
    (`--arch NASNet`): `raynas train` builds and trains them too (it refused them before), the
    network the space builds from the genotype."""
    from raynas.data import dataset_info
    from raynas.spaces import SPACES

    job = retrain_job(tmp_path, name, space={"name": "darts"},
                      retrain={"epochs": 1, "channels": 4, "layers": 3, "learning_rate": 0.05})
    config = parse_retrain_job(job)
    space = SPACES.create("darts", config.space.config)
    assert not space.contains(space.parse(name))
    result = run_retrain(config, echo=lambda _: None)
    assert result.architecture == space.parse(name)
    network = space.build(result.architecture, dataset_info("digits"), channels=4, layers=3)
    assert MlflowClient(config.tracking.tracking_uri).get_run(result.run_id).info.status == "FINISHED"
    assert result.params == sum(p.numel() for p in network.parameters())


def test_a_searched_architecture_another_space_cannot_build_is_refused(tmp_path: Path) -> None:
    """A NAS-Bench-201 search's cell named for retraining in the darts space: neither in the space
    nor a network its code builds, refused before any training."""
    search_run = nb201_search(tmp_path)
    job = retrain_job(tmp_path, f"run:{search_run}", space={"name": "darts"},
                      retrain={"epochs": 1, "channels": 4, "layers": 3})
    with pytest.raises(ArchitectureError, match="is not in the 'darts' space as configured, and its "
                                                "network cannot be built from it"):
        run_retrain(parse_retrain_job(job), echo=print)


def test_a_retrained_network_is_registered_with_its_signature_and_exports_without_an_input_shape(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`raynas train` registered its network without an input signature, so `raynas export` of a
    retraining run (the README's "a found (retrained) network") asked for --input-shape."""
    from raynas.cli import main

    config = parse_retrain_job(retrain_job(tmp_path, ALL_CONV, retrain={"epochs": 1, "channels": 4,
                                                                      "layers": 1}))
    result = run_retrain(config, echo=lambda _: None)
    client = MlflowClient(config.tracking.tracking_uri)
    version = client.get_model_version("raynas-retrain-tiny", result.registered_version)
    assert version.source == f"runs:/{result.run_id}/model"
    signature = mlflow.models.Model.load(
        client.download_artifacts(result.run_id, "model/MLmodel", str(tmp_path))).signature
    assert signature is not None and signature.inputs.inputs[0].shape == (-1, 1, 8, 8)
    capsys.readouterr()
    assert main(["export", f"run:{result.run_id}", "--format", "torchscript", "--out",
                 str(tmp_path / "net.pt"), "--tracking-uri", config.tracking.tracking_uri]) == 0
    assert "(input 1x1x8x8, batch free)" in capsys.readouterr().out


def test_retraining_a_segmentation_network_on_whole_image_labels_is_refused(tmp_path: Path) -> None:
    """Auto-DeepLab's network labels every pixel; the digits label whole images: one line before
    training (a traceback from the loss, at the first batch, before)."""
    job = retrain_job(tmp_path, "hnasnet", space={"name": "auto_deeplab"},
                      retrain={"epochs": 1, "channels": 4})
    with pytest.raises(ConfigError, match="the 'auto_deeplab' space builds segmentation networks "
                                          r"\(a class per pixel\); digits labels whole images"):
        run_retrain(parse_retrain_job(job), echo=print)


def test_bad_retraining_jobs_say_what_is_wrong(tmp_path: Path) -> None:
    store = mlflow_store(tmp_path)
    with pytest.raises(ConfigError, match=re.escape(
            f"'run:0123456789abcdef': there is no MLflow run '0123456789abcdef' at {store}; name the "
            "store that holds it with the job's tracking.tracking_uri (or --tracking-uri)")):
        run_retrain(parse_retrain_job(retrain_job(tmp_path, "run:0123456789abcdef")), echo=print)
    with pytest.raises(ConfigError, match=re.escape("'run:' names no run: write run:<MLflow run id>")):
        run_retrain(parse_retrain_job(retrain_job(tmp_path, "run:")), echo=print)
    client = MlflowClient(store)
    bare = client.create_run(client.create_experiment("not-a-search")).info.run_id
    with pytest.raises(ConfigError, match=re.escape(
            f"MLflow run '{bare}' at {store} has no 'genotype.json', a search's final architecture")):
        run_retrain(parse_retrain_job(retrain_job(tmp_path, f"run:{bare}")), echo=print)
    with pytest.raises(ArchitectureError):
        run_retrain(parse_retrain_job(retrain_job(tmp_path, "|bogus~0|")), echo=print)
    job = retrain_job(tmp_path, "DARTS_V2", space={"name": "darts"},
                      retrain={"epochs": 1, "channels": 4, "layers": 3, "auxiliary_weight": 0.4})
    with pytest.raises(ConfigError, match="8x8"):  # DARTS's auxiliary head needs larger images
        run_retrain(parse_retrain_job(job), echo=print)
    with pytest.raises(ConfigError, match="architecture"):
        parse_retrain_job({k: v for k, v in retrain_job(tmp_path, "x").items() if k != "architecture"})
    with pytest.raises(ConfigError, match="raynas train"):
        load_job(write_job(tmp_path, retrain_job(tmp_path, "DARTS_V2")))


@pytest.mark.parametrize(
    "path", sorted([*JOBS.glob("retrain_*.yaml"), *JOBS.glob("transfer_*.yaml")]), ids=lambda p: p.name
)
def test_retraining_job_files_are_valid(path: Path) -> None:
    from raynas.runs.retrain import check_settings

    config = load_retrain_job(path)
    assert config.architecture and config.retrain.epochs >= 1
    check_settings(config)  # what `raynas train` checks before it starts


def test_label_smoothing_is_darts_cross_entropy_label_smooth() -> None:
    # CrossEntropyLabelSmooth of quark0/darts train_imagenet.py, written out:
    # targets (1 - eps) * onehot + eps / K, loss = mean over the batch of -sum(targets * log_softmax).
    torch.manual_seed(0)
    logits, y, eps = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3]), 0.1
    targets = (1 - eps) * torch.nn.functional.one_hot(y, 5) + eps / 5
    expected = (-targets * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(mean_cross_entropy(logits, y, label_smoothing=eps), expected)


def test_step_decay_multiplies_the_rate_by_gamma_every_epoch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))]
    rates = [
        metrics["lr"] for metrics, _ in fit(
            model, batches, batches, torch.device("cpu"), epochs=3, learning_rate=0.1, momentum=0.9,
            weight_decay=3e-5, grad_clip=5.0, label_smoothing=0.1, lr_gamma=0.97,
        )
    ]
    assert rates == pytest.approx([0.1, 0.1 * 0.97, 0.1 * 0.97**2])  # StepLR(1, gamma=0.97)
    with pytest.raises(ConfigError, match=r"retrain\.lr_gamma"):
        parse_retrain_job(retrain_job(Path("/tmp"), "DARTS_V2", retrain={"lr_gamma": 1.5}))


def test_the_darts_cifar10_retraining_job_has_train_py_s_settings() -> None:
    """jobs/retrain_darts_cifar10.yaml against quark0/darts cnn/train.py's defaults with the README's
    --auxiliary --cutout (../shared/reference/papers.json, darts.train.py_defaults)."""
    config = load_retrain_job(Path(__file__).parents[1] / "jobs" / "retrain_darts_cifar10.yaml")
    r, data = config.retrain, config.data.config
    assert (data.batch_size, data.cutout, data.augment) == (96, 16, True)
    assert (r.epochs, r.channels, r.layers) == (600, 36, 20)
    assert (r.learning_rate, r.momentum, r.weight_decay, r.grad_clip) == (0.025, 0.9, 3e-4, 5.0)
    assert (r.auxiliary_weight, r.drop_path_prob) == (0.4, 0.2)
    assert config.architecture == "DARTS_V2"  # train.py's --arch DARTS


@pytest.mark.parametrize(("workers", "sizes"), [(1, [16] * 4 + [11]), (2, [8] * 4)])
def test_an_epoch_keeps_its_last_smaller_batch_as_darts_train_py(workers: int, sizes: list[int]) -> None:
    """DARTS's train.py trains on DataLoader(train_data, batch_size, shuffle=True): each epoch ends
    with the smaller batch that is left (drop_last off). Data-parallel ranks take their slice of
    full global batches only, so that every global batch splits evenly: 75 images at batch 16 are
    four full batches and 11 images for one worker, four slices of 8 for each of two."""
    from raynas.data.digits import DigitsConfig

    data = DATASETS.create("digits", DigitsConfig(batch_size=16, limit=100, train_portion=0.75))
    train, _, split = _loaders(data, seed=0, rank=0, world_size=workers)
    assert split == "held_out" and len(train.dataset) == 75
    assert [len(y) for _, y in train] == sizes


def test_adamw_steps_as_written_out_and_as_torch_s_adamw_without_decaying_norms_and_biases() -> None:
    """One AdamW step of ``fit`` (``retrain.optimizer: adamw``), by hand: with m = (1 - b1) g and
    v = (1 - b2) g^2 after the first step, bias-corrected m / (1 - b1) = g and v / (1 - b2) = g^2,
    so p <- p (1 - lr wd) - lr g / (|g| + eps); ConvNeXt's optim_factory.py decays no 1-D
    parameter (the LayerNorm's scale and shift, layer scales) and no bias: those have no
    ``(1 - lr wd)`` factor. The same as torch.optim.AdamW given those two groups."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3), torch.nn.LayerNorm(3))
    x, y = torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))
    reference = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(torch.nn.functional.cross_entropy(model(x), y), list(model.parameters()))
    torch_model = copy.deepcopy(model)
    lr, wd, betas, eps = 0.01, 0.1, (0.8, 0.9), 1e-6
    next(fit(model, [(x, y)], [(x, y)], torch.device("cpu"), epochs=1, learning_rate=lr, momentum=0.9,
             weight_decay=wd, grad_clip=0.0, optimizer_name="adamw", betas=betas, eps=eps))
    names = [name for name, _ in model.named_parameters()]
    assert names == ["1.weight", "1.bias", "2.weight", "2.bias"]
    decayed = [True, False, False, False]  # only the Linear's 2-D weight
    for p, p0, g, decays in zip(model.parameters(), reference, grads, decayed, strict=True):
        torch.testing.assert_close(p.detach(), p0 * (1 - lr * wd if decays else 1) - lr * g / (g.abs() + eps))
    params = list(torch_model.parameters())
    opt = torch.optim.AdamW([{"params": params[:1], "weight_decay": wd},
                             {"params": params[1:], "weight_decay": 0.0}], lr=lr, betas=betas, eps=eps)
    for p, g in zip(params, grads, strict=True):
        p.grad = g
    opt.step()
    for p, q in zip(model.parameters(), params, strict=True):
        torch.testing.assert_close(p, q)
    all_decayed = reference[2] * (1 - lr * wd) - lr * grads[2] / (grads[2].abs() + eps)  # LayerNorm scale
    assert not torch.allclose(model[2].weight, all_decayed)


def test_warm_up_scales_the_cosine_of_the_first_epochs() -> None:
    """``retrain.warmup_epochs`` w: epoch e's rate is the cosine's times min(1, (e + 1) / w)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))]
    rates = [metrics["lr"] for metrics, _ in fit(
        model, batches, batches, torch.device("cpu"), epochs=4, learning_rate=4e-3, momentum=0.9,
        weight_decay=0.05, grad_clip=0.0, optimizer_name="adamw", warmup_epochs=2,
    )]
    cosine = [4e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert rates == pytest.approx([cosine[0] / 2, cosine[1], cosine[2], cosine[3]])


def test_the_per_step_cosine_is_convnext_s_cosine_scheduler(monkeypatch: pytest.MonkeyPatch) -> None:
    """``retrain.lr_per_step``: the rate of every iteration, against ConvNeXt's
    ``utils.cosine_scheduler`` written out with numpy (warm-up ``np.linspace(0, base, w)``, then
    ``final + 0.5 * (base - final) * (1 + cos(pi * i / len(iters)))``), as fit sets it."""
    from raynas.train.schedules import stepwise_cosine_lr

    base, final, per_epoch, epochs, warmup = 4e-3, 1e-6, 3, 4, 1
    iters = np.arange(epochs * per_epoch - warmup * per_epoch)
    expected = np.concatenate((
        np.linspace(0, base, warmup * per_epoch),
        np.array([final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / len(iters))) for i in iters]),
    ))
    rates = [stepwise_cosine_lr(base, final, i, epochs * per_epoch, warmup * per_epoch)
             for i in range(epochs * per_epoch)]
    assert rates == pytest.approx(expected.tolist(), abs=1e-12)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))) for _ in range(per_epoch)]
    stepped: list[float] = []
    step = torch.optim.AdamW.step

    def recording_step(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        stepped.append(self.param_groups[0]["lr"])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    reported = [m["lr"] for m, _ in fit(
        model, batches, batches, torch.device("cpu"), epochs=epochs, learning_rate=base, momentum=0.9,
        weight_decay=0.05, grad_clip=0.0, optimizer_name="adamw", warmup_epochs=warmup,
        min_learning_rate=final, lr_per_step=True,
    )]
    assert stepped == pytest.approx(expected.tolist(), abs=1e-12)  # every iteration's rate
    assert reported == pytest.approx(expected[::per_epoch].tolist(), abs=1e-12)  # each epoch's first


def test_the_convnext_retraining_job_has_the_paper_s_recipe() -> None:
    """jobs/retrain_convnext_tiny_imagenet.yaml against facebookresearch/ConvNeXt main.py's defaults
    (--opt adamw, --lr 4e-3, --weight_decay 0.05, --epochs 300, --warmup_epochs 20, --opt_eps
    1e-8, --opt_betas None: torch's, --clip_grad None, --smoothing 0.1, --mixup 0.8, --cutmix 1.0,
    --mixup_switch_prob 0.5, --aa rand-m9-mstd0.5-inc1, --reprob 0.25, --train_interpolation
    bicubic, --model_ema_decay 0.9999, --min_lr 1e-6, the rate set every iteration) and
    TRAINING.md's ConvNeXt-T (--drop_path 0.1, 4096 images a step, --model_ema true
    --model_ema_eval true)."""
    config = load_retrain_job(JOBS / "retrain_convnext_tiny_imagenet.yaml")
    r = config.retrain
    assert (config.architecture, config.space.name) == ("convnext_tiny", "convnext")
    assert config.data.config.batch_size == 4096
    assert (r.optimizer, r.learning_rate, r.weight_decay) == ("adamw", 4e-3, 0.05)
    assert (r.epochs, r.warmup_epochs, r.betas, r.eps) == (300, 20, (0.9, 0.999), 1e-8)
    assert (r.grad_clip, r.label_smoothing, r.drop_path_prob) == (0.0, 0.1, 0.1)
    assert config.space.config.layer_scale_init == 1e-6
    assert (r.mixup, r.cutmix, r.mix_switch_prob, r.ema_decay) == (0.8, 1.0, 0.5, 0.9999)
    assert (r.lr_per_step, r.min_learning_rate) == (True, 1e-6)
    data = config.data.config
    assert (data.rand_augment, data.random_erasing, data.interpolation) == (9, 0.25, "bicubic")


def test_the_nexception_retraining_job_has_the_readme_s_recipe() -> None:
    """jobs/retrain_nexception_t_imagenet.yaml against hadarshavit/NEXcepTion's README command for
    NEXcepTion-T (timm's train.py): --opt fusedlamb --lr 2e-3 --weight-decay 0.02 --epochs 300
    --warmup-epochs 5 --min-lr 1e-6 --bce-loss --bce-target-thresh 0.2 --smoothing 0.0 --mixup 0.1
    --cutmix 1.0 --aa rand-m7-mstd0.5-inc1 --reprob 0.0 --drop-path 0.05 --channels-last
    --aug-repeats 3, 4 GPUs x --batch-size 64."""
    config = load_retrain_job(JOBS / "retrain_nexception_t_imagenet.yaml")
    r, data = config.retrain, config.data.config
    assert (config.architecture, config.space.name) == ("nexception_t", "nexception")
    assert config.data.name == "imagenet"
    assert (r.optimizer, r.learning_rate, r.weight_decay, r.eps) == ("lamb", 2e-3, 0.02, 1e-6)
    assert (r.epochs, r.warmup_epochs, r.min_learning_rate, r.grad_clip) == (300, 5, 1e-6, 0.0)
    assert (r.loss, r.bce_target_threshold, r.label_smoothing) == ("bce", 0.2, 0.0)
    assert (r.mixup, r.cutmix, r.mix_switch_prob, r.drop_path_prob) == (0.1, 1.0, 0.5, 0.05)
    assert (data.rand_augment, data.random_erasing, data.batch_size) == (7, 0.0, 256)
    assert r.aug_repeats == 3 and data.crop_pct == 0.95
    assert (config.execution.workers, config.execution.channels_last) == (4, True)
    from raynas.spaces import SPACES

    space = SPACES.create("nexception", config.space.config)
    assert space.contains(space.parse("nexception_t"))  # the job's space holds its network


@pytest.mark.parametrize(("setting", "message"), [
    ("retrain.optimizer=adam", r"'retrain\.optimizer' is str 'adam'; allowed: 'sgd', 'adamw', 'lamb'"),
    ("retrain.bce_target_threshold=0.2",
     r"'retrain\.bce_target_threshold' thresholds the targets of retrain\.loss: bce only"),
    ("retrain.loss=focal", r"'retrain\.loss' is str 'focal'; allowed: 'cross_entropy', 'bce'"),
    ("retrain.betas=[-0.1,0.999]", r"'retrain\.betas' must be two numbers in \[0, 1\)"),
    ("retrain.eps=0", r"'retrain\.eps' must be positive"),
    ("retrain.mixup=-0.8", r"'retrain\.mixup' and retrain\.cutmix must be >= 0"),
    ("retrain.mix_switch_prob=1.5", r"'retrain\.mix_switch_prob' must be in \[0, 1\]"),
    ("retrain.ema_decay=1", r"'retrain\.ema_decay' must be in \[0, 1\)"),
    ("retrain.min_learning_rate=0.01",
     r"'retrain\.min_learning_rate' must be in \[0, retrain\.learning_rate\)"),
    ("retrain.warmup_epochs=300", r"'retrain\.warmup_epochs' must leave epochs after the warm-up"),
    ("data.interpolation=nearest", r"'data\.interpolation'.*allowed: 'bilinear', 'bicubic'"),
    ("data.rand_augment=11", r"data\.rand_augment must be in \[0, 10\], got 11"),
])
def test_bad_optimizer_settings_are_one_line_and_exit_2(
    setting: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from raynas.cli import main

    assert main(["train", str(JOBS / "retrain_convnext_tiny_imagenet.yaml"), "--set", setting]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err)


def test_convnext_retraining_builds_its_stochastic_depth() -> None:
    """ConvNeXt's drop path is fixed per block, rising linearly over the blocks to
    ``retrain.drop_path_prob`` at the last (models/convnext.py's ``dp_rates``), for the whole
    training; DARTS's ramp over the epochs does not apply to it."""
    from raynas.ops.convnext_net import ConvNeXtStageBlock
    from raynas.runs.common import dataset_info
    from raynas.runs.retrain import build_network
    from raynas.spaces import SPACES

    config = load_retrain_job(JOBS / "retrain_convnext_tiny_imagenet.yaml", ["retrain.channels=8"])
    arch = SPACES.create("convnext").parse("convnext_tiny")
    net = build_network(config, arch, dataset_info("imagenet"), example=torch.randn(3, 32, 32))
    rates = [m.drop_path_prob for m in net.modules() if isinstance(m, ConvNeXtStageBlock)]
    assert len(rates) == 18 and not hasattr(net, "drop_path_prob")  # 3 + 3 + 9 + 3 blocks
    assert rates == pytest.approx([0.1 * i / 17 for i in range(18)])


def test_the_networks_check_as_it_is_built_leaves_its_batchnorm_statistics_and_the_random_stream() -> None:
    """build_network runs the network once in training mode on the data's shape: that pass must
    leave the BatchNorm statistics as built (mean 0, variance 1, no batch counted) and the random
    stream where it was, so the retraining starts as the network's code would."""
    from raynas.runs.common import dataset_info
    from raynas.runs.retrain import build_network
    from raynas.spaces import SPACES

    config = load_retrain_job(JOBS / "retrain_darts_cifar10.yaml", ["retrain.channels=4", "retrain.layers=3"])
    space, info = SPACES.create("darts"), dataset_info("cifar10")
    arch = space.parse("DARTS_V2")
    torch.manual_seed(0)  # the network alone, as the job's settings build it
    space.build(arch, info, channels=4, layers=3, auxiliary=True, drop_path_prob=0.2)
    built = torch.get_rng_state()
    example = torch.randn(3, 32, 32) * 5 + 2
    torch.manual_seed(0)
    net = build_network(config, arch, info, example=example)
    assert torch.equal(torch.get_rng_state(), built)  # (its dropout and drop path drew nothing)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) > 10 and net.training
    for m in norms:
        assert torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
        assert torch.equal(m.running_var, torch.ones_like(m.running_var))
        assert int(m.num_batches_tracked) == 0


class _RecordsDropPath(torch.nn.Module):
    """A linear classifier that notes the drop-path rate each training forward pass sees."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
        self.drop_path_prob = 0.0
        self.seen: list[float] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.seen.append(self.drop_path_prob)
        return self.fc(x.flatten(1))


def test_the_drop_path_rate_rises_by_epoch_as_darts_or_by_step_as_enas() -> None:
    """DARTS's train.py: model.drop_path_prob = args.drop_path_prob * epoch / args.epochs, set at
    each epoch's start. ENAS's micro_child.py _apply_drop_path: the rate times step_ratio =
    min(1, (global_step + 1) / num_train_steps), global_step counting every step of the training.
    Two epochs of three batches; jobs/retrain_enas_cifar10.yaml ramps by step."""
    batches = [(torch.randn(2, 1, 2, 2), torch.randint(0, 3, (2,))) for _ in range(3)]
    seen = {}
    for per_step in (False, True):
        model = _RecordsDropPath()
        for _ in fit(model, batches, batches, torch.device("cpu"), epochs=2, learning_rate=0.1, momentum=0.9,
                     weight_decay=0.0, grad_clip=5.0, drop_path_prob=0.4, drop_path_per_step=per_step):
            pass
        seen[per_step] = model.seen
    assert seen[False] == pytest.approx([0.0] * 3 + [0.2] * 3)
    assert seen[True] == pytest.approx([0.4 * k / 6 for k in range(1, 7)])
    assert load_retrain_job(JOBS / "retrain_enas_cifar10.yaml").retrain.drop_path_ramp == "step"


def test_retraining_restarts_the_cosine_and_uses_nesterov_momentum_as_enas_final_runs_do() -> None:
    """melodyguan/enas's get_train_ops with lr_cosine (src/utils.py): epoch e's rate is
    lr_min + (lr_max - lr_min)(1 + cos(pi T_cur / T_i)) / 2, T_i = 10, 20, 40, ... and T_cur counted
    from the last restart; its MomentumOptimizer is Nesterov's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    batches = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,)))]
    runs = list(fit(
        model, batches, batches, torch.device("cpu"), epochs=35, learning_rate=0.05, momentum=0.9,
        weight_decay=0.0, grad_clip=0.0, min_learning_rate=0.001, restart_epochs=10, restart_mult=2,
        nesterov=True,
    ))

    def code(epoch: int) -> float:
        last, t_i = 0, 10
        while epoch - last >= t_i:
            last, t_i = last + t_i, t_i * 2
        return 0.001 + 0.5 * (0.05 - 0.001) * (1 + math.cos((epoch - last) / t_i * math.pi))

    assert [m["lr"] for m, _ in runs] == pytest.approx([code(e) for e in range(35)])
    assert runs[10][0]["lr"] == runs[30][0]["lr"] == pytest.approx(0.05)  # the restarts
    assert runs[-1][1]["optimizer"]["param_groups"][0]["nesterov"] is True
    with pytest.raises(ConfigError, match=r"retrain\.nesterov"):
        parse_retrain_job(retrain_job(Path("/tmp"), "DARTS_V2", retrain={"nesterov": True, "momentum": 0}))
    with pytest.raises(ConfigError, match=r"retrain\.restart_epochs"):
        parse_retrain_job(
            retrain_job(Path("/tmp"), "DARTS_V2", retrain={"restart_epochs": 10, "lr_gamma": 0.97})
        )


@pytest.mark.parametrize(
    ("job", "epochs"), [("retrain_enas_cifar10.yaml", 630), ("retrain_enas_macro_cifar10.yaml", 310)]
)
def test_the_enas_retraining_jobs_restart_the_cosine_as_the_final_scripts(job: str, epochs: int) -> None:
    """scripts/cifar10_micro_final.sh and cifar10_macro_final.sh: --child_lr_cosine, T_0 10, T_mul 2
    (630 = 10 + ... + 320, 310 = 10 + ... + 160 epochs: whole periods), Nesterov momentum."""
    cfg = load_retrain_job(JOBS / job).retrain
    assert (cfg.epochs, cfg.restart_epochs, cfg.restart_mult, cfg.nesterov) == (epochs, 10, 2, True)
    assert epochs in {10 * (2**k - 1) for k in range(1, 8)}
