"""CIFAR-10 and CIFAR-100 read from the official python batch files on local disk.

The files are the pickled batches of https://www.cs.toronto.edu/~kriz/cifar.html:
``cifar-10-batches-py/data_batch_1..5`` and ``test_batch`` (keys ``data``, ``labels``) and
``cifar-100-python/train`` and ``test`` (keys ``data``, ``fine_labels``); ``data`` is (N, 3072)
uint8, channel-major. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.data.pickled import load_batch
from raynas.data.transforms import Cutout, ImageTensors, Normalize, RandomCropFlip
from raynas.errors import DataError, cause
from raynas.types import DatasetInfo

# Channel statistics used by DARTS (cnn/utils.py).
CIFAR10_MEAN, CIFAR10_STD = (0.49139968, 0.48215827, 0.44653124), (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


@dataclass(frozen=True)
class CifarConfig(LoaderConfig):
    """Where the batches are: the ``cifar-10-batches-py`` (or ``cifar-100-python``) folder or
    its parent. ``augment`` applies DARTS's random crop and flip to the training images;
    ``cutout`` (a side in pixels, 0 for none) DARTS's Cutout after them, as its evaluation runs
    (``train.py --cutout``, length 16) and its search does not. ``augment_valid`` augments the
    search split's validation half as its training half (DARTS's ``train_search.py`` splits one
    augmented set); false, the validation images are plain, as Auto-Keras validates."""

    path: Annotated[str, Rule(missing="the folder holding the CIFAR batches")] = ""
    augment: bool = True
    cutout: Annotated[int, Rule(ge=0)] = 0
    augment_valid: bool = True


def read_batches(folder: Path, files: tuple[str, ...], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate pickled CIFAR batches into (N, 3, 32, 32) uint8 images and (N,) labels."""
    images, labels = [], []
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DataError(f"CIFAR batch file {str(path)!r} is missing (expected {', '.join(files)})")
        try:
            # The official format is a pickle: read with an unpickler that resolves only numpy's arrays.
            batch = load_batch(path, encoding="bytes", what="a CIFAR python batch")
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            label = np.asarray(batch[label_key.encode()], dtype=np.int64)
        except (pickle.UnpicklingError, KeyError, EOFError, ValueError, TypeError, AttributeError) as exc:
            raise DataError(
                f"{str(path)!r} is not a CIFAR python batch (needs 'data' and '{label_key}'): {cause(exc)}"
            ) from None
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(label):
            raise DataError(f"{str(path)!r}: 'data' must be (N, 3072) with one label per row")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(label)
    return np.concatenate(images), np.concatenate(labels)


class _Cifar:
    folder_name: str
    archive: str  # the file the folder comes in
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_key: str
    mean: tuple[float, ...]
    std: tuple[float, ...]
    info: DatasetInfo

    def __init__(self, config: CifarConfig) -> None:
        self.config = config

    def folder(self) -> Path:
        root = Path(self.config.path).expanduser()
        for candidate in (root, root / self.folder_name):
            if (candidate / self.train_files[0]).is_file():
                return candidate
        # The archive as downloaded (torchvision keeps it beside the folder it extracts).
        archive = root / self.archive
        hint = f"; {str(archive)!r} is there: extract it (tar xzf)" if archive.is_file() else ""
        raise DataError(
            f"data.path {self.config.path!r} holds no {self.info.name} batches: expected "
            f"{self.folder_name}/{self.train_files[0]} (the python version of the dataset){hint}"
        )

    def train_set(self) -> ImageTensors:
        return self._images(self.train_files, augment=self.config.augment)

    def test_set(self) -> ImageTensors:
        """The official test batch (10,000 images), never augmented."""
        return self._images(self.test_files, augment=False)

    def _images(self, files: tuple[str, ...], *, augment: bool) -> ImageTensors:
        images, labels = read_batches(self.folder(), files, self.label_key)
        return ImageTensors(
            torch.from_numpy(images),
            torch.from_numpy(labels),
            scale=255.0,
            normalize=Normalize(self.mean, self.std),
            augment=RandomCropFlip(4) if augment else None,
            cutout=Cutout(self.config.cutout) if augment and self.config.cutout else None,
        )


@DATASETS.register("cifar10", config=CifarConfig, traits={"tokens": False})
class Cifar10(_Cifar):
    """CIFAR-10: 50,000 training and 10,000 test images of 10 classes."""

    folder_name = "cifar-10-batches-py"
    archive = "cifar-10-python.tar.gz"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    label_key = "labels"
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    info = DatasetInfo(name="cifar10", in_channels=3, num_classes=10, image_size=32)


@DATASETS.register("cifar100", config=CifarConfig, traits={"tokens": False})
class Cifar100(_Cifar):
    """CIFAR-100: 50,000 training and 10,000 test images of 100 classes (fine labels)."""

    folder_name = "cifar-100-python"
    archive = "cifar-100-python.tar.gz"
    train_files = ("train",)
    test_files = ("test",)
    label_key = "fine_labels"
    mean, std = CIFAR100_MEAN, CIFAR100_STD
    info = DatasetInfo(name="cifar100", in_channels=3, num_classes=100, image_size=32)
