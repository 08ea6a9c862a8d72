"""The dataset registry, the loader settings every dataset shares, and the search split.

A dataset whose config has a ``path`` reads it from local disk or from ``s3://bucket/prefix``:
:meth:`DatasetRegistry.create` mirrors an S3 prefix into a local cache folder first
(:mod:`raynas.data.mirror`), so every loader reads local files.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from raynas.config import Rule, check_rules
from raynas.errors import ConfigError, UnknownNameError
from raynas.registry import Registry
from raynas.types import DatasetInfo


class DatasetRegistry(Registry[Any]):
    """The registry of datasets; building one fetches an ``s3://`` ``path`` to local disk first."""

    def create(self, name: str, /, config: Any = None) -> Any:
        """Build dataset ``name`` from its config, its ``path`` mirrored locally if on S3.

        Args:
            name: A registered dataset.
            config: Its config dataclass (None: the dataset's defaults, where it has them).

        Raises:
            StorageError: An ``s3://`` path's bucket or endpoint cannot be used.
            DataError: An ``s3://`` path holds no objects.
        """
        from raynas.data.mirror import with_local_path

        self.entry(name)  # an unknown name fails before anything is downloaded
        return super().create(name) if config is None else super().create(name, with_local_path(config))


DATASETS = DatasetRegistry("dataset")


@dataclass(frozen=True)
class LoaderConfig:
    """Batching and the search split (defaults: DARTS ``train_search.py``).

    Attributes:
        batch_size: Images per step, for both halves.
        train_portion: Share of the training set used to train weights; the rest trains alpha.
            1: every training image trains, and the epochs are validated on the official test
            split (relax's XD trainer; a search job allows it only with ``strategy.same_batch``).
        num_workers: DataLoader worker processes (0 loads in the training process).
        limit: Use only the first ``limit`` training images (0: all), for quick trials.
    """

    batch_size: Annotated[int, Rule(ge=1)] = 64
    train_portion: Annotated[float, Rule(gt=0, le=1)] = 0.5
    num_workers: Annotated[int, Rule(ge=0)] = 0
    limit: Annotated[int, Rule(ge=0)] = 0

    def __post_init__(self) -> None:
        check_rules(self, "data")


class SearchDataset(Protocol):
    """What the search needs from a dataset."""

    info: DatasetInfo
    config: LoaderConfig

    def train_set(self) -> Dataset[tuple[torch.Tensor, int]]:
        """The full training set (augmented as for training)."""
        ...


def official_test_set(data: SearchDataset) -> Dataset[tuple[torch.Tensor, int]] | None:
    """The dataset's official test split (CIFAR's test batch, ImageNet's ``val/``), not augmented;
    None for datasets without one (a dataset offers it as a ``test_set()`` method)."""
    split = getattr(data, "test_set", None)
    return None if split is None else split()


def training_order(dataset: Any, full: Any) -> Sequence[int]:
    """The training set's images in the order the search split cuts them (and ``data.limit``
    keeps a prefix of): the dataset's ``split_order(full)`` where it has one (a folder of class
    folders lists its images class by class), else as stored (CIFAR's batches are shuffled, and
    DARTS's split takes their first part)."""
    order = getattr(dataset, "split_order", None)
    return order(full) if order is not None else range(len(full))


def split_indices(order: Sequence[int], portion: float) -> tuple[list[int], list[int]]:
    """DARTS's split of the training images ``order`` lists (:func:`training_order`, cut to
    ``data.limit``): the first ``portion`` trains weights, the rest alpha.

    Raises:
        ConfigError: ``portion`` 1, which holds nothing out (only a dataset with an official test
            split validates on that instead).
    """
    if portion >= 1:
        raise ConfigError("data.train_portion 1 holds out nothing and this dataset has no official "
                          "test split to validate on: lower it")
    cut = int(portion * len(order))
    return list(order[:cut]), list(order[cut:])


