"""Datasets and the DARTS search split, on tiny CIFAR-10/100 fixtures written in the real on-disk
format of the python version (https://www.cs.toronto.edu/~kriz/cifar.html): pickled dicts with
bytes keys, ``data`` an (N, 3072) uint8 array, channel-major (1024 red, 1024 green, 1024 blue
values, each plane row-major)."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raynas.data import DATASETS, dataset_info, search_loaders
from raynas.data.base import official_test_set
from raynas.data.cifar import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, CifarConfig
from raynas.data.digits import DigitsConfig
from raynas.data.transforms import cut_out
from raynas.errors import ConfigError, DataError
from raynas.types import DatasetInfo
from tests.fixtures import (
    MARK,
    PER_BATCH,
    cifar10_label,
    cifar100_label,
    image_bytes,
    write_batch,
    write_cifar10,
    write_cifar100,
    write_svhn,
)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> Path:
    return write_cifar10(tmp_path, test=False)


@pytest.fixture
def cifar100_root(tmp_path: Path) -> Path:
    return write_cifar100(tmp_path, test=False)


def make(name: str, **config: Any) -> Any:
    return DATASETS.create(name, DATASETS.entry(name).config(**config))


def unnormalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(B, 3, H, W) normalised floats back to 0..255 pixel values."""
    m, s = torch.tensor(mean).view(1, -1, 1, 1), torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round()


def collect(loader: Any, mean: tuple[float, ...], std: tuple[float, ...]) -> list[tuple[int, int]]:
    """(image index, label) of every image the loader yields, checking each image's pixels."""
    seen = []
    for x, y in loader:
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape == (len(y), 3, 32, 32)
        pixels = unnormalise(x, mean, std)
        for img, label in zip(pixels, y.tolist(), strict=True):
            i = (int(img[0, 0, 0]) - 5) // 10
            red = torch.full((32, 32), 10.0 * i + 5)
            red[MARK] = 255
            assert torch.equal(img[0], red)  # channel-major planes, each row-major
            assert torch.equal(img[1], torch.zeros(32, 32))
            assert torch.equal(img[2], torch.full((32, 32), 255.0))
            seen.append((i, label))
    return seen


def test_cifar10_search_split_reads_the_python_batches(cifar10_root: Path) -> None:
    data = make("cifar10", path=str(cifar10_root), batch_size=4, train_portion=0.6, augment=False)
    assert data.info == DatasetInfo("cifar10", 3, 10, 32)

    train, valid = search_loaders(data, seed=0)

    # DARTS's split: the first 60% of the training set trains weights, the rest alpha.
    assert len(train.dataset) == 12 and len(valid.dataset) == 8
    assert len(train) == 3 and len(valid) == 2
    seen_train = collect(train, CIFAR10_MEAN, CIFAR10_STD)
    seen_valid = collect(valid, CIFAR10_MEAN, CIFAR10_STD)
    assert sorted(i for i, _ in seen_train) == list(range(12))  # batches 1..3 in file order
    assert sorted(i for i, _ in seen_valid) == list(range(12, 20))
    assert all(label == cifar10_label(i) for i, label in seen_train + seen_valid)


def test_cifar100_uses_the_fine_labels(cifar100_root: Path) -> None:
    data = make("cifar100", path=str(cifar100_root), batch_size=5, augment=False)
    assert data.info == DatasetInfo("cifar100", 3, 100, 32)

    train, valid = search_loaders(data, seed=0)

    assert len(train.dataset) == 5 and len(valid.dataset) == 5  # default train_portion 0.5
    seen = collect(train, CIFAR100_MEAN, CIFAR100_STD) + collect(valid, CIFAR100_MEAN, CIFAR100_STD)
    assert sorted(seen) == [(i, cifar100_label(i)) for i in range(10)]


