"""WikiText-2 (Merity et al., "Pointer Sentinel Mixture Models", 2017), word level, the corpus to
which the DARTS paper transfers the recurrent cell it found on PTB (Liu et al., ICLR 2019,
Sec. 3.4; quark0/darts ``rnn/train.py --data`` pointed at it).

The DARTS language-model code reads WikiText-2 with the same ``Corpus`` as PTB (``rnn/data.py``,
from AWD-LSTM): one line at a time, words split on white space, ``<eos>`` after every line (the
corpus's empty lines become a lone ``<eos>``), the vocabulary the training file's words in order
of first appearance (33,278 words for the release, ``<unk>`` among them). Its files are the
release's ``wiki.train.tokens``, ``wiki.valid.tokens``, ``wiki.test.tokens`` (the
``wikitext-2`` archive, not ``wikitext-2-raw``), or the ``train.txt``, ``valid.txt``,
``test.txt`` that AWD-LSTM's ``getdata.sh`` renames them to; either naming is read.

Windows, streams and the search's loaders are PTB's (:class:`raynas.data.ptb.Ptb`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from raynas.config import Rule
from raynas.data.base import DATASETS
from raynas.data.ptb import Ptb, PtbConfig
from raynas.types import DatasetInfo

RELEASE_FILES = {"train": "wiki.train.tokens", "valid": "wiki.valid.tokens", "test": "wiki.test.tokens"}
RENAMED_FILES = {"train": "train.txt", "valid": "valid.txt", "test": "test.txt"}  # getdata.sh's names
# The release's vocabulary (Merity et al., Table 1); an instance reports its training file's.
WIKITEXT2_VOCABULARY = 33_278


@dataclass(frozen=True)
class WikiText2Config(PtbConfig):
    """Where the token files are, and the window length.

    Attributes:
        path: The folder holding ``wiki.train.tokens`` (and ``wiki.valid.tokens``,
            ``wiki.test.tokens``) or ``train.txt`` (``valid.txt``, ``test.txt``), or
            ``s3://bucket/prefix``.
        bptt: Tokens per sample (35 in rnn/train.py).
    """

    path: Annotated[str, Rule(missing="the folder holding wiki.train.tokens")] = ""


@DATASETS.register("wikitext2", config=WikiText2Config, traits={"tokens": True})
class WikiText2(Ptb):
    """WikiText-2 for word-level language models; ``info.num_classes`` is the vocabulary size."""

    info = DatasetInfo(name="wikitext2", in_channels=1, num_classes=WIKITEXT2_VOCABULARY, image_size=35)
    corpus = "WikiText-2"

    @classmethod
    def file_names(cls, folder: Path) -> dict[str, str]:
        """The release's names, else ``getdata.sh``'s where only those are there."""
        if not (folder / RELEASE_FILES["train"]).is_file() and (folder / RENAMED_FILES["train"]).is_file():
            return RENAMED_FILES
        return RELEASE_FILES
