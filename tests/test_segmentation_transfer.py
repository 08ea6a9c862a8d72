"""A DARTS cell transferred to segmentation: the DeepLabv3+ network built on DARTS's ImageNet
stems and cells, and a search on digits retrained on (a tiny) Cityscapes as a transfer run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.profile import count_macs
from raynas.runs import run_search
from raynas.runs.jobs import load_retrain_job, parse_job, parse_retrain_job
from raynas.runs.retrain import build_network, run_retrain
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsCnnSpace
from raynas.spaces.darts_genotype import published_genotype
from raynas.spaces.darts_nets import NetworkImageNet
from raynas.spaces.darts_segmentation import DartsSegmentationNet
from raynas.types import DatasetInfo
from tests.conftest import tiny_job
from tests.test_auto_deeplab import write_cityscapes

JOBS = Path(__file__).parents[1] / "jobs"
DARTS_V2 = published_genotype("DARTS_V2")


def tiny_net(**kwargs: int) -> DartsSegmentationNet:
    options = {"channels": 4, "layers": 3, "num_classes": 5, "filters": 8, **kwargs}
    return DartsSegmentationNet(genotype=DARTS_V2, **options)


def test_logits_have_the_input_size_and_the_encoder_runs_at_output_stride_16() -> None:
    torch.manual_seed(0)
    net = tiny_net(layers=6)  # reductions at cells 2 and 4; cell 4 keeps /16, cell 5 after it
    seen: dict[str, tuple[int, ...]] = {}
    net.aspp.register_forward_hook(lambda m, args, out: seen.__setitem__("aspp", args[0].shape))
    net.decoder.register_forward_hook(lambda m, args, out: seen.__setitem__("low", args[1].shape))
    cells: list[tuple[int, ...]] = []
    for cell in net.cells:
        cell.register_forward_hook(lambda m, args, out: cells.append(tuple(out.shape[2:])))
    out = net(torch.randn(2, 3, 64, 96))
    assert out.shape == (2, 5, 64, 96)
    assert seen["aspp"][2:] == (4, 6)  # 64 / 16, 96 / 16
    assert seen["low"][2:] == (16, 24)  # the decoder's low-level feature at /4
    assert cells == [(8, 12), (8, 12), (4, 6), (4, 6), (4, 6), (4, 6)]  # /8, then /16 from cell 2
    assert net.cells[4].reduction and net.cells[2].reduction  # the last reduction cell is kept
    # channels: C=4 doubles at each reduction cell, 4 nodes concatenated -> 4 * 16
    assert seen["aspp"][1] == 4 * 4 * 4


def test_odd_sizes_are_padded_to_a_multiple_of_16_and_cropped_back() -> None:
    torch.manual_seed(0)
    net = tiny_net().eval()
    x = torch.randn(1, 3, 33, 21)  # 769-like odd sides: FactorizedReduce needs even ones
    with torch.no_grad():
        out = net(x)
        padded = net(F.pad(x, (0, 32 - 21, 0, 48 - 33)))  # an independent padding by hand
    assert out.shape == (1, 5, 33, 21)
    torch.testing.assert_close(out, padded[:, :, :33, :21])
    with pytest.raises(AssertionError):  # the padding matters (the ASPP's image pooling sees it)
        torch.testing.assert_close(out, net(F.pad(x, (0, 48 - 21, 0, 48 - 33)))[:, :, :33, :21])


def test_the_backbone_is_networkimagenet_without_its_classifier() -> None:
    # Same stems and cells, parameter for parameter. One module differs in kind: the cell after
    # the stride-1 reduction cell takes its s0 through a 1x1 ReLUConvBN, not NetworkImageNet's
    # FactorizedReduce (two 1x1 convs of half the channels each: the same number of weights).
    seg = tiny_net(layers=6)
    imagenet = NetworkImageNet(genotype=DARTS_V2, channels=4, layers=6, num_classes=10)

    def backbone(net: torch.nn.Module) -> dict[str, torch.Size]:
        return {k: p.shape for k, p in net.named_parameters()
                if k.startswith(("stem", "cells")) and not k.startswith("cells.5.preprocess0")}

    assert backbone(seg) == backbone(imagenet)
    reduce_in = [p.numel() for k, p in imagenet.named_parameters() if k.startswith("cells.5.preprocess0")]
    keep_in = [p.numel() for k, p in seg.named_parameters() if k.startswith("cells.5.preprocess0")]
    c_in, c_out = 4 * 4 * 2, 4 * 4  # cell 3's output (4 nodes x 2C), cell 5's C at /16
    assert reduce_in == [c_in * c_out // 2, c_in * c_out // 2, c_out, c_out]  # conv_1, conv_2, BN
    assert keep_in == [c_in * c_out, c_out, c_out]  # conv, BN
    n_seg = sum(p.numel() for k, p in seg.named_parameters() if k.startswith(("stem", "cells")))
    assert n_seg == sum(p.numel() for k, p in imagenet.named_parameters()
                        if not k.startswith(("classifier", "auxiliary")))


def test_gradient_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    net = tiny_net()
    x, y = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    y[0, :4] = -100  # ignored pixels, as Cityscapes' void
    F.cross_entropy(net(x), y).backward()
    dead = [name for name, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_the_darts_space_builds_it_for_segmentation_data() -> None:
    space = DartsCnnSpace()
    cityscapes = dataset_info("cityscapes")
    assert cityscapes.task == "segmentation" and dataset_info("cifar10").task == "classification"
    net = space.build(DARTS_V2, cityscapes, channels=4, layers=3, drop_path_prob=0.1)
    assert isinstance(net, DartsSegmentationNet) and net.drop_path_prob == 0.1
    assert net.decoder.classifier.out_channels == 19
    assert not isinstance(space.build(DARTS_V2, DatasetInfo("x", 3, 19, 32), channels=4, layers=3),
                          DartsSegmentationNet)
    with pytest.raises(ConfigError, match="auxiliary"):
        space.build(DARTS_V2, cityscapes, channels=4, layers=3, auxiliary=True)
    with pytest.raises(ValueError, match="classification, segmentation"):
        DatasetInfo("x", 3, 19, 32, task="detection")


def test_describe_prints_parameters_and_multiply_adds_on_cityscapes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from raynas.cli import main

    args = ["describe", "--arch", "DARTS_V2", "--dataset", "cityscapes", "--channels", "4",
            "--layers", "3", "--json"]
    assert main([*args, "--input-size", "32x64"]) == 0
    out = json.loads(capsys.readouterr().out)
    net = DartsCnnSpace().build(DARTS_V2, dataset_info("cityscapes"), channels=4, layers=3)
    assert out["params"] == out["params_with_aux"] == sum(p.numel() for p in net.parameters())
    assert out["macs"] == count_macs(net, (3, 32, 64))[0]
    assert main([*args, "--input-size", "64x128"]) == 0
    assert json.loads(capsys.readouterr().out)["macs"] > 3 * out["macs"]  # ~4x the pixels


def test_the_cityscapes_transfer_job_builds_with_its_settings() -> None:
    config = load_retrain_job(JOBS / "transfer_darts_cityscapes.yaml",
                                 ["retrain.channels=4", "retrain.layers=3"])
    info = dataset_info(config.data.name)
    net = build_network(config, DARTS_V2, info, example=torch.randn(3, 33, 33))
    assert isinstance(net, DartsSegmentationNet) and net.drop_path_prob == 0.0  # raised by fit()
    aux = load_retrain_job(JOBS / "transfer_darts_cityscapes.yaml",
                              ["retrain.channels=4", "retrain.layers=3", "retrain.auxiliary_weight=0.4"])
    with pytest.raises(ConfigError, match="auxiliary"):
        build_network(aux, DARTS_V2, info, example=torch.randn(3, 33, 33))
    nb201 = load_retrain_job(JOBS / "transfer_darts_cityscapes.yaml", [
        "space.name=nb201", "retrain.channels=4", "retrain.layers=1", "retrain.drop_path_prob=0",
        "architecture=|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    ])
    with pytest.raises(ConfigError, match="'nb201' space builds no segmentation network"):
        build_network(nb201, SPACES.create("nb201").parse(nb201.architecture), info,
                      example=torch.randn(3, 32, 32))


def test_a_cell_searched_on_digits_transfers_to_cityscapes(tmp_path: Path) -> None:
    search = tiny_job(tmp_path, train={"epochs": 1}, data={"limit": 64})
    search_run = run_search(parse_job(search), echo=lambda _: None).run_id
    root = tmp_path / "cityscapes"
    write_cityscapes(root, "train", {"aachen": 2, "bochum": 2})
    write_cityscapes(root, "val", {"frankfurt": 2})  # 24x40 whole images: padded to 32x48
    job = {
        "name": "transfer-tiny", "architecture": f"run:{search_run}",
        "space": {"name": "darts", "nodes": 2},  # the searched space: 2-node cells
        "data": {"name": "cityscapes", "path": str(root), "downscale": 1, "crop_size": 16,
                 "batch_size": 2},
        "retrain": {"epochs": 1, "channels": 4, "layers": 3, "learning_rate": 0.01},
        "tracking": search["tracking"],
    }
    lines: list[str] = []
    result = run_retrain(parse_retrain_job(job), echo=lines.append, fresh=True)
    client = MlflowClient(search["tracking"]["tracking_uri"])
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["raynas.lineage.kind"] == "transfer"  # searched on digits
    assert run.data.tags["raynas.lineage.source_run_id"] == search_run == result.source_run_id
    assert result.architecture.key() == client.get_run(search_run).data.tags["raynas.architecture_key"]
    history = client.get_metric_history(result.run_id, "test_miou")
    assert len(history) == 1 and history[0].value == pytest.approx(result.metrics["test_miou"])
    assert 0 <= result.metrics["test_miou"] <= 1 and "mIoU" in lines[-1]
    assert "testing on its test split" in lines[0]  # Cityscapes val