def test_cifar_path_may_be_the_batch_folder_itself(cifar10_root: Path) -> None:
    data = make("cifar10", path=str(cifar10_root / "cifar-10-batches-py"), augment=False)
    assert len(data.train_set()) == 5 * PER_BATCH


def test_the_test_split_is_the_test_batch_never_augmented(cifar10_root: Path, cifar100_root: Path) -> None:
    index = range(20, 23)  # images the training batches do not hold
    write_batch(cifar10_root / "cifar-10-batches-py" / "test_batch", {
        b"batch_label": b"testing batch 1 of 1", b"labels": [cifar10_label(i) for i in index],
        b"data": np.stack([image_bytes(i) for i in index]),
        b"filenames": [f"img_{i}.png".encode() for i in index],
    })
    write_batch(cifar100_root / "cifar-100-python" / "test", {
        b"fine_labels": [cifar100_label(i) for i in index], b"coarse_labels": [0, 0, 0],
        b"data": np.stack([image_bytes(i) for i in index]),
    })
    for name, root, mean, std, label in (
        ("cifar10", cifar10_root, CIFAR10_MEAN, CIFAR10_STD, cifar10_label),
        ("cifar100", cifar100_root, CIFAR100_MEAN, CIFAR100_STD, cifar100_label),
    ):
        data = make(name, path=str(root))  # augment on: it applies to training only
        loader = torch.utils.data.DataLoader(official_test_set(data), batch_size=2)
        assert collect(loader, mean, std) == [(i, label(i)) for i in index]


