"""ConvNeXt's and NEXcepTion's training recipes (facebookresearch/ConvNeXt ``main.py`` and
hadarshavit/NEXcepTion's timm command): Mixup and CutMix in timm's ``batch`` mode with smoothed soft
targets, the weights' moving average, ImageNet's RandAugment, Random Erasing and bicubic resizing,
LAMB, the thresholded binary cross-entropy and repeated augmentation; each checked against its
formula written out here, and through real retrainings."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torchvision import transforms

from raynas.data import DATASETS
from raynas.runs.jobs import parse_retrain_job
from raynas.runs.retrain import run_retrain
from raynas.train.loop import fit, train_epoch
from raynas.train.mixing import MixUpCutMix, WeightAverage, soft_cross_entropy, soft_targets
from tests.fixtures import write_image_folder
from tests.test_retrain import ALL_CONV, retrain_job


def test_mixup_weights_the_batch_and_its_reverse_by_one_draw() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(4, 3, 5, 6), torch.tensor([0, 2, 1, 2])
    mixed, targets = MixUpCutMix(mixup=0.8, label_smoothing=0.1)(x, y, num_classes=3)
    # One lam for the whole batch: recover it from one element, check it on every one.
    lam = float((mixed[0, 0, 0, 0] - x[3, 0, 0, 0]) / (x[0, 0, 0, 0] - x[3, 0, 0, 0]))
    assert 0 < lam < 1
    for i in range(4):
        assert torch.allclose(mixed[i], lam * x[i] + (1 - lam) * x[3 - i], atol=1e-5)
        # timm's mixup_target: smoothed one-hot labels, each class 0.1 / 3, the label 0.9 + 0.1 / 3.
        expected = torch.full((3,), 0.1 / 3)
        expected[y[i]] += lam * 0.9
        expected[y[3 - i]] += (1 - lam) * 0.9
        assert torch.allclose(targets[i], expected, atol=1e-6)
        assert float(targets[i].sum()) == pytest.approx(1.0)


def test_cutmix_pastes_a_box_of_the_reversed_batch_and_weights_by_the_area_left() -> None:
    torch.manual_seed(1)
    x, y = torch.randn(4, 2, 16, 12), torch.tensor([0, 1, 2, 3])
    mixing = MixUpCutMix(cutmix=1.0)
    for _ in range(20):
        lam, box = mixing.draw(16, 12)
        assert box is not None
        top, bottom, left, right = box
        assert 0 <= top <= bottom <= 16 and 0 <= left <= right <= 12
        assert lam == pytest.approx(1 - (bottom - top) * (right - left) / (16 * 12))
    torch.manual_seed(2)
    mixed, targets = mixing(x, y, num_classes=4)
    torch.manual_seed(2)
    lam, (top, bottom, left, right) = mixing.draw(16, 12)
    inside = torch.zeros(16, 12, dtype=torch.bool)
    inside[top:bottom, left:right] = True
    for i in range(4):
        assert torch.equal(mixed[i][:, inside], x[3 - i][:, inside])
        assert torch.equal(mixed[i][:, ~inside], x[i][:, ~inside])
        assert targets[i, y[i]] == pytest.approx(lam) and targets[i, y[3 - i]] == pytest.approx(1 - lam)


def test_both_on_cutmix_at_the_switch_chance_and_lam_from_each_beta() -> None:
    """Beta(0.8, 0.8) and Beta(1, 1) both have mean 1/2; CutMix's box is a centred square
    whose side is int(side * sqrt(1 - lam)) unless the border clips it."""
    torch.manual_seed(3)
    mixing = MixUpCutMix(mixup=0.8, cutmix=1.0, switch_prob=0.5)
    draws = [mixing.draw(64, 64) for _ in range(4000)]
    cut = [lam for lam, box in draws if box is not None]
    mixed = [lam for lam, box in draws if box is None]
    assert len(cut) / len(draws) == pytest.approx(0.5, abs=0.04)
    assert sum(mixed) / len(mixed) == pytest.approx(0.5, abs=0.03)
    # Beta(0.8, 0.8)'s variance is 1 / (4 * 2.6), above Beta(1, 1)'s 1 / 12.
    variance = sum((v - 0.5) ** 2 for v in mixed) / len(mixed)
    assert variance == pytest.approx(1 / (4 * 2.6), abs=0.01)
    assert all(0 <= lam <= 1 for lam in cut)


def test_the_soft_loss_of_smoothed_unmixed_targets_is_torch_s_label_smoothing() -> None:
    torch.manual_seed(4)
    logits, y = torch.randn(6, 5), torch.randint(0, 5, (6,))
    ours = soft_cross_entropy(logits, soft_targets(y, 5, 1.0, 0.1))
    torchs = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    assert float(ours) == pytest.approx(float(torchs))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_mixed_training_step_takes_the_soft_loss_of_the_mixed_batch(seed: int) -> None:
    """train_epoch's loss under Mixup/CutMix: the batch mixed and its smoothed targets written out
    here from the same draw, the soft cross-entropy taken by hand."""
    torch.manual_seed(100)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(2 * 6 * 6, 4))
    x, y = torch.randn(6, 2, 6, 6), torch.tensor([0, 1, 2, 3, 0, 1])
    mixing = MixUpCutMix(mixup=0.8, cutmix=1.0, switch_prob=0.5, label_smoothing=0.1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    torch.manual_seed(seed)
    loss = train_epoch(model, optimizer, [(x, y)], torch.device("cpu"), grad_clip=0.0,
                       mixing=mixing)["train_loss"]
    torch.manual_seed(seed)
    lam, box = mixing.draw(6, 6)
    mixed = x.clone()
    for i in range(6):
        if box is None:
            mixed[i] = lam * x[i] + (1 - lam) * x[5 - i]
        else:
            top, bottom, left, right = box
            mixed[i, :, top:bottom, left:right] = x[5 - i, :, top:bottom, left:right]
    with torch.no_grad():
        log_p = torch.log_softmax(model(mixed), dim=1)
    expected = 0.0
    for i in range(6):
        target = torch.full((4,), 0.1 / 4)
        target[y[i]] += lam * 0.9
        target[y[5 - i]] += (1 - lam) * 0.9
        expected -= float((target * log_p[i]).sum()) / 6
    assert loss == pytest.approx(expected, rel=1e-5)


def test_the_weight_average_follows_its_recurrence_over_every_step() -> None:
    """ema_k = d * ema_(k-1) + (1 - d) * w_k after each step k, for weights and BatchNorm's running
    statistics, written out from the weights seen after each step."""
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.BatchNorm2d(3), torch.nn.Flatten(),
                                torch.nn.Linear(3 * 4 * 4, 2))
    average = WeightAverage(model, 0.9)
    seen = [{k: v.clone() for k, v in model.state_dict().items()}]

    def after() -> None:
        average.update(model)
        seen.append({k: v.clone() for k, v in model.state_dict().items()})

    batches = [(torch.randn(4, 1, 6, 6), torch.randint(0, 2, (4,))) for _ in range(3)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_epoch(model, optimizer, batches, torch.device("cpu"), grad_clip=0.0, after_step=after)
    assert len(seen) == 4
    moved = 0
    for key, value in average.model.state_dict().items():
        if not value.is_floating_point():
            assert torch.equal(value, seen[-1][key])  # the batch count, copied
            continue
        expected = seen[0][key]
        for step in seen[1:]:
            expected = 0.9 * expected + 0.1 * step[key]
        assert torch.allclose(value, expected, atol=1e-6), key
        if not torch.allclose(seen[-1][key], seen[0][key], atol=1e-4):  # (the bias before BatchNorm stays)
            assert not torch.allclose(value, seen[-1][key])  # an average, not the last weights
            moved += 1
    assert moved >= 4  # the convolution's and the linear layer's weights, BatchNorm's statistics


def test_fit_tests_the_average_too_and_a_resumed_fit_keeps_it() -> None:
    def run(state: dict | None = None, **mixing: float) -> list[tuple[dict, dict]]:
        torch.manual_seed(6)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
        batches = [(torch.randn(8, 1, 2, 2), torch.randint(0, 3, (8,))) for _ in range(2)]
        epochs = fit(model, batches, batches, torch.device("cpu"), epochs=2, learning_rate=0.1,
                     momentum=0.9, weight_decay=0.0, grad_clip=0.0, ema_decay=0.5, state=state, **mixing)
        return [copy.deepcopy(epoch) for epoch in epochs]  # the states hold the live tensors

    mixed = run(mixup=0.8, cutmix=1.0)
    assert all({"valid_ema_loss", "valid_ema_acc", "valid_acc"} <= set(m) for m, _ in mixed)
    # Without mixing, training draws nothing: a fit resumed after its first epoch ends as one that
    # ran straight through, its average included (restarted from the weights, it would not).
    straight = run()
    (_, last), (_, again) = straight[-1], run(state=straight[0][1])[-1]
    assert all(torch.equal(v, again["ema"][k]) for k, v in last["ema"].items())
    assert not all(torch.equal(v, last["model"][k]) for k, v in last["ema"].items())
    lost = dict(straight[0][1], ema=straight[0][1]["model"])  # the average lost on resuming
    assert not all(torch.equal(v, run(state=lost)[-1][1]["ema"][k]) for k, v in last["ema"].items())


def test_imagenet_s_convnext_augmentation_is_randaugment_bicubic_and_erasing_after_normalising(
    tmp_path: Path,
) -> None:
    root = write_image_folder(tmp_path / "imagenet")
    entry = DATASETS.entry("imagenet")
    data = DATASETS.create("imagenet", entry.config(path=str(root), image_size=16, rand_augment=9,
                                                    random_erasing=0.25, interpolation="bicubic"))
    steps = data.train_set().transform.transforms
    kinds = [type(t) for t in steps]
    assert kinds == [transforms.RandomResizedCrop, transforms.RandomHorizontalFlip, transforms.RandAugment,
                     transforms.ToTensor, transforms.Normalize, transforms.RandomErasing]
    crop, _, augment, _, _, erasing = steps
    assert crop.interpolation == transforms.InterpolationMode.BICUBIC
    assert (augment.num_ops, augment.magnitude, augment.num_magnitude_bins) == (2, 9, 11)
    assert (erasing.p, erasing.value) == (0.25, "random")
    image, label = data.train_set()[0]
    assert image.shape == (3, 16, 16) and label == 0
    test = data.test_set().transform.transforms
    assert test[0].interpolation == transforms.InterpolationMode.BICUBIC and test[0].size == round(16 / 0.875)
    wider = DATASETS.create("imagenet", entry.config(path=str(root), image_size=16, crop_pct=0.95))
    assert wider.test_set().transform.transforms[0].size == round(16 / 0.95)  # NEXcepTion's --crop-pct
    plain = DATASETS.create("imagenet", entry.config(path=str(root), image_size=16))
    assert [type(t) for t in plain.train_set().transform.transforms] == [
        transforms.RandomResizedCrop, transforms.RandomHorizontalFlip, transforms.ToTensor,
        transforms.Normalize,
    ]


def test_a_retraining_with_mixup_cutmix_and_the_average_records_the_average_s_scores(tmp_path: Path) -> None:
    job = retrain_job(tmp_path, ALL_CONV)
    job["retrain"].update(mixup=0.8, cutmix=1.0, ema_decay=0.9, label_smoothing=0.1)
    result = run_retrain(parse_retrain_job(job), echo=lambda _: None)
    run = MlflowClient(mlflow_store_of(job)).get_run(result.run_id)
    for key in ("test_ema_acc", "test_ema_loss", "test_acc", "train_loss"):
        assert math.isfinite(run.data.metrics[key]), key
    assert run.data.params["retrain.mixup"] == "0.8" and run.data.params["retrain.ema_decay"] == "0.9"


def mlflow_store_of(job: dict) -> str:
    return job["tracking"]["tracking_uri"]


def test_lamb_steps_as_written_out_with_its_clipping_and_trust_ratio() -> None:
    """Two steps of raynas's LAMB against apex's FusedLAMB / timm's Lamb computed by hand: the
    gradients divided by max(1, global norm), Adam's bias-corrected moments, the decay inside the
    update, the trust ratio ||w|| / ||update|| on the decayed group only."""
    from raynas.train.optim import Lamb

    torch.manual_seed(9)
    w, b = torch.randn(4, 3, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = Lamb([{"params": [w], "weight_decay": 0.02}, {"params": [b], "weight_decay": 0.0}],
               lr=2e-3, eps=1e-6)
    ref = {"w": w.detach().clone(), "b": b.detach().clone()}
    m = {k: torch.zeros_like(v) for k, v in ref.items()}
    v = {k: torch.zeros_like(t) for k, t in ref.items()}
    for step in (1, 2):
        gw, gb = torch.randn(4, 3) * 3, torch.randn(4) * 3  # a global norm above 1: clipped
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        norm = math.sqrt(float((gw**2).sum() + (gb**2).sum()))
        for key, grad, decay in (("w", gw, 0.02), ("b", gb, 0.0)):
            g = grad / max(1.0, norm)
            m[key] = 0.9 * m[key] + 0.1 * g
            v[key] = 0.999 * v[key] + 0.001 * g * g
            update = (m[key] / (1 - 0.9**step)) / ((v[key] / (1 - 0.999**step)).sqrt() + 1e-6)
            if decay:
                update = update + decay * ref[key]
                update = update * (ref[key].norm() / update.norm())
            ref[key] = ref[key] - 2e-3 * update
        torch.testing.assert_close(w.detach(), ref["w"], rtol=0, atol=1e-7)
        torch.testing.assert_close(b.detach(), ref["b"], rtol=0, atol=1e-7)


def test_the_binary_cross_entropy_thresholds_the_targets_and_averages_over_classes() -> None:
    """timm's BinaryCrossEntropy(target_threshold=0.2), NEXcepTion's loss, written out: targets
    above 0.2 are 1, the rest 0; the mean over samples and classes of -t log s - (1 - t) log(1 - s)."""
    from raynas.train.mixing import binary_cross_entropy

    torch.manual_seed(10)
    logits, y = torch.randn(4, 5), torch.tensor([0, 3, 3, 1])
    targets = soft_targets(y, 5, 0.7, 0.0)  # 0.7 on each label, 0.3 on its reversed partner's
    s = torch.sigmoid(logits)
    hard = (targets > 0.2).float()
    expected = float((-(hard * s.log() + (1 - hard) * (1 - s).log())).mean())
    assert float(binary_cross_entropy(logits, targets, 0.2)) == pytest.approx(expected, rel=1e-6)
    assert int(hard.sum()) == 6  # both labels of each sample, one where a label meets itself
    soft = float((-(targets * s.log() + (1 - targets) * (1 - s).log())).mean())
    assert float(binary_cross_entropy(logits, targets)) == pytest.approx(soft, rel=1e-6)


def test_a_nexception_retraining_with_lamb_bce_mixing_and_stochastic_depth_runs(tmp_path: Path) -> None:
    """jobs/retrain_nexception_t_imagenet.yaml's recipe (LAMB, thresholded binary cross-entropy,
    Mixup and CutMix, drop path) on NEXcepTion-T shrunk to the digits."""
    job = retrain_job(tmp_path, "nexception_t",
                      space={"name": "nexception", "widths": [96, 128, 256, 512, 1024, 1536, 2048],
                             "stem_stride": 1, "reductions": 2})  # 8x8 digits, as nexception_quickstart
    job["retrain"].update(channels=8, layers=1, epochs=1, optimizer="lamb", learning_rate=2e-3,
                          weight_decay=0.02, eps=1e-6, loss="bce", bce_target_threshold=0.2, mixup=0.1,
                          cutmix=1.0, drop_path_prob=0.05, grad_clip=0.0, aug_repeats=3)
    result = run_retrain(parse_retrain_job(job), echo=lambda _: None)
    run = MlflowClient(mlflow_store_of(job)).get_run(result.run_id)
    assert math.isfinite(run.data.metrics["train_loss"]) and 0 <= run.data.metrics["test_acc"] <= 1
    assert run.data.params["retrain.optimizer"] == "lamb" and run.data.params["retrain.loss"] == "bce"


@pytest.mark.parametrize("world", [1, 3])
def test_repeated_augmentation_repeats_each_image_in_a_row_dealt_out_to_the_workers(world: int) -> None:
    """timm's RepeatAugSampler (--aug-repeats 3): the permutation with each index three times in a
    row, an epoch of n indices (n / 3 distinct images); with three workers each takes every third
    index of a global batch, so an image's three copies are on three workers."""
    from raynas.data.base import ShardedBatchSampler

    def epoch(rank: int) -> list[list[int]]:
        sampler = ShardedBatchSampler(12, 6, torch.Generator().manual_seed(4), rank, world, repeats=3)
        return list(sampler)

    permutation = torch.randperm(12, generator=torch.Generator().manual_seed(4)).tolist()
    repeated = [i for i in permutation[:4] for _ in range(3)]  # 12 indices, 4 distinct images
    shards = [epoch(rank) for rank in range(world)]
    assert all(len(batches) == 2 for batches in shards)
    for b in range(2):
        whole = repeated[b * 6 : (b + 1) * 6]
        if world == 1:
            assert shards[0][b] == whole
        else:
            assert [shards[r][b] for r in range(3)] == [whole[r::3] for r in range(3)]
            assert all(len(set(shards[r][b])) == 2 for r in range(3))  # no image twice on a worker
