"""ImageNet (or any ImageNet-style tree) read with torchvision's ``ImageFolder``.

``path`` holds ``train/<class>/<image>.JPEG`` and, for testing a retrained network,
``val/<class>/<image>.JPEG``; the search split cuts the training folder.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.errors import DataError, cause
from raynas.types import DatasetInfo

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ImageFolderConfig(LoaderConfig):
    """``path``: the folder holding ``train/`` (and ``val/``); ``image_size``: the crop;
    ``color_jitter``: DARTS's ``ColorJitter(0.4, 0.4, 0.4, 0.2)`` on training images
    (train_imagenet.py); ``rand_augment``: RandAugment's magnitude m out of 10 on training
    images, two operations each (torchvision's ``RandAugment(2, m, num_magnitude_bins=11)``;
    ConvNeXt's ``--aa rand-m9-mstd0.5-inc1``: 9; 0: none); ``random_erasing``: the chance that a
    box of a normalised training image is replaced by normal noise, pixel by pixel
    (torchvision's ``RandomErasing(p, value="random")``; ConvNeXt's ``--reprob 0.25 --remode
    pixel``; 0: none); ``interpolation``: of the random resized crop and the test images' resize
    (ConvNeXt's ``--train_interpolation bicubic``, and bicubic for testing); ``crop_pct``: the
    test images are resized to ``image_size / crop_pct`` and their centre ``image_size`` cut
    (0.875: 256 then 224, as DARTS and ConvNeXt; NEXcepTion's ``--crop-pct 0.95``)."""

    path: Annotated[str, Rule(missing="the folder holding train/")] = ""
    image_size: int = 224
    color_jitter: bool = False
    rand_augment: Annotated[int, Rule(ge=0, le=10)] = 0
    random_erasing: Annotated[float, Rule(ge=0, le=1)] = 0.0
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    crop_pct: Annotated[float, Rule(gt=0, le=1)] = 0.875


def read_image(path: str) -> Any:
    """An image of the folder as RGB, read as ``ImageFolder``'s own loader reads it; a file that
    is not a whole image (truncated, not an image at all) is a :class:`DataError` naming it,
    raised when a batch first reads it."""
    from PIL import Image
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"image {path!r} cannot be read ({cause(exc)}): replace or remove it") from None


@DATASETS.register("imagenet", config=ImageFolderConfig, traits={"tokens": False})
class ImageNet:
    """ImageNet with the usual random-resized-crop and flip augmentation."""

    info = DatasetInfo(name="imagenet", in_channels=3, num_classes=1000, image_size=224)

    def __init__(self, config: ImageFolderConfig) -> None:
        self.config = config

    def train_set(self):  # type: ignore[no-untyped-def]
        from torchvision import transforms

        c = self.config
        jitter = [transforms.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
        augment = [transforms.RandAugment(2, c.rand_augment, num_magnitude_bins=11,
                                          interpolation=self._interpolation())]
        erasing = [transforms.RandomErasing(c.random_erasing, value="random")]
        return self._folder("train", [
            transforms.RandomResizedCrop(c.image_size, interpolation=self._interpolation()),
            transforms.RandomHorizontalFlip(),
            *(jitter if c.color_jitter else []),
            *(augment if c.rand_augment else []),
        ], after=erasing if c.random_erasing else [])

    def _interpolation(self) -> Any:
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.config.interpolation)

    def split_order(self, full: Any) -> list[int]:
        """The training images in the order the search split cuts them. ``ImageFolder`` lists
        them class by class, so a cut of its list would train the weights on the first classes and
        alpha on the last (and ``data.limit`` would keep the first classes alone); here the k-th of
        a class's n images sits at (k + 1/2) / n, so every prefix and every cut holds each class in
        its share (PC-DARTS samples its ImageNet subsets per class, `train_search_imagenet.py`)."""
        targets = [int(t) for t in full.targets]
        counts = Counter(targets)
        seen: Counter[int] = Counter()
        keys = []
        for i, t in enumerate(targets):
            keys.append(((seen[t] + 0.5) / counts[t], t, i))
            seen[t] += 1
        return [i for _, _, i in sorted(keys)]

    def test_set(self):  # type: ignore[no-untyped-def]
        """``val/``, resized to ``image_size / crop_pct`` and centre-cropped (256 then 224 at the
        defaults, as DARTS's ``train_imagenet.py``)."""
        from torchvision import transforms

        size = self.config.image_size
        return self._folder("val", [
            transforms.Resize(round(size / self.config.crop_pct), interpolation=self._interpolation()),
            transforms.CenterCrop(size),
        ])

    def _folder(self, split: str, crop: list[Any], after: Sequence[Any] = ()):  # type: ignore[no-untyped-def]
        from torchvision import datasets, transforms

        root = Path(self.config.path).expanduser() / split
        if not root.is_dir():
            raise DataError(f"data.path {self.config.path!r} has no {split}/ folder of class folders")
        transform = transforms.Compose([
            *crop, transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD), *after,
        ])
        try:
            return datasets.ImageFolder(str(root), transform=transform, loader=read_image)
        except (FileNotFoundError, RuntimeError) as exc:
            raise DataError(f"{str(root)!r}: {exc}") from None