def test_an_image_folder_tests_on_val_centre_cropped(tmp_path: Path) -> None:
    from PIL import Image

    for split, classes in (("train", ("a", "b")), ("val", ("a", "b"))):
        for c in classes:
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (40, 30), (200, 10, 10) if c == "a" else (10, 10, 200)).save(
                tmp_path / split / c / "0.png")
    data = make("imagenet", path=str(tmp_path), image_size=16)
    jittered = make("imagenet", path=str(tmp_path), image_size=16, color_jitter=True).train_set()
    steps = [type(t).__name__ for t in jittered.transform.transforms]
    assert steps == ["RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "ToTensor", "Normalize"]
    assert "ColorJitter" not in [type(t).__name__ for t in data.train_set().transform.transforms]
    x, y = official_test_set(data)[1]
    assert x.shape == (3, 16, 16) and y == 1 and float(x[2].mean()) > float(x[0].mean())  # blue "b"
    (tmp_path / "val" / "a" / "0.png").unlink()
    (tmp_path / "val" / "b" / "0.png").unlink()
    with pytest.raises(DataError, match="val"):
        official_test_set(data)
    for c in ("a", "b"):
        (tmp_path / "val" / c).rmdir()
    (tmp_path / "val").rmdir()
    with pytest.raises(DataError, match="has no val/ folder"):
        official_test_set(data)


def test_a_missing_test_batch_is_named(cifar10_root: Path) -> None:
    with pytest.raises(DataError, match="test_batch' is missing"):
        official_test_set(make("cifar10", path=str(cifar10_root)))


def test_cifar_augmentation_keeps_the_shape(cifar10_root: Path) -> None:
    torch.manual_seed(0)
    data = make("cifar10", path=str(cifar10_root), batch_size=8)
    x, y = next(iter(search_loaders(data, seed=0)[0]))
    assert x.shape == (8, 3, 32, 32) and y.shape == (8,)
    blue = unnormalise(x, CIFAR10_MEAN, CIFAR10_STD)[:, 2]
    # Random crop of the zero-padded image and flip: blue is 255 except in the padding.
    assert set(blue.unique().tolist()) <= {0.0, 255.0}


def darts_cutout(img: torch.Tensor, y: int, x: int, length: int) -> torch.Tensor:
    """quark0/darts cnn/utils.py's ``Cutout.__call__``, its centre given instead of drawn."""
    h, w = img.size(1), img.size(2)
    mask = np.ones((h, w), np.float32)
    y1, y2 = np.clip(y - length // 2, 0, h), np.clip(y + length // 2, 0, h)
    x1, x2 = np.clip(x - length // 2, 0, w), np.clip(x + length // 2, 0, w)
    mask[y1:y2, x1:x2] = 0.0
    return img * torch.from_numpy(mask).expand_as(img)


@pytest.mark.parametrize("length", [16, 5])
def test_cutout_zeroes_the_square_darts_cutout_zeroes(length: int) -> None:
    img = torch.randn(3, 32, 32) + 3  # no zero of its own
    for y, x in ((0, 0), (16, 16), (31, 5), (3, 30), (31, 31)):  # centres at and away from the border
        assert torch.equal(cut_out(img, y, x, length), darts_cutout(img, y, x, length)), (y, x)


@pytest.mark.parametrize("name", ["cifar10", "svhn"])
def test_cutout_cuts_a_square_of_the_training_images_only(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = str(write_cifar10(tmp_path) if name == "cifar10" else write_svhn(tmp_path))
    data = make(name, path=path, cutout=16)
    images = range(len(data.train_set()))
    cut = torch.stack([data.train_set()[i][0] for i in images])
    plain = torch.stack([make(name, path=path).train_set()[i][0] for i in images])
    zeros = (cut == 0).all(1)  # (N, H, W): zero in every channel
    assert (plain != 0).all()  # the images hold no normalised zero of their own
    for image in zeros:  # one square, at most 16 x 16, clipped at the border
        rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
        assert 0 < len(rows) <= 16 and 0 < len(cols) <= 16
        assert image.sum() == len(rows) * len(cols)
        assert image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
    assert (official_test_set(data)[0][0] != 0).all()  # the test split is never cut
    with pytest.raises(ConfigError, match="cutout"):
        make(name, path=path, cutout=-1)


def test_the_validation_half_may_be_plain_while_the_training_half_is_augmented(cifar10_root: Path) -> None:
    """``augment_valid: false`` (Auto-Keras validates on plain images): every validation pixel as
    the batches hold it, while the training half is still cropped, flipped and cut out; by default
    (DARTS's search) the validation half is cut out too."""
    torch.manual_seed(0)
    settings = {"path": str(cifar10_root), "batch_size": 4, "train_portion": 0.6, "cutout": 16}
    train, valid = search_loaders(make("cifar10", **settings, augment_valid=False), seed=0)
    assert sorted(i for i, _ in collect(valid, CIFAR10_MEAN, CIFAR10_STD)) == list(range(12, 20))
    assert all((x == 0).all(1).any((1, 2)).all() for x, _ in train)  # a square cut from each image
    _, augmented = search_loaders(make("cifar10", **settings), seed=0)
    assert all((x == 0).all(1).any((1, 2)).all() for x, _ in augmented)


def test_search_loaders_shuffle_reproducibly(cifar10_root: Path) -> None:
    data = make("cifar10", path=str(cifar10_root), batch_size=4, augment=False)

    def labels(seed: int) -> list[list[int]]:
        return [y.tolist() for _, y in search_loaders(data, seed=seed)[0]]

    assert labels(3) == labels(3)
    assert any(labels(s) != labels(3) for s in (4, 5, 6))


def test_limit_uses_the_first_images_only(cifar10_root: Path) -> None:
    data = make("cifar10", path=str(cifar10_root), batch_size=2, limit=8, augment=False)
    train, valid = search_loaders(data, seed=0)
    assert list(train.dataset.indices) == [0, 1, 2, 3]
    assert list(valid.dataset.indices) == [4, 5, 6, 7]


def test_missing_path_names_the_expected_files(tmp_path: Path) -> None:
    data = make("cifar10", path=str(tmp_path / "nowhere"))
    expected = r"holds no cifar10 batches: expected cifar-10-batches-py/data_batch_1"
    with pytest.raises(DataError, match=expected):
        search_loaders(data, seed=0)
    data = make("cifar100", path=str(tmp_path))
    with pytest.raises(DataError, match=r"cifar-100-python/train \(the python version of the dataset\)$"):
        data.train_set()
    # The archive as downloaded, not extracted: the line says so.
    (tmp_path / "cifar-100-python.tar.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=re.escape(
            f"dataset); '{tmp_path / 'cifar-100-python.tar.gz'}' is there: extract it (tar xzf)")):
        data.train_set()


def test_missing_batch_file_is_named(cifar10_root: Path) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_3").unlink()
    data = make("cifar10", path=str(cifar10_root))
    with pytest.raises(DataError, match=r"data_batch_3' is missing"):
        search_loaders(data, seed=0)


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"this is not a pickle", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(np.random.default_rng(0).bytes(4096), id="random-bytes"),
        pytest.param("truncated", id="truncated"),
        # A text field of 5,000 bytes that are not UTF-8: the message says so without quoting them.
        pytest.param(b"\x80\x02X\x88\x13\x00\x00" + b"\xff" * 5000 + b".", id="not-utf8"),
        pytest.param(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), id="no-labels"),
        pytest.param(pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}), id="str-keys"),
        pytest.param(pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), id="width"),
        pytest.param(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), id="count"),
    ],
)
def test_corrupt_batch_file_is_named(cifar10_root: Path, content: bytes | str) -> None:
    path = cifar10_root / "cifar-10-batches-py" / "data_batch_2"
    if content == "truncated":
        content = path.read_bytes()[:1000]
    path.write_bytes(content)  # type: ignore[arg-type]
    data = make("cifar10", path=str(cifar10_root))
    with pytest.raises(DataError, match=r"data_batch_2'") as error:
        search_loaders(data, seed=0)
    assert len(str(error.value)) < 300, str(error.value)[:300]


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(pickle.dumps([1, 2, 3]), id="not-a-dict"),
        pytest.param(pickle.dumps({b"data": None, b"labels": [0]}), id="data-none"),
    ],
)
def test_batch_file_of_the_wrong_structure_is_a_data_error(cifar10_root: Path, content: bytes) -> None:
    (cifar10_root / "cifar-10-batches-py" / "data_batch_2").write_bytes(content)
    data = make("cifar10", path=str(cifar10_root))
    with pytest.raises(DataError, match=r"data_batch_2'"):
        search_loaders(data, seed=0)


