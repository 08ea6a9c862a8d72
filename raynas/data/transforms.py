"""Tensor transforms for in-memory image datasets (no PIL round trip)."""

from __future__ import annotations

import torch


class Normalize:
    """Per-channel ``(x - mean) / std`` on a (C, H, W) float tensor."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        self.mean = torch.tensor(mean).view(-1, 1, 1)
        self.std = torch.tensor(std).view(-1, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RandomCropFlip:
    """Random crop after zero padding, then a random horizontal flip (the CIFAR augmentation)."""

    def __init__(self, padding: int = 4) -> None:
        self.padding = padding

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (C, H, W)
        _, h, w = x.shape
        p = self.padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        i, j = torch.randint(0, 2 * p + 1, (2,)).tolist()
        x = padded[:, i : i + h, j : j + w]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x


class ImageTensors(torch.utils.data.Dataset):
    """Images held as one uint8 or float tensor (N, C, H, W) with integer labels."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, scale: float,
        normalize: Normalize, augment: RandomCropFlip | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.scale = scale
        self.normalize = normalize
        self.augment = augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float() / self.scale
        if self.augment is not None:
            x = self.augment(x)
        return self.normalize(x), int(self.labels[i])
