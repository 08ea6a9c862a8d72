"""Segmentation as Auto-DeepLab and DeepLab do it (issue 15, docs/fidelity.md): the poly
learning-rate schedule, dilation after the stride-removed cell, the network-level path count."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from raynas.data import dataset_info
from raynas.errors import ArchitectureError
from raynas.runs.jobs import load_retrain_job
from raynas.runs.retrain import build_network
from raynas.spaces import SPACES
from raynas.spaces.auto_deeplab import AutoDeepLabArchitecture, AutoDeepLabNet, check_path
from raynas.spaces.darts_genotype import published_genotype
from raynas.spaces.darts_segmentation import DartsSegmentationNet
from raynas.train.loop import fit
from raynas.train.schedules import poly_lr

JOBS = Path(__file__).parents[1] / "jobs"


def test_poly_schedule_values() -> None:
    """lr = base * (1 - step / total) ** 0.9 (DeepLab's poly policy, Auto-DeepLab Sec. 5.2)."""
    assert poly_lr(0.05, 0, 100) == 0.05
    assert poly_lr(0.05, 50, 100) == pytest.approx(0.05 * 0.5**0.9)  # 0.026794...
    assert poly_lr(0.05, 50, 100) == pytest.approx(0.0267943, abs=1e-7)
    assert poly_lr(0.05, 90, 100) == pytest.approx(0.05 * 0.1**0.9)
    assert poly_lr(0.05, 100, 100) == 0.0 and poly_lr(0.05, 120, 100) == 0.0
    assert poly_lr(1.0, 3, 4, power=1.0) == pytest.approx(0.25)


def test_fit_follows_the_poly_schedule_every_iteration() -> None:
    """With lr_power, every SGD step of fit uses the poly rate of its iteration (2 epochs of 3
    batches: iterations 0..5 of 6), and an epoch reports its first iteration's rate."""
    torch.manual_seed(0)
    model = nn.Linear(2, 3)
    batches = [(torch.randn(4, 2), torch.randint(0, 3, (4,))) for _ in range(3)]
    seen: list[float] = []
    real_step = torch.optim.SGD.step

    def spy(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    torch.optim.SGD.step = spy  # type: ignore[method-assign]
    try:
        epochs = [m for m, _ in fit(model, batches, batches[:1], torch.device("cpu"), epochs=2,
                                    learning_rate=0.05, momentum=0.9, weight_decay=0.0, grad_clip=5.0,
                                    lr_power=0.9)]
    finally:
        torch.optim.SGD.step = real_step  # type: ignore[method-assign]
    assert seen == pytest.approx([poly_lr(0.05, i, 6) for i in range(6)])
    assert [m["lr"] for m in epochs] == pytest.approx([0.05, poly_lr(0.05, 3, 6)])


def test_segmentation_cells_after_the_stride_removed_one_are_dilated() -> None:
    """Output stride 16 the DeepLab way: the last reduction cell runs at stride 1 with its own
    dilations, every convolution of the cells after it at twice its dilation and padding; the
    parameters and the output size are those of the undilated network."""
    genotype = published_genotype("DARTS_V2")
    net = DartsSegmentationNet(genotype=genotype, channels=8, layers=6, num_classes=5, filters=16)
    stride_removed = 2 * 6 // 3

    def dilations(cell: nn.Module) -> set[tuple[int, ...]]:
        return {m.dilation for m in cell.modules() if isinstance(m, nn.Conv2d) and max(m.kernel_size) > 1}

    for i, cell in enumerate(net.cells):
        expected = {(2, 2), (4, 4)} if i > stride_removed else {(1, 1), (2, 2)}  # sep and dil convs
        assert dilations(cell) <= expected, i  # (a DARTS_V2 reduction cell has no convolution)
    assert (2, 2) in dilations(net.cells[-1])  # a sep_conv at twice its dilation
    x = torch.randn(1, 3, 64, 64)
    assert net.eval()(x).shape == (1, 5, 64, 64)


def test_auto_deeplab_path_count() -> None:
    """The network level of the trellis as raynas builds it (Fig. 1, Eq. 6: L = 12 layers, the
    first at /4 or /8, each moving one rate at most): 75,025 paths. The paper's 2.9 x 10^4
    (Sec. 5.1) is 28,657, the count with the first layer at /4 only (the paths of 11 moves from
    /4; its searched path and the official hnasnet backbone start there)."""

    def count(prefix: list[int], first: tuple[int, ...]) -> int:
        if len(prefix) == 12:
            return 1
        total = 0
        for r in range(4) if prefix else first:
            try:
                check_path([*prefix, r])
            except ArchitectureError:
                continue
            total += count([*prefix, r], first)
        return total

    assert count([], (0, 1)) == 75_025
    assert count([], (0,)) == 28_657  # the paper's 2.9e4


def _tiny_auto_deeplab(drop_path_prob: float) -> AutoDeepLabNet:
    # Block 0: sep_conv on H^{l-1} + skip on H^{l-2}; block 1: atrous on block 0 + max pool on
    # H^{l-1}. The path moves down once: its second cell's skip_connect is strided (a 1x1 conv).
    arch = AutoDeepLabArchitecture(
        cell=(("sep_conv_3x3", 1), ("skip_connect", 0), ("atrous_conv_3x3", 2), ("max_pool_3x3", 1)),
        path=(0, 1, 1),
    )
    torch.manual_seed(0)
    return AutoDeepLabNet(arch=arch, filter_multiplier=2, num_classes=3, drop_path_prob=drop_path_prob)


def test_auto_deeplab_drop_path_grows_with_depth_as_nas_cell() -> None:
    """ScheduledDropPath as nas_cell.py's _apply_drop_path: cell l of L drops with probability
    p * (l + 1) / L in training, nothing in eval mode; every op but skip_connect (the official
    'none', spared even strided) is droppable."""
    net = _tiny_auto_deeplab(0.3)
    assert [cell.droppable for cell in net.cells] == [(True, False, True, True)] * 3
    seen: list[float] = []
    for cell in net.cells:
        cell.register_forward_pre_hook(lambda _m, _a, kw: seen.append(kw["drop_prob"]), with_kwargs=True)
    x = torch.randn(2, 3, 16, 16)
    net.train()(x)
    assert seen == pytest.approx([0.1, 0.2, 0.3])
    seen.clear()
    net.eval()(x)
    assert seen == [0.0, 0.0, 0.0]


def test_auto_deeplab_drop_path_off_at_zero_and_in_eval() -> None:
    """At p = 0 training passes are deterministic; in eval mode p changes nothing; in training
    p > 0 changes the output."""
    x = torch.randn(4, 3, 16, 16)
    plain, dropped = _tiny_auto_deeplab(0.0), _tiny_auto_deeplab(0.5)
    torch.manual_seed(1)
    first = plain.train()(x)
    torch.manual_seed(2)
    assert torch.equal(plain(x), first)
    dropped.load_state_dict(plain.state_dict())  # the same BatchNorm statistics too
    assert torch.equal(dropped.eval()(x), plain.eval()(x))
    torch.manual_seed(3)
    assert not torch.allclose(dropped.train()(x), first)


def test_auto_deeplab_cell_drops_whole_samples_and_scales_the_kept_by_one_over_keep() -> None:
    """A drop mask per sample, survivors scaled by 1 / keep (DARTS's cnn/utils.py drop_path,
    nas_cell.py's keep_prob_inv): the sep_conv edge of a sample is either 0 or its output / keep;
    the skip edge is never dropped."""
    cell = _tiny_auto_deeplab(0.0).cells[0].train()  # at /4, from the stem's 128 and 64 channels
    size = (4, 4)
    h_prev = torch.randn(16, cell.preprocess1[1].in_channels, *size)  # (16, 128, 4, 4)
    h_pp = torch.randn(16, cell.preprocess0[1].in_channels, *size)  # (16, 64, 4, 4)
    s0 = cell.preprocess0(h_pp)
    full = cell(h_prev, h_pp, size)[:, : s0.shape[1]]  # block 0: sep(s1) + skip(s0)
    sep = full - s0
    torch.manual_seed(0)
    keep = 0.5
    out = cell(h_prev, h_pp, size, drop_prob=1 - keep)[:, : s0.shape[1]] - s0
    kept = [bool(out[i].abs().sum() > 0) for i in range(16)]
    assert 0 < sum(kept) < 16  # some samples dropped, some kept
    for i in range(16):
        expected = sep[i] / keep if kept[i] else torch.zeros_like(sep[i])
        torch.testing.assert_close(out[i], expected)


def test_auto_deeplab_retraining_accepts_drop_path() -> None:
    """raynas train builds the Auto-DeepLab network with drop path (it refused it before); fit
    raises the attribute from 0 (DARTS's per-epoch ramp)."""
    config = load_retrain_job(JOBS / "transfer_darts_cityscapes.yaml", [
        "space.name=auto_deeplab", "architecture=hnasnet", "retrain.channels=2", "retrain.layers=0",
    ])
    assert config.retrain.drop_path_prob == 0.2
    net = build_network(config, SPACES.create("auto_deeplab").parse("hnasnet"),
                        dataset_info("cityscapes"), example=torch.randn(3, 33, 33))
    assert isinstance(net, AutoDeepLabNet) and net.drop_path_prob == 0.0  # raised by fit()


def test_auto_deeplab_drop_path_ramps_up_over_the_epochs_of_fit() -> None:
    """fit() raises the network's drop-path probability linearly from 0, per epoch (DARTS's
    train.py: drop_path_prob * epoch / epochs), and the cells of the Auto-DeepLab network drop
    with that times (l + 1) / L: over 4 epochs at 0.4, cell l of 3 sees 0.4 * e / 4 * (l + 1) / 3."""
    from raynas.train.loop import fit

    net = _tiny_auto_deeplab(0.0)
    seen: list[float] = []
    for cell in net.cells:
        cell.register_forward_pre_hook(
            lambda m, _a, kw: seen.append(kw["drop_prob"]) if m.training else None, with_kwargs=True
        )
    torch.manual_seed(0)
    batch = (torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    epochs = list(fit(net, [batch], [batch], torch.device("cpu"), epochs=4, learning_rate=0.01,
                      momentum=0.9, weight_decay=0.0, grad_clip=5.0, drop_path_prob=0.4))
    assert len(epochs) == 4
    expected = [0.4 * e / 4 * (layer + 1) / 3 for e in range(4) for layer in range(3)]
    assert seen == pytest.approx(expected)
