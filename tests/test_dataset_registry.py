"""Tests every registered dataset gets automatically, the day it registers, on a small fixture
written in its real on-disk format (``tests/fixtures.py``): it builds from its config, its
``DatasetInfo`` (by name and as built) agrees with the batches its loaders give, the search split
cuts two disjoint halves, the official test split reads where the dataset has one, and a missing
folder is an error that names it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader

from raynas.data import DATASETS, dataset_info, search_loaders
from raynas.data.base import official_test_set
from raynas.errors import ConfigError, DataError
from raynas.types import DatasetInfo
from tests.fixtures import FIXTURES

NAMES = DATASETS.names()

# Small loader settings, applied to the config fields a dataset has; a dataset whose fixture needs
# other settings lists them in SMALL_CONFIG_OF.
SMALL_CONFIG = {"batch_size": 2, "limit": 8, "num_workers": 0}
SMALL_CONFIG_OF: dict[str, dict[str, Any]] = {
    "ptb": {"bptt": 2},  # the fixture's 15 training tokens make 7 windows, its 3 test tokens one
    "wikitext2": {"bptt": 2},  # 15 training tokens: 7 windows; 5 test tokens: 2
    "cityscapes": {"crop_size": 16},
}
# DatasetInfo fields a dataset takes from its files or config rather than from its name alone
# (``dataset_info(name)`` reads no data): PTB's vocabulary is its training file's words and its
# sequence length is ``bptt``.
FROM_THE_DATA: dict[str, set[str]] = {
    "ptb": {"num_classes", "image_size"}, "wikitext2": {"num_classes", "image_size"},
}
IGNORED = -100  # segmentation labels that count for no class (Cityscapes' void classes)


def has_path(name: str) -> bool:
    config = DATASETS.entry(name).config
    return config is not None and "path" in {f.name for f in dataclasses.fields(config)}


def fixture_path(name: str, tmp_path: Path) -> Path:
    """The dataset's fixture, written under ``tmp_path``."""
    if name not in FIXTURES:
        pytest.fail(
            f"dataset {name!r} has no fixture: add a writer of its on-disk format to FIXTURES in "
            "tests/fixtures.py"
        )
    return FIXTURES[name](tmp_path / "data")


def make(name: str, tmp_path: Path) -> Any:
    """The dataset ``name`` on its fixture, with small loader settings."""
    path = fixture_path(name, tmp_path)
    entry = DATASETS.entry(name)
    assert entry.config is not None, f"dataset {name!r} registers no config dataclass"
    fields = {f.name for f in dataclasses.fields(entry.config)}
    settings = {k: v for k, v in SMALL_CONFIG.items() if k in fields} | SMALL_CONFIG_OF.get(name, {})
    if "path" in fields:
        settings["path"] = str(path)
    return DATASETS.create(name, entry.config(**settings))


def assert_classes(labels: torch.Tensor, info: DatasetInfo) -> None:
    """Every label is one of the dataset's classes (a word of its vocabulary)."""
    assert int(labels.min()) >= 0 and int(labels.max()) < info.num_classes, (labels.min(), labels.max())


def check_batch(x: torch.Tensor, y: torch.Tensor, info: DatasetInfo) -> None:
    """Shapes, dtypes and label ranges of one batch, as ``info`` describes the data."""
    b = len(y)
    assert b >= 1 and x.shape[0] == b
    assert y.dtype == torch.int64
    if info.task == "segmentation":  # images and a label per pixel
        # Any size: the networks are fully convolutional, trained on crops (``info.image_size``
        # is the full images' height).
        assert x.dtype == torch.float32 and x.dim() == 4 and x.shape[1] == info.in_channels
        assert y.shape == (b, *x.shape[2:])
        labelled = y[y != IGNORED]
        assert labelled.numel() > 0, "every pixel of the batch is ignored"
        assert_classes(labelled, info)
    elif x.is_floating_point():  # images and a class each
        assert x.dtype == torch.float32
        assert x.shape == (b, info.in_channels, info.image_size, info.image_size)
        assert y.shape == (b,)
        assert_classes(y, info)
    else:  # token windows: the next token of every position
        assert info.in_channels == 1 and x.dtype == torch.int64
        # ``image_size`` tokens, or (PTB's search streams) DARTS's variable window lengths
        assert x.shape == y.shape and x.dim() == 2 and x.shape[0] == b
        assert_classes(x, info)
        assert_classes(y, info)


