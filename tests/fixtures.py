"""Tiny datasets written in the real on-disk format of every registered dataset, one writer each
(no downloads: the tests read files laid out exactly as the official releases are).

``FIXTURES`` maps a dataset's registry name to a writer that takes an empty folder, writes the
dataset's files under it and returns the ``data.path`` to read them from;
``tests/test_dataset_registry.py`` runs every registered dataset through the same battery on it, so
a new dataset needs a writer here. Other tests use the writers (and their knobs) directly.
"""

from __future__ import annotations

import pickle
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

# --- CIFAR-10/100: the python version (https://www.cs.toronto.edu/~kriz/cifar.html) -----------
# Pickled dicts with bytes keys; ``data`` an (N, 3072) uint8 array, channel-major (1024 red,
# 1024 green, 1024 blue values, each plane row-major).

PER_BATCH = 4  # images per CIFAR-10 batch file; five files: 20 images
MARK = (2, 5)  # (row, col) of a bright pixel in each red plane: catches a swapped H and W
CIFAR_TEST = range(20, 23)  # the test batches' images: none of them is a training image


def image_bytes(i: int) -> np.ndarray:
    """Image ``i`` as one CIFAR row: red plane 10 i + 5 (so the image can be recognised after
    shuffling), green 0, blue 255, and one red pixel of 255 at ``MARK``."""
    red = np.full((32, 32), 10 * i + 5, dtype=np.uint8)
    red[MARK] = 255
    green = np.zeros((32, 32), dtype=np.uint8)
    blue = np.full((32, 32), 255, dtype=np.uint8)
    return np.concatenate([red.ravel(), green.ravel(), blue.ravel()])  # (3072,)


