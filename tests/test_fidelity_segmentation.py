"""Segmentation as Auto-DeepLab and DeepLab do it (issue 15, docs/fidelity.md): the poly
learning-rate schedule, dilation after the stride-removed cell, the network-level path count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from raynas.errors import ArchitectureError
from raynas.spaces.auto_deeplab import check_path
from raynas.spaces.darts_genotype import published_genotype
from raynas.spaces.darts_segmentation import DartsSegmentationNet
from raynas.train.loop import fit
from raynas.train.schedules import poly_lr


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
