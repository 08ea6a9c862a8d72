"""He et al.'s ResNets for CIFAR (Deep Residual Learning, CVPR 2016, Sec. 4.2): a 3x3 stem of 16
channels, three stages of ``n`` basic blocks at 16, 32 and 64 channels (the second and third
starting at stride 2), global average pooling and a linear classifier; 6n + 2 layers. A block that
changes the shape adds its input through the paper's option A shortcut: every other pixel, the new
channels zero (no parameters). These are the backbones of relax's ResNet trainer
(``examples/resnet/trainer.py``: ``--backbone resnet20``), which takes them from
akamaster/pytorch_resnet_cifar10 ``resnet.py`` (ResNet-20: 0.27M parameters)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

DEPTHS: dict[str, int] = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
"""Blocks per stage of each CIFAR ResNet (``6n + 2`` layers)."""


class PadShortcut(nn.Module):
    """Option A: ``x[:, :, ::2, ::2]`` with ``planes // 4`` zero channels on each side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class CifarBasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm, ReLU between and after the sum with the shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            PadShortcut(planes) if stride != 1 or in_planes != planes else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR ResNet of ``blocks`` basic blocks per stage.

    Args:
        blocks: Blocks in each of the three stages (ResNet-20: 3).
        num_classes: Classifier outputs.
        in_channels: Input image channels.
    """

    def __init__(self, blocks: int, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, planes = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks):
                layers.append(CifarBasicBlock(planes, width, stride if i == 0 else 1))
                planes = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)  # torch's initialisation, as the stored resnet.py

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


__all__ = ["DEPTHS", "CifarBasicBlock", "CifarResNet", "PadShortcut"]
