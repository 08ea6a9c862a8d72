"""ImageNet16-120, NAS-Bench-201's third dataset (Dong and Yang, ICLR 2020): the first 120 classes
of ImageNet downsampled to 16x16 (Chrabaszcz, Loshchilov and Hutter, "A Downsampled Variant of
ImageNet as an Alternative to the CIFAR datasets", 2017).

The files are the pickled batches of the downsampled ImageNet 16x16 release, as the benchmark reads
them (``xautodl/datasets/DownsampledImageNet.py``): ``train_data_batch_1`` .. ``train_data_batch_10``,
each a dict with ``data`` (N, 3072) uint8, channel-major, and ``labels`` numbered from 1; the
benchmark keeps labels 1..120 and shifts them to 0..119. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import torch

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.data.pickled import load_batch
from raynas.data.transforms import ImageTensors, Normalize, RandomCropFlip
from raynas.errors import DataError, cause
from raynas.types import DatasetInfo

# The benchmark's channel statistics and augmentation (random crop with 2 pixels of padding, flip).
IMAGENET16_MEAN = (122.68 / 255, 116.66 / 255, 104.01 / 255)
IMAGENET16_STD = (63.22 / 255, 61.26 / 255, 65.09 / 255)
TRAIN_FILES = tuple(f"train_data_batch_{i}" for i in range(1, 11))
TEST_FILES = ("val_data",)  # the benchmark splits it into its valid and test halves
NUM_CLASSES = 120


@dataclass(frozen=True)
class ImageNet16Config(LoaderConfig):
    """``path``: the folder holding ``train_data_batch_1..10``; ``augment``: crop and flip."""

    path: Annotated[
        str, Rule(missing="the folder holding the ImageNet16 batches train_data_batch_1..10")
    ] = ""
    augment: bool = True


def _field(batch: Any, name: str) -> Any:
    # Batches pickled by Python 2 load with bytes keys, those pickled by Python 3 with str keys.
    if name in batch:
        return batch[name]
    return batch[name.encode()]


def read_imagenet16(
    folder: Path, files: tuple[str, ...] = TRAIN_FILES, num_classes: int = NUM_CLASSES
) -> tuple[np.ndarray, np.ndarray]:
    """The images of the first ``num_classes`` classes: (N, 3, 16, 16) uint8 and 0-based labels.

    Raises:
        DataError: A file is missing or is not an ImageNet16 batch.
    """
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(
                f"ImageNet16 batch file {str(path)!r} is missing (expected {files[0]}..{files[-1]})"
            )
        try:
            # The official format is a pickle: read with an unpickler that resolves only numpy's arrays.
            batch = load_batch(path, encoding="latin1", what="an ImageNet16 batch")
            data = np.asarray(_field(batch, "data"), dtype=np.uint8)
            label = np.asarray(_field(batch, "labels"), dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{str(path)!r} is not an ImageNet16 batch (needs 'data' and 'labels'): {cause(exc)}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3 * 16 * 16 or len(data) != len(label):
            raise DataError(f"{str(path)!r}: 'data' must be (N, 768) with one label per row")
        keep = (label >= 1) & (label <= num_classes)
        images.append(data[keep].reshape(-1, 3, 16, 16))
        labels.append(label[keep] - 1)
    return np.concatenate(images), np.concatenate(labels)


@DATASETS.register("ImageNet16-120", config=ImageNet16Config, traits={"tokens": False})
class ImageNet16:
    """ImageNet16-120: 16x16 images of 120 ImageNet classes (151,700 training images)."""

    info = DatasetInfo(name="ImageNet16-120", in_channels=3, num_classes=NUM_CLASSES, image_size=16)

    def __init__(self, config: ImageNet16Config) -> None:
        self.config = config

    def train_set(self) -> ImageTensors:
        folder = Path(self.config.path).expanduser()
        if not (folder / TRAIN_FILES[0]).is_file():
            raise DataError(
                f"data.path {self.config.path!r} holds no ImageNet16 batches: expected "
                f"{TRAIN_FILES[0]}..{TRAIN_FILES[-1]} (the downsampled ImageNet 16x16 release)"
            )
        return self._images(read_imagenet16(folder), augment=self.config.augment)

    def test_set(self) -> ImageTensors:
        """``val_data`` (6,000 images of the 120 classes), never augmented."""
        return self._images(read_imagenet16(Path(self.config.path).expanduser(), TEST_FILES), augment=False)

    @staticmethod
    def _images(arrays: tuple[np.ndarray, np.ndarray], *, augment: bool) -> ImageTensors:
        images, labels = arrays
        return ImageTensors(
            torch.from_numpy(images),
            torch.from_numpy(labels),
            scale=255.0,
            normalize=Normalize(IMAGENET16_MEAN, IMAGENET16_STD),
            augment=RandomCropFlip(2) if augment else None,
        )
