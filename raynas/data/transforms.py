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


class Cutout:
    """DARTS's Cutout (quark0/darts ``cnn/utils.py``, after DeVries and Taylor, 2017): a
    ``length`` x ``length`` square centred on a uniformly drawn pixel, clipped at the border, set
    to zero in the normalised image (every channel)."""

    def __init__(self, length: int) -> None:
        self.length = length

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (C, H, W) -> (C, H, W)
        _, h, w = x.shape
        y, c = int(torch.randint(h, ())), int(torch.randint(w, ()))
        return cut_out(x, y, c, self.length)


def cut_out(x: torch.Tensor, y: int, c: int, length: int) -> torch.Tensor:
    """``x`` with the square of side ``length`` centred at row ``y``, column ``c`` zeroed,
    clipped to the image as ``np.clip(y - length // 2, 0, h)`` ... in DARTS's ``Cutout``."""
    _, h, w = x.shape
    half = length // 2
    y1, y2 = min(max(y - half, 0), h), min(max(y + half, 0), h)
    x1, x2 = min(max(c - half, 0), w), min(max(c + half, 0), w)
    x = x.clone()
    x[:, y1:y2, x1:x2] = 0.0
    return x


class ImageTensors(torch.utils.data.Dataset):
    """Images held as one uint8 or float tensor (N, C, H, W) with integer labels."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, scale: float,
        normalize: Normalize, augment: RandomCropFlip | None = None, cutout: Cutout | None = None,
    ) -> None:
        self.images = images
        self.labels = labels
        self.scale = scale
        self.normalize = normalize
        self.augment = augment
        self.cutout = cutout

    def __len__(self) -> int:
        return len(self.labels)

    def plain(self) -> ImageTensors:
        """The same images (the same tensors), normalised but neither augmented nor cut out."""
        return ImageTensors(self.images, self.labels, scale=self.scale, normalize=self.normalize)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.images[i].float() / self.scale
        if self.augment is not None:
            x = self.augment(x)
        x = self.normalize(x)
        if self.cutout is not None:  # after normalising, as DARTS's transforms
            x = self.cutout(x)
        return x, int(self.labels[i])
