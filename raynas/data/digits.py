"""scikit-learn's handwritten digits: 1,797 real 8x8 grey images of 10 classes.

They ship inside scikit-learn, so the quick start searches on real data without a download.
They are read from scikit-learn's own file (``sklearn/datasets/data/digits.csv.gz``, as its
``load_digits`` reads it) without importing scikit-learn: that import took 0.8 s of every Ray
actor's start on two cores.
"""

from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from raynas.data.base import DATASETS, LoaderConfig
from raynas.data.transforms import ImageTensors, Normalize
from raynas.types import DatasetInfo


@dataclass(frozen=True)
class DigitsConfig(LoaderConfig):
    """The digits need no path; ``seed`` shuffles them before the split (they are sorted by writer)."""

    shuffle_seed: int = 0


@DATASETS.register("digits", config=DigitsConfig, traits={"tokens": False})
class Digits:
    """scikit-learn's ``load_digits``: pixel values 0..16, scaled and normalised."""

    info = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)

    def __init__(self, config: DigitsConfig | None = None) -> None:
        self.config = config or DigitsConfig()

    def train_set(self) -> ImageTensors:
        pixels, target = load_digits_arrays()
        order = torch.randperm(len(target), generator=torch.Generator().manual_seed(
            self.config.shuffle_seed))
        images = torch.as_tensor(pixels, dtype=torch.float32)[order].unsqueeze(1)  # (N,1,8,8)
        labels = torch.as_tensor(target, dtype=torch.long)[order]
        scaled = images / 16.0
        normalize = Normalize((float(scaled.mean()),), (float(scaled.std()),))
        return ImageTensors(images, labels, scale=16.0, normalize=normalize)


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``load_digits`` gives them: images (1797, 8, 8) of 0..16 and labels (1797,).
    Read from the CSV scikit-learn ships (64 pixel columns, then the label); through
    ``load_digits`` where that file is not where scikit-learn 1.x keeps it."""
    spec = importlib.util.find_spec("sklearn")  # finds the package without importing it
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    files = [Path(f) / "datasets" / "data" / "digits.csv.gz" for f in folders]
    found = next((f for f in files if f.is_file()), None)
    if found is None:
        from sklearn.datasets import load_digits

        data = load_digits()
        return data.images, data.target
    with gzip.open(found, "rt") as text:
        table = np.loadtxt(text, delimiter=",")
    return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
