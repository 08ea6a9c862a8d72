"""Penn Treebank, word level, in Mikolov's text files as the DARTS language models read them
(quark0/darts ``rnn/data.py``): ``ptb.train.txt``, ``ptb.valid.txt``, ``ptb.test.txt``, one
sentence per line, words separated by spaces, ``<eos>`` appended to every line.

The vocabulary is the training file's words in order of first appearance (10,000 words for the
standard files, ``<unk>`` among them). The token stream is cut into consecutive windows of
``bptt`` tokens; a sample is ``(tokens[i : i + bptt], tokens[i + 1 : i + bptt + 1])`` for
``i = 0, bptt, 2 * bptt, ...``, so a network predicts every next word.

A search reads PTB as ``rnn/train_search.py`` does (:meth:`Ptb.search_loaders`): the training
text trains the weights and the validation text the architecture, each cut into ``batch_size``
parallel streams (``batchify``) read in order, window after window, so a strategy can carry the
hidden state from one batch to the next; the training windows have the search's variable length
(``bptt`` with probability 0.95, else ``bptt / 2``), or (``windows: fixed``) ENAS's ``bptt``, and
the validation windows may start at a random token (``valid_start: random``, ENAS's rewards).
A retraining reads its texts the same way (:meth:`Ptb.stream_loader`), the training windows'
lengths drawn as ``rnn/train.py`` draws them (:class:`TrainingWindows`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from raynas.config import Rule
from raynas.data.base import DATASETS, LoaderConfig
from raynas.errors import ConfigError, DataError
from raynas.types import DatasetInfo

EOS = "<eos>"
UNK = "<unk>"
FILES = {"train": "ptb.train.txt", "valid": "ptb.valid.txt", "test": "ptb.test.txt"}
# The standard files' vocabulary (Mikolov et al.); an instance reports its training file's.
PTB_VOCABULARY = 10_000


@dataclass(frozen=True)
class PtbConfig(LoaderConfig):
    """Where the text files are, and the window length.

    Attributes:
        path: The folder holding ``ptb.train.txt`` (and ``ptb.valid.txt``, ``ptb.test.txt``), or
            ``s3://bucket/prefix``.
        bptt: Tokens per sample (35 in rnn/train_search.py and rnn/train.py).
        windows: The training windows: ``variable`` lengths as rnn/train_search.py draws them
            (a search) and rnn/train.py (a retraining), or ``fixed``: always ``bptt``, the tokens
            left after the last whole window not read (ENAS's ``ptb_input_producer``).
        valid_start: Where the search's validation windows start: the streams' ``first``
            token, or a ``random`` one drawn anew at every pass over them, anywhere a whole
            window fits, the windows going on in order from there (ENAS scores each candidate on
            such a window: ``ptb_input_producer(randomize=True)``). A candidate's pass draws from
            its own stream, so it is scored on the same windows whichever worker scores it.
    """

    path: Annotated[str, Rule(missing="the folder holding ptb.train.txt")] = ""
    bptt: Annotated[int, Rule(ge=1)] = 35
    windows: Literal["variable", "fixed"] = "variable"
    valid_start: Literal["first", "random"] = "first"


def read_words(
    path: Path, *, corpus: str = "PTB", expected: Sequence[str] = tuple(FILES.values())
) -> list[str]:
    """The words of a corpus text file, ``<eos>`` after every line, an empty one included
    (``Corpus.tokenize``)."""
    if not path.is_file():
        raise DataError(f"{corpus} file {str(path)!r} is missing (expected {', '.join(expected)})")
    try:
        with path.open(encoding="utf-8") as f:
            return [word for line in f for word in [*line.split(), EOS]]
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not a UTF-8 {corpus} text file: {exc}") from None


class TokenWindows(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Consecutive windows of a token stream: inputs and next-token targets, each (bptt,)."""

    def __init__(self, tokens: torch.Tensor, bptt: int) -> None:
        self.tokens = tokens  # (N,) int64
        self.bptt = bptt

    def __len__(self) -> int:
        return max(0, (len(self.tokens) - 1) // self.bptt)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        i = index * self.bptt
        return self.tokens[i : i + self.bptt], self.tokens[i + 1 : i + self.bptt + 1]


class TokenStreams(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A token stream cut into parallel streams (``batchify``), of which this worker reads its
    share; item ``(start, length)`` is the window of every stream: inputs and next-token targets,
    each (streams, length).

    Args:
        tokens: The token ids (N,).
        streams: The global number of streams (``data.batch_size``).
        rank: This worker's index among ``world_size`` data-parallel workers.
        world_size: Workers sharing the streams.
    """

    def __init__(self, tokens: torch.Tensor, streams: int, rank: int = 0, world_size: int = 1) -> None:
        length = len(tokens) // streams
        data = tokens[: length * streams].view(streams, length)  # (streams, length)
        share = streams // world_size
        self.data = data[rank * share : (rank + 1) * share]  # (share, length)

    @property
    def length(self) -> int:
        """Tokens per stream."""
        return self.data.shape[1]

    def __len__(self) -> int:
        return max(0, self.length - 1)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        start, length = key
        length = min(length, self.length - 1 - start)
        return self.data[:, start : start + length], self.data[:, start + 1 : start + 1 + length]


class StreamWindows(Sampler[list[tuple[int, int]]]):
    """Consecutive windows through the streams, as ``rnn/train_search.py`` walks them: each of
    length ``bptt``, or (``variable``) ``bptt`` with probability 0.95 else ``int(bptt / 2)``.
    (``rnn/train.py`` then draws the length from a normal around it with deviation 5, at least 5;
    the search has that line commented out.)

    Args:
        length: Tokens per stream.
        bptt: The nominal window length.
        generator: Draws the variable lengths (and a random start); its state is part of a
            checkpoint.
        variable: Vary the lengths (training) or not.
        random_start: Start each pass at a token drawn uniformly from those a whole window of
            ``bptt`` can start at (``ptb_input_producer(randomize=True)``: ``i`` in
            ``[0, length - bptt)``), not at the first.
        whole: Only whole windows of ``bptt``: the tokens after the last are not read
            (``ptb_input_producer``'s ``(length - 1) // bptt`` windows an epoch).
    """

    def __init__(
        self, length: int, bptt: int, generator: torch.Generator, *, variable: bool,
        random_start: bool = False, whole: bool = False,
    ) -> None:
        self.length, self.bptt, self.generator, self.variable = length, bptt, generator, variable
        self.random_start, self.whole = random_start, whole

    def _size(self) -> int:
        if not self.variable:
            return self.bptt
        u = float(torch.rand((), generator=self.generator))
        return max(1, int(self.bptt if u < 0.95 else self.bptt / 2))  # seq_len = int(bptt)

    def __len__(self) -> int:  # the nominal count (variable lengths make it approximate)
        return max(1, (self.length - 1) // self.bptt) if self.length > 1 else 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        start = 0
        if self.random_start and self.length - self.bptt > 0:
            start = int(torch.randint(self.length - self.bptt, (), generator=self.generator))
        while start < self.length - 2:
            size = self._size()
            if self.whole and start + size > self.length - 1:
                return
            yield [(start, size)]
            start += size


class TrainingWindows(StreamWindows):
    """The windows ``rnn/train.py`` trains on: a base length of ``bptt`` with probability 0.95,
    else ``bptt / 2``, then a normal draw around it with deviation 5, at least 5 tokens and at
    most ``bptt + 20`` (``max(5, int(np.random.normal(bptt, 5)))``, ``--max_seq_len_delta 20``)."""

    def __init__(self, length: int, bptt: int, generator: torch.Generator) -> None:
        super().__init__(length, bptt, generator, variable=True)

    def _size(self) -> int:
        u = float(torch.rand((), generator=self.generator))
        base = self.bptt if u < 0.95 else self.bptt / 2.0
        drawn = int(base + 5.0 * float(torch.randn((), generator=self.generator)))  # int truncates
        return min(max(5, drawn), self.bptt + 20)


def _single(items: list[Any]) -> Any:
    return items[0]  # a batch sampler of one key per batch: the item is the batch


@DATASETS.register("ptb", config=PtbConfig, traits={"tokens": True})
class Ptb:
    """Penn Treebank for word-level language models; ``info.num_classes`` is the vocabulary size.

    The training file is read when the dataset is built, so its vocabulary is known before any
    network is. ``info``'s image fields describe a sample instead: one channel of ``bptt`` tokens.
    """

    info = DatasetInfo(name="ptb", in_channels=1, num_classes=PTB_VOCABULARY, image_size=35)
    corpus = "PTB"  # the corpus's name in messages

    def __init__(self, config: PtbConfig) -> None:
        self.config = config
        self.folder = Path(config.path).expanduser()
        self.files = self.file_names(self.folder)
        words = self._read("train")
        self.vocabulary: dict[str, int] = {}
        for word in words:
            self.vocabulary.setdefault(word, len(self.vocabulary))
        self.train_tokens = torch.tensor([self.vocabulary[w] for w in words], dtype=torch.long)
        self.info = DatasetInfo(
            name=type(self).info.name, in_channels=1, num_classes=len(self.vocabulary), image_size=config.bptt
        )

    @classmethod
    def file_names(cls, folder: Path) -> dict[str, str]:
        """The file of each split in ``folder``."""
        return FILES

    def _read(self, split: str) -> list[str]:
        expected = tuple(self.files.values())
        return read_words(self.folder / self.files[split], corpus=self.corpus, expected=expected)

    def encode(self, split: str) -> torch.Tensor:
        """The token ids (N,) of a split (``train``, ``valid``, ``test``); a word the training
        file lacks becomes ``<unk>`` (PTB's files have none such)."""
        if split not in self.files:
            raise ConfigError(
                f"unknown {self.corpus} split {split!r}; choose one of: {', '.join(self.files)}"
            )
        if split == "train":
            return self.train_tokens
        path = self.folder / self.files[split]
        ids = []
        for word in self._read(split):
            if word in self.vocabulary:
                ids.append(self.vocabulary[word])
            elif UNK in self.vocabulary:
                ids.append(self.vocabulary[UNK])
            else:
                raise DataError(f"{str(path)!r}: word {word!r} is not in the training vocabulary (no <unk>)")
        return torch.tensor(ids, dtype=torch.long)

    def train_set(self) -> TokenWindows:
        """Windows of ``ptb.train.txt`` (the search splits them into weight and alpha halves)."""
        return TokenWindows(self.train_tokens, self.config.bptt)

    def search_loaders(
        self, *, seed: int, rank: int = 0, world_size: int = 1
    ) -> tuple[DataLoader[Any], DataLoader[Any]]:
        """The search's loaders as ``rnn/train_search.py`` reads PTB: the training text's streams
        (variable-length windows; ``data.windows: fixed``, windows of ``bptt``) for the weights,
        the validation text's (windows of ``bptt``, from the first token or, ``data.valid_start:
        random``, a random one) for the architecture; ``data.batch_size`` streams, each worker
        reading its share."""
        cfg = self.config
        lengths: Literal["whole", "search"] = "search" if cfg.windows == "variable" else "whole"
        return (
            self.stream_loader("train", cfg.batch_size, seed=seed, lengths=lengths, rank=rank,
                               world_size=world_size),
            self.stream_loader("valid", cfg.batch_size, seed=seed + 1, rank=rank, world_size=world_size,
                               random_start=cfg.valid_start == "random"),
        )

    def stream_loader(
        self, split: str, streams: int, *, seed: int = 0,
        lengths: Literal["fixed", "whole", "search", "train"] = "fixed", rank: int = 0, world_size: int = 1,
        random_start: bool = False,
    ) -> DataLoader[Any]:
        """A split read as ``streams`` parallel streams (``batchify``), window after window, this
        worker reading its share (``data.limit``: the first ``limit`` windows' tokens only).

        Args:
            split: ``train``, ``valid`` or ``test``.
            streams: The global number of streams.
            seed: Seeds the generator of variable lengths (the sampler's, saved in checkpoints).
            lengths: ``fixed`` windows of ``bptt`` (the last one shorter where the tokens run
                out); ``whole``: only whole ones; ``search``: :class:`StreamWindows`' variable
                ones (rnn/train_search.py); ``train``: :class:`TrainingWindows` (rnn/train.py).
            rank: This worker's index among ``world_size`` data-parallel workers.
            world_size: Workers sharing the streams.
            random_start: Each pass starts at a random token (:class:`StreamWindows`).
        """
        cfg = self.config
        if streams % world_size:
            raise ConfigError(
                f"data.batch_size ({streams}) must be a multiple of the {world_size} data-parallel workers"
            )
        tokens = self.encode(split)
        if cfg.limit:
            tokens = tokens[: cfg.limit * cfg.bptt + 1]  # as many tokens as ``limit`` windows
        data = TokenStreams(tokens, streams, rank, world_size)
        if data.length < 3:
            raise ConfigError(f"data: {len(tokens)} tokens of {self.corpus}'s {split} text are too few "
                              f"for {streams} streams")
        generator = torch.Generator().manual_seed(seed)
        sampler = (
            TrainingWindows(data.length, cfg.bptt, generator) if lengths == "train"
            else StreamWindows(data.length, cfg.bptt, generator, variable=lengths == "search",
                               random_start=random_start, whole=lengths == "whole")
        )
        # A generator of the loader's own: iterating a DataLoader draws its base seed from the
        # global RNG otherwise, and reading the validation or test text would move the training's
        # dropout masks (rnn/train.py's evaluation draws nothing).
        return DataLoader(data, batch_sampler=sampler, collate_fn=_single,  # type: ignore[arg-type]
                          generator=torch.Generator())

    def valid_set(self) -> TokenWindows:
        """Windows of ``ptb.valid.txt``."""
        return TokenWindows(self.encode("valid"), self.config.bptt)

    def test_set(self) -> TokenWindows:
        """Windows of ``ptb.test.txt``."""
        return TokenWindows(self.encode("test"), self.config.bptt)
