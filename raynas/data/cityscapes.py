"""Cityscapes (Cordts et al., CVPR 2016) for semantic segmentation, in its official layout:
``leftImg8bit/<split>/<city>/<name>_leftImg8bit.png`` with
``gtFine/<split>/<city>/<name>_gtFine_labelIds.png``.

Label ids are mapped to the 19 training classes of the official ``cityscapesScripts``
(``helpers/labels.py``, ``trainId``); every other id (void, and classes not evaluated such as
parking or caravan) becomes -100, PyTorch's default ``ignore_index``. The search split follows
Auto-DeepLab (Sec. 5.1): crops of ``crop_size`` from half-resolution images, the training images
in two random halves (trainA trains the weights, trainB the architecture).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from torch.utils.data import Dataset

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.errors import DataError
from raynas.types import DatasetInfo

IGNORE_INDEX = -100  # nn.CrossEntropyLoss's default ignore_index

# labelId -> trainId of cityscapesScripts helpers/labels.py, for the 19 evaluated classes.
LABEL_TO_TRAIN_ID: dict[int, int] = {
    7: 0,  # road
    8: 1,  # sidewalk
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    17: 5,  # pole
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
}
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)


def label_lookup() -> np.ndarray:
    """A table from every 8-bit label id to its train id (-100 where it is not evaluated)."""
    table = np.full(256, IGNORE_INDEX, dtype=np.int64)
    for label_id, train_id in LABEL_TO_TRAIN_ID.items():
        table[label_id] = train_id
    return table


@dataclass(frozen=True)
class CityscapesConfig(LoaderConfig):
    """Where Cityscapes is and how its images are cut (defaults: Auto-DeepLab's search, Sec. 5.1).

    Attributes:
        path: The folder holding ``leftImg8bit/`` and ``gtFine/`` (local, or ``s3://bucket/prefix``).
        split: The folder of images the search split halves (``train``: train_fine).
        downscale: Divide both sides by this first (2: the paper's 512x1024 from 1024x2048).
        crop_size: Random square crops of this side (321 in the paper); 0: whole images.
        flip: Random horizontal flips.
        split_seed: Seeds the shuffle that makes the halves random (trainA, trainB).
    """

    path: Annotated[str, Rule(missing="the folder holding leftImg8bit/ and gtFine/")] = ""
    split: Annotated[
        str, Rule(one_of=("train", "val"), says="must be train or val (the gtFine folders)")
    ] = "train"
    downscale: Annotated[int, Rule(ge=1)] = 2
    crop_size: Annotated[int, Rule(ge=0, says="must be >= 0 (0: whole images)")] = 321
    flip: bool = True
    split_seed: int = 0


def find_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """Every (image, labelIds) pair of ``split``, sorted by city and name.

    Raises:
        DataError: A folder of the layout is missing, holds no images, or an image has no labels
            (the message names the path).
    """
    images = root / "leftImg8bit" / split
    labels = root / "gtFine" / split
    for folder in (images, labels):
        if not folder.is_dir():
            raise DataError(
                f"Cityscapes folder {str(folder)!r} is missing (expected leftImg8bit/{split}/<city>/ "
                f"and gtFine/{split}/<city>/ under data.path)"
            )
    pairs = []
    for image in sorted(images.glob("*/*_leftImg8bit.png")):
        stem = image.name[: -len("_leftImg8bit.png")]
        label = labels / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if not label.is_file():
            raise DataError(f"Cityscapes labels {str(label)!r} are missing for image {str(image)!r}")
        pairs.append((image, label))
    if not pairs:
        raise DataError(f"Cityscapes folder {str(images)!r} holds no <city>/*_leftImg8bit.png images")
    return pairs


class CityscapesImages(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Image and train-id label pairs: ``(3, H, W)`` floats in [-1, 1] (DeepLab's preprocessing)
    and ``(H, W)`` int64 labels with -100 where ignored.

    Args:
        pairs: (image, labelIds) files.
        downscale: Divide both sides by this (bilinear for images, nearest for labels).
        crop_size: Random square crops (padded with ignored pixels when the image is smaller);
            0: whole images.
        flip: Random horizontal flips.
    """

    def __init__(
        self, pairs: list[tuple[Path, Path]], *, downscale: int, crop_size: int, flip: bool
    ) -> None:
        self.pairs = pairs
        self.downscale = downscale
        self.crop_size = crop_size
        self.flip = flip
        self.lookup = label_lookup()

    def __len__(self) -> int:
        return len(self.pairs)

    def _read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image, UnidentifiedImageError

        image_path, label_path = self.pairs[i]
        try:
            with Image.open(image_path) as im:
                image = im.convert("RGB")
            with Image.open(label_path) as lab:
                label = lab.copy()
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read Cityscapes pair {str(image_path)!r}: {exc}") from None
        if label.mode not in ("L", "P", "I", "I;16"):
            raise DataError(f"{str(label_path)!r} is not a single-channel labelIds image (mode {label.mode})")
        if image.size != label.size:
            raise DataError(
                f"{str(image_path)!r} and its labels differ in size: {image.size} vs {label.size}"
            )
        if self.downscale > 1:
            size = (max(1, image.width // self.downscale), max(1, image.height // self.downscale))
            image = image.resize(size, Image.BILINEAR)
            label = label.resize(size, Image.NEAREST)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1)  # (3, H, W)
        ids = np.asarray(label, dtype=np.int64).clip(0, 255)
        y = torch.from_numpy(self.lookup[ids])  # (H, W)
        return x * (2.0 / 255.0) - 1.0, y

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self._read(i)
        c = self.crop_size
        if c:
            _, h, w = x.shape
            if h < c or w < c:  # pad: image with 0 (the mean after preprocessing), labels ignored
                pad = (0, max(0, c - w), 0, max(0, c - h))
                x = torch.nn.functional.pad(x, pad)
                y = torch.nn.functional.pad(y, pad, value=IGNORE_INDEX)
                h, w = y.shape
            top = int(torch.randint(0, h - c + 1, ()))
            left = int(torch.randint(0, w - c + 1, ()))
            x, y = x[:, top : top + c, left : left + c], y[top : top + c, left : left + c]
        if self.flip and torch.rand(()) < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        return x.contiguous(), y.contiguous()


@DATASETS.register("cityscapes", config=CityscapesConfig, traits={"tokens": False, "dense": True})
class Cityscapes:
    """Cityscapes fine annotations, 19 classes."""

    info = DatasetInfo(
        name="cityscapes", in_channels=3, num_classes=19, image_size=1024, task="segmentation"
    )

    def __init__(self, config: CityscapesConfig) -> None:
        self.config = config

    def train_set(self) -> CityscapesImages:
        """The ``split`` images in a seeded random order, so the search split's first and second
        halves are random halves (the paper's trainA and trainB)."""
        pairs = find_pairs(Path(self.config.path).expanduser(), self.config.split)
        random.Random(self.config.split_seed).shuffle(pairs)
        cfg = self.config
        return CityscapesImages(pairs, downscale=cfg.downscale, crop_size=cfg.crop_size, flip=cfg.flip)

    def test_set(self) -> CityscapesImages:
        """The ``val`` images (the test labels are withheld), whole after ``downscale``, in order,
        never flipped: where `raynas train` tests a network."""
        pairs = find_pairs(Path(self.config.path).expanduser(), "val")
        return CityscapesImages(pairs, downscale=self.config.downscale, crop_size=0, flip=False)