def test_every_registered_dataset_has_a_fixture_writer() -> None:
    assert {"cifar10", "cifar100", "ImageNet16-120", "imagenet", "ptb", "cityscapes", "digits"} <= set(NAMES)
    missing = sorted(set(NAMES) - set(FIXTURES))
    assert not missing, f"add writers of {missing} to FIXTURES in tests/fixtures.py"


@pytest.mark.parametrize("name", NAMES)
def test_dataset_builds_from_its_config_on_its_fixture(name: str, tmp_path: Path) -> None:
    entry = DATASETS.entry(name)
    assert entry.config is not None and dataclasses.is_dataclass(entry.config)
    data = make(name, tmp_path)
    assert isinstance(data.config, entry.config)
    assert isinstance(data.info, DatasetInfo) and data.info.name == name
    assert len(data.train_set()) > 0


@pytest.mark.parametrize("name", NAMES)
def test_dataset_info_agrees_with_the_loaders(name: str, tmp_path: Path) -> None:
    data = make(name, tmp_path)
    by_name = dataset_info(name)
    for field in dataclasses.fields(DatasetInfo):
        if field.name not in FROM_THE_DATA.get(name, set()):
            assert getattr(data.info, field.name) == getattr(by_name, field.name), field.name
    train, valid = search_loaders(data, seed=0)
    batches = [*train, *valid]
    assert batches
    for x, y in batches:
        check_batch(x, y, data.info)


@pytest.mark.parametrize("name", [n for n in NAMES if not hasattr(DATASETS.get(n), "search_loaders")])
def test_search_loaders_cut_two_disjoint_halves(name: str, tmp_path: Path) -> None:
    data = make(name, tmp_path)
    cfg = data.config
    train, valid = search_loaders(data, seed=0)
    a, b = train.dataset, valid.dataset
    assert a.dataset is b.dataset  # two halves of the one training set
    assert a.indices and b.indices and not set(a.indices) & set(b.indices)
    n = min(len(a.dataset), cfg.limit or len(a.dataset))
    assert sorted([*a.indices, *b.indices]) == list(range(n))
    assert len(a.indices) == int(cfg.train_portion * n)
    for loader, half in ((train, a.indices), (valid, b.indices)):
        sizes = [len(y) for _, y in loader]
        assert sizes and set(sizes) == {min(cfg.batch_size, len(half))}


@pytest.mark.parametrize("name", [n for n in NAMES if hasattr(DATASETS.get(n), "test_set")])
def test_the_official_test_split_reads_unaugmented(name: str, tmp_path: Path) -> None:
    data = make(name, tmp_path)
    test = official_test_set(data)
    assert test is not None and len(test) > 0

    def batches(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        torch.manual_seed(seed)  # an augmentation would draw other crops and flips
        return list(DataLoader(test, batch_size=2))

    first = batches(0)
    for x, y in first:
        check_batch(x, y, data.info)
    again = batches(1)
    assert len(again) == len(first)
    for (x, y), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x, x2) and torch.equal(y, y2)


@pytest.mark.parametrize("name", [n for n in NAMES if not hasattr(DATASETS.get(n), "test_set")])
def test_a_dataset_without_a_test_split_says_so(name: str, tmp_path: Path) -> None:
    assert official_test_set(make(name, tmp_path)) is None


@pytest.mark.parametrize("name", [n for n in NAMES if has_path(n)])
def test_a_missing_path_is_an_error_that_names_it(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    entry = DATASETS.entry(name)
    assert entry.config is not None
    fields = {f.name for f in dataclasses.fields(entry.config)}
    settings = {k: v for k, v in SMALL_CONFIG.items() if k in fields} | SMALL_CONFIG_OF.get(name, {})
    with pytest.raises((DataError, ConfigError)) as info:  # when it is built, or first read
        data = DATASETS.create(name, entry.config(path=str(missing), **settings))
        search_loaders(data, seed=0)
    assert str(missing) in str(info.value)