def test_cifar_config_needs_a_path() -> None:
    with pytest.raises(ConfigError, match=r"'data\.path' is missing"):
        CifarConfig()
    with pytest.raises(ConfigError, match=r"train_portion must be in \(0, 1\]"):
        CifarConfig(path="/x", train_portion=1.5)


def test_too_few_images_to_split_is_a_config_error(cifar10_root: Path) -> None:
    data = make("cifar10", path=str(cifar10_root), limit=1)
    with pytest.raises(ConfigError, match="1 images are too few to split"):
        search_loaders(data, seed=0)


def test_digits_info_and_loader_shapes() -> None:
    assert DATASETS.get("digits").info == DatasetInfo("digits", 1, 10, 8)
    assert dataset_info("digits") == DatasetInfo("digits", 1, 10, 8)
    data = make("digits", batch_size=8, limit=64)
    assert isinstance(data.config, DigitsConfig)

    train, valid = search_loaders(data, seed=0)

    assert len(train.dataset) == 32 and len(valid.dataset) == 32
    x, y = next(iter(train))
    assert x.shape == (8, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (8,) and int(y.min()) >= 0 and int(y.max()) <= 9
    full = data.train_set()
    assert len(full) == 1797  # scikit-learn's digits
    images = torch.stack([full[i][0] for i in range(200)])
    assert abs(float(images.mean())) < 0.3  # normalised


def test_digits_are_scikit_learn_s_load_digits_read_without_importing_scikit_learn() -> None:
    """The same images and labels as ``sklearn.datasets.load_digits``, and loading them in a fresh
    process leaves scikit-learn unimported (its import was 0.8 s of every Ray actor's start)."""
    from sklearn.datasets import load_digits

    from raynas.data.digits import load_digits_arrays

    images, labels = load_digits_arrays()
    reference = load_digits()
    assert images.shape == (1797, 8, 8) and np.array_equal(images, reference.images)
    assert np.array_equal(labels, reference.target)
    code = ("import sys; from raynas.data.digits import Digits; n = len(Digits().train_set()); "
            "print(n, any(m.split('.')[0] == 'sklearn' for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1797", "False"]


def test_dataset_info_of_an_unknown_name_lists_the_datasets() -> None:
    with pytest.raises(ConfigError, match="unknown dataset 'mnist'") as info:
        dataset_info("mnist")
    for name in ("cifar10", "cifar100", "digits", "imagenet"):
        assert name in str(info.value)


@pytest.mark.parametrize("num_workers", [0, 1], ids=["in-process", "loader-worker"])
@pytest.mark.parametrize("damage", ["truncated", "not-an-image"])
def test_an_unreadable_image_in_an_image_folder_is_one_line_naming_it(
    tmp_path: Path, num_workers: int, damage: str
) -> None:
    """A training image cut short or not an image at all (ImageNet's folders are copied by hand)
    fails the batch that reads it with a DataError naming the file in one line, read in the
    training process or in a DataLoader worker process (torch re-raises a worker's error with its
    whole traceback for message)."""
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "train" / c).mkdir(parents=True)
        for n in range(2):
            Image.new("RGB", (8, 8), (n, 0, 0)).save(tmp_path / "train" / c / f"{n}.png")
    bad = tmp_path / "train" / "b" / "1.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:1000] if damage == "truncated" else b"not an image")
    data = make("imagenet", path=str(tmp_path), image_size=8, batch_size=2, num_workers=num_workers)
    train, valid = search_loaders(data, seed=0)
    with pytest.raises(DataError) as error:
        for loader in (train, valid):
            for _ in loader:
                pass
    message = str(error.value)
    assert message.startswith(f"image {str(bad)!r} cannot be read ("), message
    assert message.endswith("): replace or remove it") and "\n" not in message, message