def write_batch(path: Path, batch: dict[bytes, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        pickle.dump(batch, f, protocol=2)  # the files were written by Python 2's cPickle


def cifar10_label(i: int) -> int:
    return (3 * i + 1) % 10


def cifar100_label(i: int) -> int:
    return (99 - 7 * i) % 100


def write_cifar10(root: Path, *, test: bool = True) -> Path:
    """``cifar-10-batches-py/data_batch_1..5`` of ``PER_BATCH`` recognisable images each (images
    0..19, in file order) and, with ``test``, a ``test_batch`` of images ``CIFAR_TEST``."""
    for b in range(5):
        index = range(b * PER_BATCH, (b + 1) * PER_BATCH)
        write_batch(root / "cifar-10-batches-py" / f"data_batch_{b + 1}", {
            b"batch_label": f"training batch {b + 1} of 5".encode(),
            b"labels": [cifar10_label(i) for i in index],
            b"data": np.stack([image_bytes(i) for i in index]),
            b"filenames": [f"img_{i}.png".encode() for i in index],
        })
    if test:
        write_batch(root / "cifar-10-batches-py" / "test_batch", {
            b"batch_label": b"testing batch 1 of 1", b"labels": [cifar10_label(i) for i in CIFAR_TEST],
            b"data": np.stack([image_bytes(i) for i in CIFAR_TEST]),
            b"filenames": [f"img_{i}.png".encode() for i in CIFAR_TEST],
        })
    return root


def write_cifar100(root: Path, *, test: bool = True) -> Path:
    """``cifar-100-python/train`` of images 0..9 (fine and coarse labels) and, with ``test``, a
    ``test`` file of images ``CIFAR_TEST``."""
    index = range(10)
    write_batch(root / "cifar-100-python" / "train", {
        b"filenames": [f"img_{i}.png".encode() for i in index],
        b"batch_label": b"training batch 1 of 1",
        b"fine_labels": [cifar100_label(i) for i in index],
        b"coarse_labels": [i % 20 for i in index],
        b"data": np.stack([image_bytes(i) for i in index]),
    })
    if test:
        write_batch(root / "cifar-100-python" / "test", {
            b"fine_labels": [cifar100_label(i) for i in CIFAR_TEST], b"coarse_labels": [0, 0, 0],
            b"data": np.stack([image_bytes(i) for i in CIFAR_TEST]),
        })
    return root


# --- ImageNet16-120: NAS-Bench-201's downsampled ImageNet batches ------------------------------


def write_imagenet16(root: Path) -> Path:
    """``train_data_batch_1..10`` and ``val_data``: pickles of random (N, 768) uint8 images with
    1-based labels over all 1,000 classes, of which only 1..120 are kept. Batch ``i``'s labels
    are 1, 120, 121, 1000, i (three kept, 0-based 0, 119 and i - 1); ``val_data``'s 2, 500, 120."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(1, 11):
        labels = [1, 120, 121, 1000, i]
        batch = {"data": rng.integers(0, 256, (5, 3 * 16 * 16), dtype=np.uint8), "labels": labels}
        (root / f"train_data_batch_{i}").write_bytes(pickle.dumps(batch))
    val = {"data": rng.integers(0, 256, (3, 3 * 16 * 16), dtype=np.uint8), "labels": [2, 500, 120]}
    (root / "val_data").write_bytes(pickle.dumps(val))
    return root


# --- ImageNet-style folders: <split>/<class>/<image> -------------------------------------------


def write_image_folder(root: Path, *, val: bool = True) -> Path:
    """``train/class_<k>/<n>.png``: real handwritten digits (scikit-learn), 3 classes of 3, as RGB;
    with ``val``, ``val/class_<k>/0.png``: the next digit of each class."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in range(3):
        images = digits.images[digits.target == label]
        splits = [("train", images[:3])] + ([("val", images[3:4])] if val else [])
        for split, chosen in splits:
            folder = root / split / f"class_{label}"
            folder.mkdir(parents=True)
            for n, image in enumerate(chosen):
                pixels = (image * 255 / 16).astype(np.uint8)  # (8, 8) grey levels 0..16
                Image.fromarray(pixels).convert("RGB").save(folder / f"{n}.png")
    return root


# --- Penn Treebank: Mikolov's text files ------------------------------------------------------

PTB_TRAIN = " the cat sat on the mat \n the dog sat \n a <unk> ran \n"
PTB_VALID = " the cat ran \n a zebra sat \n"
PTB_TEST = " the end \n"


def write_ptb(folder: Path, *, test: bool = True) -> Path:
    """``ptb.train.txt`` (15 tokens with ``<eos>``, 10 words), ``ptb.valid.txt`` and, with
    ``test``, ``ptb.test.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ptb.train.txt").write_text(PTB_TRAIN)
    (folder / "ptb.valid.txt").write_text(PTB_VALID)
    if test:
        (folder / "ptb.test.txt").write_text(PTB_TEST)
    return folder


def write_random_ptb(folder: Path, *, train_words: int, valid_words: int) -> Path:
    """PTB's three files of random sentences of 9 words out of 12 (``<eos>`` makes each line
    10 tokens): ``train_words // 10`` lines of training text, ``valid_words // 10`` of validation
    text, 2 of test text."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(12)]
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in (("train", train_words), ("valid", valid_words), ("test", 20)):
        lines = [" ".join(rng.choices(words, k=9)) for _ in range(count // 10)]
        (folder / f"ptb.{name}.txt").write_text("\n".join(lines) + "\n")
    return folder


# --- WikiText-2: the release's wiki.*.tokens files --------------------------------------------

# As in the release: a space-led heading line, empty lines (" \n"), "@-@" for split hyphens.
WIKITEXT2_TRAIN = " \n = Valkyria Chronicles = \n \n the game @-@ play is <unk> \n \n"
WIKITEXT2_VALID = " \n = Homarus = \n the play is \n"
WIKITEXT2_TEST = " \n = Robert = \n"


def write_wikitext2(folder: Path, *, renamed: bool = False) -> Path:
    """``wiki.train.tokens`` (15 tokens with ``<eos>``, 10 words), ``wiki.valid.tokens`` and
    ``wiki.test.tokens``; with ``renamed``, as ``train.txt``, ``valid.txt``, ``test.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, text in (("train", WIKITEXT2_TRAIN), ("valid", WIKITEXT2_VALID), ("test", WIKITEXT2_TEST)):
        (folder / (f"{split}.txt" if renamed else f"wiki.{split}.tokens")).write_text(text)
    return folder


# --- Cityscapes: leftImg8bit/ and gtFine/ PNGs ------------------------------------------------

# labelIds -> trainIds of cityscapesScripts helpers/labels.py, a few by hand: road 7 -> 0,
# car 26 -> 13, bicycle 33 -> 18, sky 23 -> 10; unlabeled 0, parking 9, caravan 29 -> ignored.
SOME_IDS = {7: 0, 26: 13, 33: 18, 23: 10, 0: -100, 9: -100, 29: -100}


def write_cityscapes(
    root: Path, split: str, cities: dict[str, int], size: tuple[int, int] = (24, 40)
) -> None:
    """Real PNG files in the official layout; labels tile the ids of SOME_IDS."""
    from PIL import Image

    h, w = size
    ids = np.array(list(SOME_IDS), dtype=np.uint8)
    for city, count in cities.items():
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            name = f"{city}_{i:06d}_000019"
            image = np.full((h, w, 3), 255, dtype=np.uint8)
            image[:, : w // 2] = 0
            Image.fromarray(image).save(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png")
            label = ids[(np.arange(h)[:, None] + np.arange(w)[None, :] + i) % len(ids)]
            Image.fromarray(label).save(root / "gtFine" / split / city / f"{name}_gtFine_labelIds.png")


def write_cityscapes_tree(root: Path) -> Path:
    """``train``: 3 images of aachen and 3 of bochum; ``val``: 2 of frankfurt (24x40 each)."""
    write_cityscapes(root, "train", {"aachen": 3, "bochum": 3})
    write_cityscapes(root, "val", {"frankfurt": 2})
    return root


# --- SVHN: the cropped digits (http://ufldl.stanford.edu/housenumbers/) ------------------------
# MATLAB files (scipy.io.savemat writes the same MATLAB 5 format the official ones have): ``X``
# (32, 32, 3, N) uint8, height, width, channel, image; ``y`` (N, 1), labels 1..10, 10 the digit 0.

SVHN_TRAIN, SVHN_TEST, SVHN_EXTRA = range(0, 6), range(6, 9), range(9, 11)


def svhn_label(i: int) -> int:
    """The file's label of image ``i``: 1..10 (image 0 has 10, the digit 0)."""
    return 10 - i % 10


def write_svhn_mat(path: Path, index: range) -> None:
    """One SVHN ``.mat`` file of recognisable images: red 10 i + 5, green 0, blue 255, one red
    pixel of 255 at ``MARK`` (row, column)."""
    import scipy.io

    x = np.zeros((32, 32, 3, len(index)), dtype=np.uint8)
    for k, i in enumerate(index):
        x[:, :, 0, k] = 10 * i + 5
        x[MARK[0], MARK[1], 0, k] = 255
        x[:, :, 2, k] = 255
    y = np.array([[svhn_label(i)] for i in index], dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), {"X": x, "y": y})


def write_svhn(root: Path, *, extra: bool = True) -> Path:
    """``train_32x32.mat`` (images ``SVHN_TRAIN``), ``test_32x32.mat`` (``SVHN_TEST``) and, with
    ``extra``, ``extra_32x32.mat`` (``SVHN_EXTRA``), in ``root/svhn``."""
    folder = root / "svhn"
    write_svhn_mat(folder / "train_32x32.mat", SVHN_TRAIN)
    write_svhn_mat(folder / "test_32x32.mat", SVHN_TEST)
    if extra:
        write_svhn_mat(folder / "extra_32x32.mat", SVHN_EXTRA)
    return folder


# --- NAS-Bench-201's release (NAS-Bench-201-v1_0-e61699.pth) ----------------------------------
# A torch.save of plain Python data, laid out as D-X-Y/NAS-Bench-201's nas_201_api reads it:
# meta_archs (cell strings by index), arch2infos (per index, a 'less' 12-epoch and a 'full'
# 200-epoch ArchResults.state_dict(), whose all_results hold a ResultsCount.state_dict() per
# (dataset, seed)) and evaluated_indexes.

NB201_SEEDS = {
    "cifar10-valid": (777, 888), "cifar10": (777,), "cifar100": (777, 888, 999), "ImageNet16-120": (777,),
}
NB201_EVAL_SETS = {
    "cifar10-valid": ("x-valid", "ori-test"), "cifar10": ("ori-test",),
    "cifar100": ("x-valid", "x-test", "ori-test"), "ImageNet16-120": ("x-valid", "x-test", "ori-test"),
}


def nb201_accuracy(index: int, dataset: str, seed: int, setname: str, epoch: int, epochs: int) -> float:
    """The accuracy (a percentage) the fixture gives a cell's trial on a set after an epoch:
    distinct for every cell, dataset, seed, set and epoch."""
    base = 40 + (index * 7 + len(dataset) * 3 + seed % 11 + len(setname)) % 50
    return base + 5 * (epoch + 1) / epochs + 0.01 * (seed % 7)


def _nb201_trial(
    index: int, arch: str, dataset: str, seed: int, epochs: int, last: bool, number: Callable[[float], Any],
    sets: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    # The 12-epoch record is evaluated on x-valid alone here (unless ``sets`` says otherwise): the
    # API's get_more_info reads its ori-test inside a try (api.py), so a reader must not count on it.
    sets = sets or (NB201_EVAL_SETS[dataset] if epochs == 200 else ("x-valid",))
    kept = range(epochs - 1, epochs) if last else range(epochs)
    keys = [f"{name}@{e}" for name in sets for e in kept]
    # Times: every epoch's for the 12-epoch schedule (what REA's time budget reads), else those kept.
    timed = range(epochs) if epochs == 12 else kept
    times = [f"{name}@{e}" for name in sets for e in timed]
    accs = {f"{n}@{e}": number(nb201_accuracy(index, dataset, seed, n, e, epochs))
            for n in sets for e in kept}
    return {  # ResultsCount.__dict__
        "name": dataset, "net_state_dict": None,
        "train_acc1es": {e: nb201_accuracy(index, dataset, seed, "train", e, epochs) for e in kept},
        "train_acc5es": None, "train_losses": {e: 1.0 for e in kept},
        "train_times": {e: 10.0 + index % 7 for e in timed},
        "arch_config": {"channel": 16, "num_cells": 5, "arch_str": arch, "class_num": 10},
        "params": number(0.1 + index / 100), "flop": number(10.0 + index), "seed": seed, "epochs": epochs,
        "latency": [0.01], "eval_names": list(sets), "eval_acc1es": accs,
        "eval_times": {k: 1.0 + seed % 3 for k in times}, "eval_losses": {k: 1.0 for k in keys},
    }


def write_nb201_table(path: Path, archs: list[str], *, datasets: tuple[str, ...] = tuple(NB201_SEEDS),
                      last_epoch_only: bool = False, legacy: bool = False,
                      number: Callable[[float], Any] = float) -> Path:
    """NAS-Bench-201's file holding ``archs`` (cell strings), each trained on ``datasets`` with
    :data:`NB201_SEEDS` for the 200-epoch schedule and on cifar10-valid for the 12-epoch one (as
    in the release; evaluated on x-valid alone). ``last_epoch_only``: each trial's accuracies of
    its last epoch alone (all that is read, and all the API's ``iepoch=None`` reads), for a file
    of all 15,625 cells. ``legacy``: torch's format before its zip archives, in which the 2020
    releases were written. ``number``: the type the accuracies, parameters and multiply-adds are
    saved as (``numpy.float64``: as ``np.mean`` returns them)."""
    import torch

    infos = {}
    for index, arch in enumerate(archs):
        infos[index] = {}
        for schedule, epochs, sets in (("full", 200, datasets), ("less", 12, ("cifar10-valid",))):
            infos[index][schedule] = {  # ArchResults.state_dict()
                "arch_index": index, "arch_str": arch, "clear_net_done": True,
                "dataset_seed": {d: list(NB201_SEEDS[d]) for d in sets},
                "all_results": {(d, s): _nb201_trial(index, arch, d, s, epochs, last_epoch_only, number)
                                for d in sets for s in NB201_SEEDS[d]},
            }
    release = {"meta_archs": list(archs), "arch2infos": infos, "evaluated_indexes": set(range(len(archs)))}
    torch.save(release, path, _use_new_zipfile_serialization=not legacy)
    return path


def write_nats_tss(path: Path, archs: list[str], *, folder: bool,
                   datasets: tuple[str, ...] = tuple(NB201_SEEDS)) -> Path:
    """NATS-Bench's topology release holding ``archs``, as D-X-Y/NATS-Bench's api_utils.py
    ``pickle_save`` writes it (a bz2-compressed pickle, protocol 4), its records keyed by their
    hp ("12", "200"), every one trained on ``datasets`` and evaluated on each dataset's sets:
    ``folder``, the ``fast_mode`` folder (``meta.pickle.pbz2`` and one ``<index:06d>.pickle.pbz2``
    per cell) at ``path``; else the one file ``path`` (``NATS-tss-v1_0-3ffb9.pickle.pbz2``)."""
    import bz2
    import pickle

    def save(obj: Any, file: Path) -> None:
        with bz2.BZ2File(file, "wb") as out:
            pickle.dump(obj, out, protocol=4)

    infos = {
        index: {
            str(epochs): {  # ArchResults.state_dict()
                "arch_index": index, "arch_str": arch, "clear_net_done": True,
                "dataset_seed": {d: list(NB201_SEEDS[d]) for d in datasets},
                "all_results": {
                    (d, s): _nb201_trial(index, arch, d, s, epochs, False, float, NB201_EVAL_SETS[d])
                    for d in datasets for s in NB201_SEEDS[d]
                },
            }
            for epochs in (12, 200)
        }
        for index, arch in enumerate(archs)
    }
    if not folder:
        save({"meta_archs": list(archs), "arch2infos": infos, "evaluated_indexes": set(infos)}, path)
        return path
    path.mkdir(parents=True, exist_ok=True)
    save({"meta_archs": list(archs), "evaluated_indexes": set(infos)}, path / "meta.pickle.pbz2")
    for index, info in infos.items():
        save(info, path / f"{index:06d}.pickle.pbz2")
    return path


def every_nb201_cell() -> list[str]:
    """NAS-Bench-201's 15,625 cells (five operations on each of six edges), as strings."""
    from raynas.spaces import SPACES

    return [str(cell) for cell in SPACES.create("nb201").enumerate()]


def write_whole_nb201_table(path: Path, datasets: tuple[str, ...] = ("cifar10-valid", "cifar10")) -> Path:
    """NAS-Bench-201's file of all 15,625 cells (in :func:`every_nb201_cell`'s order), trained on
    ``datasets``, each trial's last epoch alone (all that is read: the full 200 epochs would be
    some 200 MB a dataset)."""
    return write_nb201_table(path, every_nb201_cell(), datasets=datasets, last_epoch_only=True)


# --- scikit-learn's digits ---------------------------------------------------------------------


def write_digits(root: Path) -> Path:
    """Nothing: the digits ship inside scikit-learn (the dataset has no ``data.path``)."""
    return root


FIXTURES: dict[str, Callable[[Path], Path]] = {
    "cifar10": write_cifar10,
    "cifar100": write_cifar100,
    "ImageNet16-120": write_imagenet16,
    "imagenet": write_image_folder,
    "ptb": write_ptb,
    "wikitext2": write_wikitext2,
    "cityscapes": write_cityscapes_tree,
    "digits": write_digits,
    "svhn": write_svhn,
}
