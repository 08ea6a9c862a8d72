"""Datasets, all in the ``DATASETS`` registry, and the DARTS search split.

A dataset class is built from its config dataclass and provides ``info`` (a
:class:`raynas.types.DatasetInfo`) and ``train_set()``, which ``search_loaders`` cuts into the halves
on which a supernet's weights and its architecture are optimised. A config's ``path`` may be
``s3://bucket/prefix``: ``DATASETS.create`` mirrors it to a local folder first (:mod:`raynas.data.mirror`).
"""

# Built-in datasets register themselves on import.
from raynas.data import cifar, cityscapes, digits, imagenet, imagenet16, ptb, svhn, wikitext  # noqa: F401
from raynas.data.base import DATASETS, LoaderConfig, dataset_info, search_loaders, search_objective

__all__ = ["DATASETS", "LoaderConfig", "dataset_info", "search_loaders", "search_objective"]