def test_an_image_folders_search_split_and_limit_keep_every_class_in_its_share(tmp_path: Path) -> None:
    """ImageFolder lists a folder's images class by class: cut as stored, the weights' half would
    hold the first classes and alpha's the last, and a limit only the first class. The split cuts
    each class in its share instead (PC-DARTS's per-class ImageNet subsets)."""
    from PIL import Image

    for c, count in (("a", 4), ("b", 8), ("c", 4)):
        (tmp_path / "train" / c).mkdir(parents=True)
        for n in range(count):
            Image.new("RGB", (8, 8), (n, 0, 0)).save(tmp_path / "train" / c / f"{n}.png")

    def classes(loader: Any) -> list[int]:
        full = loader.dataset.dataset
        return sorted(full.targets[i] for i in loader.dataset.indices)

    data = make("imagenet", path=str(tmp_path), image_size=8, batch_size=2, train_portion=0.75)
    train, valid = search_loaders(data, seed=0)
    assert classes(train) == [0] * 3 + [1] * 6 + [2] * 3  # three quarters of each class
    assert classes(valid) == [0] + [1] * 2 + [2]
    # Within a class, its first images train the weights (as DARTS's first part of the set).
    full = train.dataset.dataset
    assert sorted(Path(full.samples[i][0]).name for i in train.dataset.indices if full.targets[i] == 0) == [
        "0.png", "1.png", "2.png"]
    limited = make("imagenet", path=str(tmp_path), image_size=8, batch_size=2, train_portion=0.5, limit=8)
    train, valid = search_loaders(limited, seed=0)
    assert classes(train) == [0, 1, 1, 2] and classes(valid) == [0, 1, 1, 2]
