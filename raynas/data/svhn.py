"""SVHN (Netzer et al., 2011), the cropped-digits format, read from the official MATLAB files on
local disk: ``train_32x32.mat``, ``test_32x32.mat`` and optionally ``extra_32x32.mat`` of
http://ufldl.stanford.edu/housenumbers/. Each holds ``X``, (32, 32, 3, N) uint8 images, and ``y``,
(N, 1) labels 1..10 where 10 is the digit 0. Read with ``scipy.io.loadmat``; nothing is downloaded.

The normalisation and augmentation are RobustDARTS's (random 32x32 crop of the 4-padded image and
horizontal flip, as for CIFAR), on whose SVHN searches RF-DARTS reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.data.transforms import Cutout, ImageTensors, Normalize, RandomCropFlip
from raynas.errors import DataError, cause
from raynas.types import DatasetInfo

# RobustDARTS's src/utils.py (_data_transforms_svhn).
SVHN_MEAN, SVHN_STD = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)


@dataclass(frozen=True)
class SvhnConfig(LoaderConfig):
    """Where the ``.mat`` files are (``path``, a folder); ``extra`` adds the 531,131 extra
    training images; ``augment`` applies the random crop and flip; ``cutout`` (a side in pixels,
    0 for none) Cutout after them (RobustDARTS's ``_data_transforms_svhn`` with ``--cutout``)."""

    path: Annotated[str, Rule(missing="the folder holding train_32x32.mat and test_32x32.mat")] = ""
    extra: bool = False
    augment: bool = True
    cutout: Annotated[int, Rule(ge=0)] = 0


def read_mat(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The images (N, 3, 32, 32) uint8 and labels (N,) 0..9 of one official SVHN ``.mat`` file."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"SVHN file {str(path)!r} is missing (the official cropped-digits .mat files)")
    try:
        mat = scipy.io.loadmat(str(path))
        images, labels = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    except (scipy.io.matlab.MatReadError, ValueError, KeyError, TypeError, OSError,
            NotImplementedError) as exc:
        raise DataError(f"{str(path)!r} is not an SVHN .mat file (needs 'X' and 'y'): {cause(exc)}") from None
    if images.ndim != 4 or images.shape[:3] != (32, 32, 3) or images.shape[3] != len(labels):
        raise DataError(
            f"{str(path)!r}: 'X' must be (32, 32, 3, N) with one label per image, got {images.shape}"
        )
    if len(labels) and (labels.min() < 1 or labels.max() > 10):
        raise DataError(f"{str(path)!r}: labels must be 1..10 (10 is the digit 0)")
    images = np.ascontiguousarray(images.transpose(3, 2, 0, 1), dtype=np.uint8)  # (N, 3, 32, 32)
    return images, (labels % 10).astype(np.int64)


@DATASETS.register("svhn", config=SvhnConfig, traits={"tokens": False})
class Svhn:
    """SVHN: 73,257 training and 26,032 test images of the digits 0-9 (label 0 for the digit 0)."""

    info = DatasetInfo(name="svhn", in_channels=3, num_classes=10, image_size=32)

    def __init__(self, config: SvhnConfig) -> None:
        self.config = config

    def train_set(self) -> ImageTensors:
        """``train_32x32.mat`` (and ``extra_32x32.mat`` with ``extra``), augmented if configured."""
        files = ("train_32x32.mat", "extra_32x32.mat") if self.config.extra else ("train_32x32.mat",)
        return self._images(files, augment=self.config.augment)

    def test_set(self) -> ImageTensors:
        """``test_32x32.mat``, never augmented."""
        return self._images(("test_32x32.mat",), augment=False)

    def _images(self, files: tuple[str, ...], *, augment: bool) -> ImageTensors:
        folder = Path(self.config.path).expanduser()
        parts = [read_mat(folder / name) for name in files]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        return ImageTensors(
            torch.from_numpy(images), torch.from_numpy(labels), scale=255.0,
            normalize=Normalize(SVHN_MEAN, SVHN_STD), augment=RandomCropFlip(4) if augment else None,
            cutout=Cutout(self.config.cutout) if augment and self.config.cutout else None,
        )
