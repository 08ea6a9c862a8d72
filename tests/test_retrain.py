"""Retraining a found architecture from scratch: lineage to the search run, the Model Registry,
resuming, transfer to other data, and clear errors for what cannot be retrained."""

from __future__ import annotations

from pathlib import Path

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
from tests.conftest import mlflow_store, tiny_job, write_job
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


def test_an_interrupted_retraining_resumes_after_its_last_epoch(tmp_path: Path) -> None:
    config = parse_retrain_job(retrain_job(tmp_path, "|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+"
                                                        "|skip_connect~0|none~1|nor_conv_3x3~2|"))
    reference = run_retrain(config, echo=lambda _: None, fresh=True)

    def crash_after_first_epoch(line: str) -> None:
        if line.startswith("epoch   1/"):
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run_retrain(config, echo=crash_after_first_epoch, fresh=True)
    lines: list[str] = []
    resumed = run_retrain(config, echo=lines.append)
    assert any(line.startswith("Resuming") for line in lines)
    assert next(line for line in lines if line.startswith("epoch")).startswith("epoch   2/")
    assert resumed.metrics == pytest.approx(reference.metrics, rel=1e-5, abs=1e-6)


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


def test_bad_retraining_jobs_say_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"genotype\.json"):
        run_retrain(parse_retrain_job(retrain_job(tmp_path, "run:0123456789abcdef")), echo=print)
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
    config = load_retrain_job(path)
    assert config.architecture and config.retrain.epochs >= 1


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
