"""Datasets, all in the ``DATASETS`` registry, and the DARTS search split.

A dataset class is built from its config dataclass and provides ``info`` (a
:class:`raynas.types.DatasetInfo`) and ``search_split()``: the training set cut into the halves
on which a supernet's weights and its architecture are optimised.
"""

# Built-in datasets register themselves on import.
from raynas.data import cifar, digits, imagenet, imagenet16  # noqa: F401
from raynas.data.base import DATASETS, LoaderConfig, dataset_info, search_loaders

__all__ = ["DATASETS", "LoaderConfig", "dataset_info", "search_loaders"]
