"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images of 10 classes.

They ship inside scikit-learn, so the quick start searches on real data without a download.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from raynas.data.base import DATASETS, LoaderConfig
from raynas.data.transforms import ImageTensors, Normalize
from raynas.types import DatasetInfo


@dataclass(frozen=True)
class DigitsConfig(LoaderConfig):
    """The digits need no path; ``seed`` shuffles them before the split (they are sorted by writer)."""

    shuffle_seed: int = 0


@DATASETS.register("digits", config=DigitsConfig)
class Digits:
    """scikit-learn's ``load_digits``: pixel values 0..16, scaled and normalised."""

    info = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = config or DigitsConfig()

    def train_set(self) -> ImageTensors:
        from sklearn.datasets import load_digits

        data = load_digits()
        order = torch.randperm(len(data.target), generator=torch.Generator().manual_seed(
            self.config.shuffle_seed))
        images = torch.as_tensor(data.images, dtype=torch.float32)[order].unsqueeze(1)  # (N,1,8,8)
        labels = torch.as_tensor(data.target, dtype=torch.long)[order]
        scaled = images / 16.0
        normalize = Normalize((float(scaled.mean()),), (float(scaled.std()),))
        return ImageTensors(images, labels, scale=16.0, normalize=normalize)
