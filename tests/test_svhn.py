"""SVHN read from the official cropped-digits ``.mat`` files (a fixture in that format)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from raynas.data import DATASETS
from raynas.data.svhn import SVHN_MEAN, SVHN_STD, SvhnConfig
from raynas.errors import DataError
from tests.fixtures import MARK, SVHN_EXTRA, SVHN_TEST, SVHN_TRAIN, svhn_label, write_svhn


def raw(dataset: object, i: int) -> tuple[torch.Tensor, int]:
    """Image ``i`` of a split unnormalised (0..255), and its label."""
    x, y = dataset[i]  # type: ignore[index]
    mean, std = torch.tensor(SVHN_MEAN).view(3, 1, 1), torch.tensor(SVHN_STD).view(3, 1, 1)
    return (x * std + mean) * 255, y


def test_images_are_channel_first_and_label_10_is_the_digit_0(tmp_path: Path) -> None:
    data = DATASETS.create("svhn", SvhnConfig(path=str(write_svhn(tmp_path)), augment=False))
    train = data.train_set()
    assert len(train) == len(SVHN_TRAIN) and len(data.test_set()) == len(SVHN_TEST)
    for k, i in enumerate(SVHN_TRAIN):
        x, y = raw(train, k)
        assert x.shape == (3, 32, 32)
        assert y == svhn_label(i) % 10 and (i != 0 or y == 0)  # image 0's file label is 10
        torch.testing.assert_close(x[:, 0, 0], torch.tensor([10.0 * i + 5, 0.0, 255.0]), atol=1e-3, rtol=0)
        assert abs(float(x[0][MARK]) - 255) < 1e-3  # row 2, column 5: not swapped
        assert abs(float(x[0][MARK[1], MARK[0]]) - (10 * i + 5)) < 1e-3
    x, y = raw(data.test_set(), 0)
    assert y == svhn_label(SVHN_TEST[0]) % 10 and abs(float(x[0, 0, 0]) - (10 * SVHN_TEST[0] + 5)) < 1e-3


def test_extra_adds_the_extra_images(tmp_path: Path) -> None:
    path = str(write_svhn(tmp_path))
    data = DATASETS.create("svhn", SvhnConfig(path=path, extra=True, augment=False))
    assert len(data.train_set()) == len(SVHN_TRAIN) + len(SVHN_EXTRA)


def test_a_missing_or_foreign_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"train_32x32.mat' is missing"):
        DATASETS.create("svhn", SvhnConfig(path=str(tmp_path))).train_set()
    (tmp_path / "train_32x32.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataError, match=r"train_32x32.mat' is not an SVHN .mat file"):
        DATASETS.create("svhn", SvhnConfig(path=str(tmp_path))).train_set()