class ShardedBatchSampler(Sampler[list[int]]):
    """Shuffled global batches, of which this worker takes its equal share, dealt in turn.

    Every data-parallel worker draws the same permutation (same seed), so together the workers
    see exactly the global batches one worker would see alone. A global batch is dealt out to the
    workers in turn (worker ``r`` takes its examples ``r``, ``r + world_size``, ...), so that every
    run of ``k * world_size`` consecutive examples of it is spread evenly over the workers, ``k``
    on each: their ``i``-th chunks of ``k`` examples together are that run (a ghost batch of the
    one-shot model's path dropout, :mod:`raynas.evaluators.supernet`).

    Args:
        n: Number of samples.
        batch_size: The global batch size (divisible by ``world_size``).
        generator: Seeded generator for the permutation; its state is part of a checkpoint.
        rank: This worker's index.
        world_size: Number of data-parallel workers.
        repeats: Repeated augmentation (Hoffer et al., 2020; timm's ``RepeatAugSampler``, DeiT's and
            NEXcepTion's ``--aug-repeats 3``): each image of the permutation comes ``repeats``
            times in a row, augmented anew each time, and an epoch keeps its length (``n`` images:
            ``n / repeats`` distinct ones); the repeated list is dealt out to the workers in turn,
            as timm deals it to its ranks, so with at least ``repeats`` workers an image's copies
            are on different ones.
    """

    def __init__(
        self, n: int, batch_size: int, generator: torch.Generator, rank: int = 0, world_size: int = 1,
        repeats: int = 1,
    ) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.generator = generator
        self.rank = rank
        self.world_size = world_size
        self.repeats = repeats
        self.drop_last = n > batch_size or world_size > 1

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=self.generator)
        if self.repeats > 1:
            order = torch.repeat_interleave(order, self.repeats)[: self.n]
        indices = order.tolist()
        share = self.batch_size // self.world_size
        for b in range(len(self)):
            batch = indices[b * self.batch_size : (b + 1) * self.batch_size]
            # Dealt in turn (an image's repeated copies, too, land on different workers).
            yield batch if self.world_size == 1 else batch[self.rank :: self.world_size][:share]


def search_loaders(
    dataset: SearchDataset, *, seed: int, rank: int = 0, world_size: int = 1
) -> tuple[DataLoader[Any], DataLoader[Any]]:
    """Shuffled loaders over the two halves of the search split (``train_portion`` 1: over the
    whole training set and the official test split).

    Args:
        dataset: A registered dataset instance.
        seed: Seeds the shuffling, so a search is repeatable.
        rank: This worker's index among ``world_size`` data-parallel workers.
        world_size: Workers sharing each global batch of ``data.batch_size`` images.
    """
    own = getattr(dataset, "search_loaders", None)
    if own is not None:  # a dataset that splits its own way (PTB: the authors' token streams)
        return own(seed=seed, rank=rank, world_size=world_size)  # type: ignore[no-any-return]
    cfg = dataset.config
    full = dataset.train_set()
    order = training_order(dataset, full)
    n = len(order)
    if cfg.limit:
        n = min(n, cfg.limit)
    test = official_test_set(dataset) if cfg.train_portion == 1 else None
    valid_set = full if test is None else test
    if test is None and not getattr(cfg, "augment_valid", True):  # (an ImageTensors' plain view)
        valid_set = full.plain()  # type: ignore[attr-defined]
    if test is not None:  # all for training; the epochs validated on the test split (relax)
        train_idx = list(order[:n])
        valid_idx = list(range(min(len(test), cfg.limit) if cfg.limit else len(test)))
    else:
        train_idx, valid_idx = split_indices(order[:n], cfg.train_portion)
    if not train_idx or not valid_idx:
        raise ConfigError(f"data: {n} images are too few to split at {cfg.train_portion}")
    if cfg.batch_size % world_size or min(len(train_idx), len(valid_idx)) < cfg.batch_size * (
        world_size > 1
    ):
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) must be a multiple of the {world_size} "
            "data-parallel workers, and no larger than either half of the split"
        )

    def loader(part: Dataset[Any], indices: list[int], offset: int) -> DataLoader[Any]:
        generator = torch.Generator().manual_seed(seed + offset)
        sampler = ShardedBatchSampler(len(indices), cfg.batch_size, generator, rank, world_size)
        return DataLoader(
            Subset(part, indices),
            batch_sampler=sampler,
            num_workers=cfg.num_workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=cfg.num_workers > 0,
        )

    return loader(full, train_idx, 0), loader(valid_set, valid_idx, 1)


def search_objective(name: str) -> str:
    """The metric a search on dataset ``name`` ranks its candidates by (the higher, the better):
    ``valid_acc``, or on token text (language models) ``valid_loglik``, the validation text's
    mean log-likelihood per token (``-valid_loss``): the higher it is, the lower the perplexity
    ``exp(-valid_loglik)`` that the papers rank language models by (random search with weight
    sharing, EN²AS); the next word's accuracy is not what they compare."""
    try:
        traits = DATASETS.entry(name).traits or {}
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
    return "valid_loglik" if traits.get("tokens") else "valid_acc"


def dataset_info(name: str) -> DatasetInfo:
    """Input channels, classes and image size of a dataset, by name (no data is read)."""
    try:
        return DATASETS.get(name).info
    except UnknownNameError as exc:
        raise ConfigError(str(exc)) from None
