"""The DARTS evaluation networks (``NetworkCIFAR``, ``NetworkImageNet``), built from a genotype
exactly as in the authors' ``cnn/model.py`` (quark0/darts), including the auxiliary heads and
drop path, so that parameter counts match the published ones.
"""

from __future__ import annotations

from collections.abc import Container

import torch
from torch import nn

from raynas.ops.darts import OPS, FactorizedReduce, Identity, ReLUConvBN
from raynas.spaces.darts_genotype import DartsGenotype


def drop_path(x: torch.Tensor, drop_prob: float) -> torch.Tensor:
    """Zero whole samples with probability ``drop_prob`` and rescale the rest (Larsson et al.)."""
    keep = 1.0 - drop_prob
    mask = torch.empty(x.size(0), 1, 1, 1, device=x.device, dtype=x.dtype).bernoulli_(keep)
    return x / keep * mask


class EvalCell(nn.Module):
    """A discrete cell: each intermediate node sums two operations on earlier states.

    A reduction cell applies the genotype's ``reduce`` edges with stride 2 on its inputs; with
    ``stride=1`` it keeps the resolution (a dense-prediction backbone at output stride 16).
    """

    def __init__(
        self, genotype: DartsGenotype, c_prev_prev: int, c_prev: int, channels: int,
        reduction: bool, reduction_prev: bool, *, stride: int | None = None,
    ) -> None:
        super().__init__()
        self.reduction = reduction
        stride = (2 if reduction else 1) if stride is None else stride
        if stride not in (1, 2) or (stride == 2 and not reduction):
            raise ValueError(f"a reduction cell has stride 1 or 2, a normal cell 1; got {stride}")
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(c_prev_prev, channels)
        else:
            self.preprocess0 = ReLUConvBN(c_prev_prev, channels, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(c_prev, channels, 1, 1, 0)
        edges = genotype.reduce if reduction else genotype.normal
        self.concat = genotype.reduce_concat if reduction else genotype.normal_concat
        self.multiplier = len(self.concat)
        self.indices = [index for _, index in edges]
        self.ops = nn.ModuleList(
            OPS.get(op)(channels, stride if index < 2 else 1, True) for op, index in edges
        )

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        for i in range(len(self.ops) // 2):
            node = 0
            for j in (2 * i, 2 * i + 1):
                op = self.ops[j]
                h = op(states[self.indices[j]])
                if self.training and drop_prob > 0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node = node + h
            states.append(node)
        return torch.cat([states[i] for i in self.concat], dim=1)  # (B, multiplier*C, H', W')


class AuxiliaryHead(nn.Sequential):
    """The auxiliary classifier on the features at two thirds of the depth.

    CIFAR (8x8 input): pool 5 stride 3 to 2x2. ImageNet (14x14 input): pool 5 stride 2, and no
    BatchNorm after the 768-channel conv, as in the DARTS code used for the paper's results.
    """

    def __init__(self, channels: int, num_classes: int, *, imagenet: bool) -> None:
        layers: list[nn.Module] = [
            nn.ReLU(inplace=True),
            nn.AvgPool2d(5, stride=2 if imagenet else 3, padding=0, count_include_pad=False),
            nn.Conv2d(channels, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
        ]
        if not imagenet:
            layers.append(nn.BatchNorm2d(768))
        layers += [nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(768, num_classes)]
        super().__init__(*layers)


def stack_cells(
    *, genotype: DartsGenotype, channels: int, layers: int, c_stem: int, reduction_prev: bool,
    keep_resolution: Container[int] = (),
) -> tuple[nn.ModuleList, list[int]]:
    """DARTS's cell stack (``cnn/model.py``): ``layers`` cells, reduction cells at one and two
    thirds of the depth, each doubling the channels.

    Args:
        genotype: The cells' genotype.
        channels: Initial channels C (a cell's output has ``len(concat) * C`` at its stage).
        layers: Number of cells.
        c_stem: Channels of the stem output(s) the first cell takes.
        reduction_prev: Whether the stem halved the resolution between the first cell's inputs
            (ImageNet: its two stems).
        keep_resolution: Indices of reduction cells that run at stride 1.

    Returns:
        The cells and each cell's output channels.
    """
    c_prev_prev, c_prev, c_curr = c_stem, c_stem, channels
    cells, outputs = nn.ModuleList(), []
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            c_curr *= 2
        stride = 2 if reduction and i not in keep_resolution else 1
        cell = EvalCell(genotype, c_prev_prev, c_prev, c_curr, reduction, reduction_prev, stride=stride)
        reduction_prev = stride == 2
        cells.append(cell)
        c_prev_prev, c_prev = c_prev, cell.multiplier * c_curr
        outputs.append(c_prev)
    return cells, outputs


def imagenet_stems(in_channels: int, channels: int) -> tuple[nn.Sequential, nn.Sequential]:
    """DARTS's ImageNet stems: ``stem0`` to /4 with C channels, ``stem1`` from there to /8."""
    c = channels
    stem0 = nn.Sequential(
        nn.Conv2d(in_channels, c // 2, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c // 2),
        nn.ReLU(inplace=True),
        nn.Conv2d(c // 2, c, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c),
    )
    stem1 = nn.Sequential(
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c),
    )
    return stem0, stem1


class _Network(nn.Module):
    """Cells stacked after a stem; reduction cells at one and two thirds of the depth."""

    def __init__(
        self, *, genotype: DartsGenotype, channels: int, layers: int, num_classes: int,
        auxiliary: bool, drop_path_prob: float, c_stem: int, reduction_prev: bool, imagenet: bool,
    ) -> None:
        super().__init__()
        self.drop_path_prob = drop_path_prob
        self.aux_index = 2 * layers // 3
        self.cells, outputs = stack_cells(
            genotype=genotype, channels=channels, layers=layers, c_stem=c_stem,
            reduction_prev=reduction_prev,
        )
        c_prev, c_aux = outputs[-1], outputs[self.aux_index]
        self.auxiliary_head = AuxiliaryHead(c_aux, num_classes, imagenet=imagenet) if auxiliary else None
        self.classifier = nn.Linear(c_prev, num_classes)

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes); in training with the auxiliary head, (logits, aux_logits)."""
        s0, s1 = self.stems(x)
        aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self.aux_index and self.auxiliary_head is not None and self.training:
                aux = self.auxiliary_head(s1)
        logits = self.classifier(self.pool(s1).flatten(1))
        return (logits, aux) if aux is not None else logits


class NetworkCIFAR(_Network):
    """The DARTS network for 32x32 inputs (CIFAR-10/100): 3x3 conv stem with 3C channels."""

    def __init__(
        self, *, genotype: DartsGenotype, channels: int = 36, layers: int = 20,
        num_classes: int = 10, in_channels: int = 3, auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> None:
        c_stem = 3 * channels
        super().__init__(
            genotype=genotype, channels=channels, layers=layers, num_classes=num_classes,
            auxiliary=auxiliary, drop_path_prob=drop_path_prob, c_stem=c_stem,
            reduction_prev=False, imagenet=False,
        )
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c_stem, 3, padding=1, bias=False), nn.BatchNorm2d(c_stem)
        )
        self.global_pooling = nn.AdaptiveAvgPool2d(1)

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)  # (B, 3C, H, W)
        return s, s

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pooling(x)


class NetworkImageNet(_Network):
    """The DARTS network for 224x224 ImageNet: two stride-2 stems, then cells from 28x28."""

    def __init__(
        self, *, genotype: DartsGenotype, channels: int = 48, layers: int = 14,
        num_classes: int = 1000, in_channels: int = 3, auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__(
            genotype=genotype, channels=channels, layers=layers, num_classes=num_classes,
            auxiliary=auxiliary, drop_path_prob=drop_path_prob, c_stem=channels,
            reduction_prev=True, imagenet=True,
        )
        self.stem0, self.stem1 = imagenet_stems(in_channels, channels)
        self.global_pooling = nn.AvgPool2d(7)

    def stems(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        return s0, self.stem1(s0)  # (B, C, H/8, W/8)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        return self.global_pooling(x)
