"""The DARTS recurrent cell space (Liu et al., "DARTS: Differentiable Architecture Search",
ICLR 2019, Sec. 2.1 and 3.1.2) and its evaluation language model, as in the authors' code
(quark0/darts ``rnn/model.py``, ``rnn/genotypes.py``).

A cell turns the input ``x_t`` and the previous hidden state ``h_{t-1}`` into ``h_t``. Its first
node is a highway over both: ``[c, h] = [x_t, h_{t-1}] W0`` (one linear map to ``2 * nhid``),
``s0 = h_{t-1} + sigmoid(c) * (tanh(h) - h_{t-1})``. Each of the ``nodes`` (8) intermediate nodes
``i`` picks one earlier state ``s_j`` and one activation ``f_i``:
``[c_i, h_i] = s_j W_i``, ``s_i = s_j + sigmoid(c_i) * (f_i(h_i) - s_j)``. The cell's output
``h_t`` is the mean of nodes ``1..nodes``.

A genotype lists one ``(activation, predecessor)`` pair per node; its JSON form is the published
one: ``{"recurrent": [["sigmoid", 0], ["relu", 1], ...], "concat": [1, ..., 8]}``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.spaces.base import expect_arch
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options, published_record

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

# Candidate activations of rnn/genotypes.py (PRIMITIVES); ``none`` exists only in the search.
ACTIVATIONS: tuple[str, ...] = ("none", "tanh", "relu", "sigmoid", "identity")
CELL_ACTIVATIONS: tuple[str, ...] = tuple(a for a in ACTIVATIONS if a != "none")
STEPS = 8  # rnn/genotypes.py: STEPS = CONCAT = 8
INITRANGE = 0.04  # rnn/model.py: uniform(-0.04, 0.04) initialisation of every weight

Node = tuple[str, int]  # (activation, predecessor state)


@dataclass(frozen=True)
class DartsRnnGenotype(Architecture):
    """A DARTS recurrent cell: one ``(activation, predecessor)`` pair per intermediate node.

    Node ``i`` (1-based, ``i = 1..len(recurrent)``) may take any state ``0..i-1`` (state 0 is the
    highway over the input and the previous hidden state). ``concat`` names the states whose mean
    is the cell's output (``1..8`` in every published genotype).
    """

    space = "darts_rnn"

    recurrent: tuple[Node, ...]
    concat: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.recurrent:
            raise ArchitectureError("a darts_rnn genotype needs at least one (activation, predecessor) node")
        for i, (act, pred) in enumerate(self.recurrent):
            if act not in CELL_ACTIVATIONS:
                raise ArchitectureError(
                    f"genotype recurrent[{i}]: unknown activation {act!r}; choose one of: "
                    f"{', '.join(CELL_ACTIVATIONS)}"
                )
            if not 0 <= pred <= i:
                raise ArchitectureError(
                    f"genotype recurrent[{i}]: node {i + 1} cannot take state {pred}; "
                    f"allowed predecessors are 0..{i}"
                )
        last = len(self.recurrent)
        if not self.concat or any(not 0 <= c <= last for c in self.concat):
            raise ArchitectureError(f"genotype concat {list(self.concat)} must name states in 0..{last}")

    @property
    def nodes(self) -> int:
        """Number of intermediate nodes."""
        return len(self.recurrent)

    def to_dict(self) -> dict[str, Any]:
        return {"recurrent": [list(n) for n in self.recurrent], "concat": list(self.concat)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DartsRnnGenotype:
        check_keys(data, ("recurrent", "concat"), "a darts_rnn genotype")
        try:
            return cls(
                recurrent=tuple((str(act), int(pred)) for act, pred in data["recurrent"]),
                concat=tuple(int(c) for c in data["concat"]),
            )
        except (TypeError, ValueError) as exc:
            if isinstance(exc, ArchitectureError):
                raise
            raise ArchitectureError(f"malformed darts_rnn genotype: {exc}") from None

    def canonical(self) -> Any:
        # The output is a mean: the order of ``concat`` does not change the network.
        return {"recurrent": [list(n) for n in self.recurrent], "concat": sorted(self.concat)}

    def __str__(self) -> str:
        return f"Genotype(recurrent={list(self.recurrent)}, concat={list(self.concat)})"


def cell_shape(recurrent: Sequence[Node], concat: Sequence[int]) -> tuple[int, int]:
    """The width (in units of the hidden state) and depth of a recurrent cell, read as Shu et al.
    ("Understanding Architectures Learnt by Cell-based Neural Architecture Search", ICLR 2020,
    Sec. 3.1) define them for DARTS's convolutional cells: the cell's input is state 0 (the
    highway over ``x_t`` and ``h_{t-1}`` that every cell computes alike), its output the mean of
    the ``concat`` states.

    Depth: the connections along the longest path from state 0 to the output. Width: the nodes
    connected to state 0 (each node has one predecessor, so each counts whole). DARTS_V2's cell:
    width 1, depth 5.
    """
    depth = [0]  # state 0, the cell's input
    for _, pred in recurrent:
        depth.append(1 + depth[pred])
    return sum(pred == 0 for _, pred in recurrent), 1 + max(depth[c] for c in concat)


def _published(recurrent: list[Node]) -> DartsRnnGenotype:
    return DartsRnnGenotype(tuple(recurrent), tuple(range(1, STEPS + 1)))


# Verbatim from quark0/darts rnn/genotypes.py (master: DARTS_V1 first order, DARTS_V2 second
# order, ``DARTS = DARTS_V2``; the earlier commit 8876e79 named the first-order cell ``DARTS``).
# The file's ``concat=range(1, 9)`` is written out as 1..8.
PUBLISHED: dict[str, DartsRnnGenotype] = {
    "DARTS_V1": _published([
        ("relu", 0), ("relu", 1), ("tanh", 2), ("relu", 3), ("relu", 4), ("identity", 1),
        ("relu", 5), ("relu", 1),
    ]),
    "DARTS_V2": _published([
        ("sigmoid", 0), ("relu", 1), ("relu", 1), ("identity", 1), ("tanh", 2), ("sigmoid", 5),
        ("tanh", 3), ("relu", 5),
    ]),
}
_ALIASES = {"DARTS": "DARTS_V2"}


def published_genotype(name: str) -> DartsRnnGenotype:
    """A published recurrent genotype by name: DARTS_V1 (first order), DARTS_V2 (second order)."""
    return published_record(name, PUBLISHED, _ALIASES, "genotype")


def load_genotype(text: str) -> DartsRnnGenotype:
    """A genotype from JSON text, a JSON file, or a published name."""
    genotype = DartsRnnGenotype.read_json(text, form="in the published genotype form", noun="genotype")
    return genotype if genotype is not None else published_genotype(text.strip())


# --- the evaluation network (rnn/model.py) ---------------------------------------------------


def identity(x: torch.Tensor) -> torch.Tensor:
    """The ``identity`` activation (a named function: networks are pickled when registered)."""
    return x


def activation(name: str) -> Any:
    """The function of an activation name (``DARTSCell._get_activation``)."""
    functions = {"tanh": torch.tanh, "relu": F.relu, "sigmoid": torch.sigmoid, "identity": identity}
    if name not in functions:
        raise ArchitectureError(f"unknown activation {name!r}; choose one of: {', '.join(functions)}")
    return functions[name]


def variational_mask(shape: tuple[int, ...], drop: float, like: torch.Tensor) -> torch.Tensor:
    """A dropout mask drawn once and reused at every time step (rnn/utils.py ``mask2d``,
    ``LockedDropout``): entries are 0 or ``1 / (1 - drop)``."""
    keep = 1.0 - drop
    return torch.empty(shape, device=like.device, dtype=like.dtype).bernoulli_(keep) / keep


def embedded_dropout(embedding: nn.Embedding, tokens: torch.Tensor, drop: float) -> torch.Tensor:
    """Drop whole words: zero rows of the embedding matrix (rnn/utils.py ``embedded_dropout``)."""
    weight = embedding.weight
    if drop:
        weight = weight * variational_mask((weight.size(0), 1), drop, weight)  # (V, 1) broadcast
    return F.embedding(tokens, weight)


class RecurrentCell(nn.Module):
    """The highway cell's weights and its first node, shared by the evaluation and search cells.

    Args:
        ninp: Input (embedding) size.
        nhid: Hidden size.
        steps: Intermediate nodes (one weight matrix ``W_i`` each).
        dropouth: Variational dropout on the hidden state entering every matrix product.
        dropoutx: Variational dropout on the input ``x_t``.
    """

    def __init__(self, *, ninp: int, nhid: int, steps: int, dropouth: float, dropoutx: float) -> None:
        super().__init__()
        self.nhid = nhid
        self.dropouth = dropouth
        self.dropoutx = dropoutx
        self.W0 = nn.Parameter(torch.empty(ninp + nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE))
        self.Ws = nn.ParameterList(
            nn.Parameter(torch.empty(nhid, 2 * nhid).uniform_(-INITRANGE, INITRANGE)) for _ in range(steps)
        )

    def forward(self, inputs: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Run the cell over a sequence: inputs (T, B, ninp), hidden (B, nhid) -> (T, B, nhid)."""
        x_mask = h_mask = None
        if self.training:  # one mask per sequence, the same at every step
            x_mask = variational_mask((inputs.size(1), inputs.size(2)), self.dropoutx, inputs)
            h_mask = variational_mask((inputs.size(1), self.nhid), self.dropouth, inputs)
        outputs = []
        for x in inputs:  # (B, ninp)
            hidden = self.step(x, hidden, x_mask, h_mask)
            outputs.append(hidden)
        return torch.stack(outputs)  # (T, B, nhid)

    def init_state(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """s0 = h_prev + sigmoid(c0) * (tanh(h0) - h_prev), [c0, h0] = [x, h_prev] W0."""
        if x_mask is not None and h_mask is not None:
            xh = torch.cat([x * x_mask, h_prev * h_mask], dim=-1)  # (B, ninp + nhid)
        else:
            xh = torch.cat([x, h_prev], dim=-1)
        c0, h0 = torch.split(xh.mm(self.W0), self.nhid, dim=-1)  # each (B, nhid)
        return h_prev + c0.sigmoid() * (h0.tanh() - h_prev)

    def step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError


class DartsRnnCell(RecurrentCell):
    """The discrete cell of a genotype (``DARTSCell`` of rnn/model.py)."""

    def __init__(
        self, *, genotype: DartsRnnGenotype, ninp: int, nhid: int, dropouth: float, dropoutx: float
    ) -> None:
        super().__init__(ninp=ninp, nhid=nhid, steps=genotype.nodes, dropouth=dropouth, dropoutx=dropoutx)
        self.genotype = genotype
        self.functions = [activation(name) for name, _ in genotype.recurrent]

    def step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        states = [self.init_state(x, h_prev, x_mask, h_mask)]  # each (B, nhid)
        for i, (_, pred) in enumerate(self.genotype.recurrent):
            s_prev = states[pred]
            ch = (s_prev if h_mask is None else s_prev * h_mask).mm(self.Ws[i])  # (B, 2*nhid)
            c, h = torch.split(ch, self.nhid, dim=-1)
            states.append(s_prev + c.sigmoid() * (self.functions[i](h) - s_prev))
        return torch.stack([states[i] for i in self.genotype.concat], -1).mean(-1)  # (B, nhid)


class RnnLanguageModel(nn.Module):
    """A one-layer recurrent language model (``RNNModel`` of rnn/model.py): embedding, cell, and
    a decoder tied to the embedding, with the code's dropouts.

    Each batch starts from a zero hidden state unless one is passed to :meth:`run`.

    Args:
        cell: The recurrent cell (its ``nhid`` equals the embedding size, as the code asserts).
        ntoken: Vocabulary size.
        dropout: Variational dropout on the cell's outputs before the decoder.
        dropouti: Variational dropout on the embedded inputs.
        dropoute: Word dropout: whole rows of the embedding matrix.
    """

    def __init__(
        self, *, cell: RecurrentCell, ntoken: int, dropout: float, dropouti: float, dropoute: float
    ) -> None:
        super().__init__()
        nhid = cell.nhid
        self.encoder = nn.Embedding(ntoken, nhid)
        self.cell = cell
        self.decoder = nn.Linear(nhid, ntoken)
        self.decoder.weight = self.encoder.weight  # tied
        nn.init.uniform_(self.encoder.weight, -INITRANGE, INITRANGE)
        nn.init.zeros_(self.decoder.bias)
        self.nhid = nhid
        self.dropout, self.dropouti, self.dropoute = dropout, dropouti, dropoute

    def _locked(self, x: torch.Tensor, drop: float) -> torch.Tensor:
        # x: (T, B, D); one mask per sequence (LockedDropout)
        if not self.training or not drop:
            return x
        return x * variational_mask((1, x.size(1), x.size(2)), drop, x)

    def run(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and the last hidden state.

        Args:
            tokens: (B, T) token ids.
            hidden: (B, nhid) state to start from (default: zeros).

        Returns:
            Logits (B, ntoken, T), the layout ``cross_entropy`` takes with (B, T) targets, and the
            hidden state after the last token (B, nhid).
        """
        logits, outputs = self.run_outputs(tokens, hidden)
        return logits, outputs[-1]

    def run_outputs(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, ntoken, T) and the cell's outputs at every step (T, B, nhid), before the
        output dropout (what DARTS's temporal activation regularisation reads)."""
        logits, outputs, _ = self.run_dropped(tokens, hidden)
        return logits, outputs

    def run_dropped(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`run_outputs`, and the outputs after the output dropout (T, B, nhid): rnn/model.py's
        ``return_h`` pair ``raw_outputs``, ``outputs`` (AR reads the dropped ones)."""
        tokens = tokens.t()  # (T, B), the code's layout
        emb = embedded_dropout(self.encoder, tokens, self.dropoute if self.training else 0.0)  # (T, B, nhid)
        emb = self._locked(emb, self.dropouti)
        if hidden is None:
            hidden = emb.new_zeros(emb.size(1), self.nhid)
        outputs = self.cell(emb, hidden)  # (T, B, nhid)
        dropped = self._locked(outputs, self.dropout)  # (T, B, nhid)
        return self.decoder(dropped).permute(1, 2, 0), outputs, dropped  # logits (B, V, T)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, V, T)
        return self.run(tokens)[0]


# --- the space ---------------------------------------------------------------------------------

# Evaluation size of rnn/train.py: emsize = nhid = nhidlast = 850.
EVAL_CHANNELS = 850


@dataclass(frozen=True)
class DartsRnnSpaceConfig:
    """The DARTS recurrent space and its search supernet (defaults: rnn/train_search.py).

    Attributes:
        channels: Units of the embedding and of the hidden state in the supernet
            (``emsize = nhid = nhidlast = 300`` in the search; the code requires them equal).
        nodes: Intermediate nodes of the cell (``STEPS = 8``).
        activations: Candidate activations on every (node, predecessor) edge of the supernet.
        dropout: Variational dropout on the cell's outputs (0.75 in search and evaluation).
        dropouth: Variational dropout on the hidden states inside the cell (0.25).
        dropoutx: Variational dropout on the cell's input (0.75).
        dropouti: Variational dropout on the embeddings (0.2).
        dropoute: Word dropout on the embedding matrix (0 in rnn/train_search.py and train.py).
    """

    channels: Annotated[int, Rule(ge=1)] = 300
    nodes: Annotated[int, Rule(ge=1)] = STEPS
    activations: tuple[str, ...] = ACTIVATIONS
    dropout: Annotated[float, Rule(ge=0, lt=1)] = 0.75
    dropouth: Annotated[float, Rule(ge=0, lt=1)] = 0.25
    dropoutx: Annotated[float, Rule(ge=0, lt=1)] = 0.75
    dropouti: Annotated[float, Rule(ge=0, lt=1)] = 0.2
    dropoute: Annotated[float, Rule(ge=0, lt=1)] = 0.0

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "item in names", "space.activations: unknown activation {item!r}; choose from: {join(names)}",
            each="activations", tables={"names": ACTIVATIONS},
        ),
        Check(
            "set(activations) - {'none'}", "space.activations needs at least one activation besides 'none'"
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")


@SPACES.register(
    "darts_rnn", config=DartsRnnSpaceConfig,
    traits={
        "choices": True, "one_shot": True, "cell_shape": True, "tokens": True,
        # One predecessor a node, every node in the output: a tree under state 0 whose height is
        # the depth less one; height 1 only with every node on state 0 (width = nodes), any other
        # height h leaves 1 to nodes - h + 1 nodes on state 0 (tests/test_startup.py counts
        # them from the cells).
        "cell_shapes": {"expr": "[[2, nodes, nodes]] + "
                                "[[h + 1, 1, nodes - h + 1] for h in range(2, nodes + 1)]"},
    },
)
class DartsRnnSpace:
    """The DARTS recurrent cell space, for word-level language models (Penn Treebank).

    Its networks read token ids (B, T) and return logits (B, vocabulary, T); the dataset's
    ``num_classes`` is the vocabulary size.

    Args:
        config: Sizes of the supernet, the candidate activations and the dropouts.
    """

    architecture_type = DartsRnnGenotype
    # What the driver and ``raynas describe`` compare against: the paper's PTB language model.
    reference_dataset = "ptb"

    def __init__(self, config: DartsRnnSpaceConfig | None = None) -> None:
        self.config = config or DartsRnnSpaceConfig()

    @property
    def cell_activations(self) -> tuple[str, ...]:
        """The activations a node of a genotype may use (the candidates but ``none``)."""
        return tuple(a for a in self.config.activations if a != "none")

    def example_input(self, dataset: DatasetInfo, batch_size: int = 2, length: int = 5) -> torch.Tensor:
        """Random token ids (B, T) for a forward pass (the networks take no images)."""
        return torch.randint(dataset.num_classes, (batch_size, length))

    def sample(self, rng: random.Random) -> DartsRnnGenotype:
        """A uniformly random genotype: per node a predecessor and an activation (not ``none``)."""
        acts = self.cell_activations
        nodes = tuple((rng.choice(acts), rng.randrange(i + 1)) for i in range(self.config.nodes))
        return DartsRnnGenotype(nodes, tuple(range(1, self.config.nodes + 1)))

    def decisions(self) -> tuple[Decision, ...]:
        """Per node: its predecessor (``"0"``..``"i-1"``), then its activation."""
        out: list[Decision] = []
        for i in range(self.config.nodes):
            out += [
                Decision(f"node{i + 1}.input", tuple(str(j) for j in range(i + 1))),
                Decision(f"node{i + 1}.activation", self.cell_activations),
            ]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions`."""
        if not self.contains(arch):
            raise ArchitectureError(f"not a genotype of this darts_rnn space: {arch}")
        assert isinstance(arch, DartsRnnGenotype)
        acts = self.cell_activations
        return tuple(v for act, pred in arch.recurrent for v in (pred, acts.index(act)))

    def decode(self, values: tuple[int, ...] | list[int]) -> DartsRnnGenotype:
        """The genotype with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        nodes = tuple((names[i + 1], int(names[i])) for i in range(0, len(names), 2))
        return DartsRnnGenotype(nodes, tuple(range(1, self.config.nodes + 1)))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is a genotype of this space (node count, activations, output 1..nodes)."""
        return (
            isinstance(arch, DartsRnnGenotype)
            and arch.nodes == self.config.nodes
            and all(act in self.config.activations for act, _ in arch.recurrent)
            and sorted(arch.concat) == list(range(1, self.config.nodes + 1))
        )

    def parse(self, text: str) -> DartsRnnGenotype:
        """A genotype from a published name (DARTS_V1, DARTS_V2), a JSON file, or JSON text."""
        return load_genotype(text)

    def build(
        self,
        arch: Architecture,
        dataset: DatasetInfo,
        *,
        channels: int | None = None,
        layers: int | None = None,
        auxiliary: bool = False,
    ) -> nn.Module:
        """The evaluation language model of a genotype (``RNNModel`` with ``DARTSCell``).

        Args:
            arch: A :class:`DartsRnnGenotype`.
            dataset: ``num_classes`` is the vocabulary size (10,000 for PTB).
            channels: Embedding and hidden size (default: rnn/train.py's 850).
            layers: The network has one recurrent layer: None or 1.
            auxiliary: Ignored: the language model has no auxiliary head.
        """
        arch = expect_arch(arch, DartsRnnGenotype)
        if layers not in (None, 1):
            raise ConfigError(f"the darts_rnn language model has one recurrent layer; got layers={layers}")
        size = channels or EVAL_CHANNELS
        cfg = self.config
        cell = DartsRnnCell(genotype=arch, ninp=size, nhid=size, dropouth=cfg.dropouth, dropoutx=cfg.dropoutx)
        return RnnLanguageModel(
            cell=cell, ntoken=dataset.num_classes, dropout=cfg.dropout, dropouti=cfg.dropouti,
            dropoute=cfg.dropoute,
        )

    @property
    def op_names(self) -> tuple[str, ...]:
        """The candidates, in the column order of the supernet's architecture weights."""
        return tuple(self.config.activations)

    def cell_shape(self, arch: Architecture) -> dict[str, float]:
        """The width and depth of the recurrent cell (:func:`cell_shape`): ``recurrent_width``,
        ``recurrent_depth``."""
        arch = expect_arch(arch, DartsRnnGenotype, "measures")
        width, depth = cell_shape(arch.recurrent, arch.concat)
        return {"recurrent_width": width, "recurrent_depth": depth}

    def draw(self, arch: Architecture) -> Figure:
        """The recurrent cell's nodes and activations (the DARTS paper's Figure 6)."""
        from matplotlib.figure import Figure

        from raynas.spaces.drawing import draw_rnn_cell

        arch = expect_arch(arch, DartsRnnGenotype, "draws")
        fig = Figure(figsize=(2.2 * len(arch.recurrent) + 5.0, 3.6), layout="constrained")
        draw_rnn_cell(fig.subplots(), arch.recurrent, arch.concat, "recurrent cell")
        fig.suptitle(arch.key(), fontsize=10)
        return fig


