"""ENAS's recurrent cell space (Pham et al., "Efficient Neural Architecture Search via Parameter
Sharing", ICML 2018, Sec. 2.1 "Designing Recurrent Cells"), and its language model, as
``melodyguan/enas`` trains a found cell (``src/ptb/ptb_enas_child.py`` with a ``fixed_arc``:
``_rhn_fixed``, ``_model``, ``_build_params``; ``scripts/ptb_final.sh``).

A cell has ``nodes`` nodes (``rhn_depth``, 12). Node 0 reads the input and the previous hidden
state: ``[h, t] = [x_t, h_{t-1}] W_prev``, ``s_0 = h_{t-1} + sigmoid(t) * (f_0(h) - h_{t-1})``;
node ``l`` reads one earlier node ``s_p``: ``[h, t] = s_p W_l``, ``s_l = s_p + sigmoid(t) *
(f_l(h) - s_p)``. Every node's activation is chosen among tanh, ReLU, the identity and sigmoid
(the code's ``func_idx`` 0-3), node 0's too; the cell's output is the mean of its loose ends, the
nodes no other node reads. The code's ``arc`` lists ``f_0``, then ``p_l f_l`` for every later node
(``ptb_enas_controller.py``'s order): :meth:`EnasRnnCell.parse` reads it, :meth:`EnasRnnCell.arc`
writes it.

The language model (:class:`EnasRnnLanguageModel`) is one such layer between an embedding and the
decoder tied to it (no bias), with the code's dropouts: a word dropped from a sequence's embedding
stays dropped wherever it comes again later in that sequence (``e_mask``), and one mask per
sequence on the cell's input (``x_mask``) and on every state a matrix reads (``s_mask``). The
code draws an output mask (``o_mask``) and never applies it: none here either.

DARTS's recurrent space (``darts_rnn``) is this one with node 0's activation fixed to tanh, eight
nodes and every node in the output; its ``rnn/genotypes.py`` transcribes ENAS's published cell as
a genotype (here ``ENAS_darts_genotypes``), which is not the arc of ``ptb_final.sh`` (``ENAS``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Rule, check_rules
from raynas.errors import ArchitectureError, ConfigError
from raynas.spaces.base import OptionsSpace, expect_arch, load_record
from raynas.spaces.darts_rnn import RecurrentCell, RnnLanguageModel, activation
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo, Decision, check_keys, decode_options

# ``func_idx`` 0-3 of _rhn_fixed and _rhn_enas.
ENAS_RNN_ACTIVATIONS: tuple[str, ...] = ("tanh", "relu", "identity", "sigmoid")


@dataclass(frozen=True)
class EnasRnnCell(Architecture):
    """A cell of ENAS's recurrent space.

    Attributes:
        activations: Node ``l``'s activation, node 0's first.
        inputs: The node each later node reads: ``inputs[l - 1] < l`` for node ``l``.

    The JSON form is ``{"activations": ["tanh", ...], "inputs": [0, 1, ...]}``.
    """

    space = "enas_rnn"

    activations: tuple[str, ...]
    inputs: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.activations) != len(self.inputs) + 1:
            raise ArchitectureError(
                f"an enas_rnn cell has one activation a node and one input a node after the first; got "
                f"{len(self.activations)} activations and {len(self.inputs)} inputs"
            )
        for node, name in enumerate(self.activations):
            if name not in ENAS_RNN_ACTIVATIONS:
                raise ArchitectureError(
                    f"enas_rnn node {node}: unknown activation {name!r}; "
                    f"allowed: {list(ENAS_RNN_ACTIVATIONS)}"
                )
        for node, p in enumerate(self.inputs, start=1):
            if not 0 <= p < node:
                raise ArchitectureError(
                    f"enas_rnn node {node} reads node {p}: it can read nodes 0..{node - 1}"
                )

    @property
    def nodes(self) -> int:
        """Nodes of the cell (``rhn_depth``)."""
        return len(self.activations)

    @property
    def loose_ends(self) -> tuple[int, ...]:
        """The nodes no other node reads: their mean is the cell's output."""
        return tuple(node for node in range(self.nodes) if node not in self.inputs)

    def arc(self) -> str:
        """The code's ``fixed_arc``: ``f_0``, then ``p_l f_l`` for every later node."""
        ids = [ENAS_RNN_ACTIVATIONS.index(a) for a in self.activations]
        return " ".join([str(ids[0]), *(f"{p} {f}" for p, f in zip(self.inputs, ids[1:], strict=True))])

    @classmethod
    def parse(cls, text: str) -> EnasRnnCell:
        """The cell of a ``fixed_arc`` string (an odd number of integers)."""
        parts = text.split()
        if not parts or not all(p.isdigit() for p in parts) or len(parts) % 2 == 0:
            raise ArchitectureError(
                f"an enas_rnn arc is node 0's activation id, then 'input activation' for every later "
                f"node (an odd number of integers); got {text!r}"
            )
        values = [int(p) for p in parts]
        funcs = [values[0], *values[2::2]]
        if any(f >= len(ENAS_RNN_ACTIVATIONS) for f in funcs):
            raise ArchitectureError(
                f"enas_rnn arc {text!r}: activation ids are 0..{len(ENAS_RNN_ACTIVATIONS) - 1}"
            )
        return cls(tuple(ENAS_RNN_ACTIVATIONS[f] for f in funcs), tuple(values[1::2]))

    def to_dict(self) -> dict[str, Any]:
        return {"activations": list(self.activations), "inputs": list(self.inputs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EnasRnnCell:
        check_keys(data, ("activations", "inputs"), "an enas_rnn architecture")
        try:
            return cls(tuple(str(a) for a in data["activations"]), tuple(int(p) for p in data["inputs"]))
        except (TypeError, ValueError) as exc:
            raise ArchitectureError(f"malformed enas_rnn architecture: {exc}") from None

    def __str__(self) -> str:
        return f"EnasRnnCell(arc={self.arc()!r})"


PUBLISHED: dict[str, EnasRnnCell] = {
    # scripts/ptb_final.sh's fixed_arc, the cell the authors trained (55.8 test perplexity on PTB
    # in the paper's Table 1).
    "ENAS": EnasRnnCell.parse("0 0 0 1 1 2 1 2 0 2 0 5 1 1 0 6 1 8 1 8 1 8 1"),
    # quark0/darts rnn/genotypes.py's ENAS: recurrent [(tanh, 0), (tanh, 1), (relu, 1), (tanh, 3),
    # (tanh, 3), (relu, 3), (relu, 4), (relu, 7), (relu, 8), (relu, 8), (relu, 8)], concat
    # [2, 5, 6, 9, 10, 11]: its state 0 is node 0 (tanh), its node i node i.
    "ENAS_darts_genotypes": EnasRnnCell(
        ("tanh", "tanh", "tanh", "relu", "tanh", "tanh", "relu", "relu", "relu", "relu", "relu", "relu"),
        (0, 1, 1, 3, 3, 3, 4, 7, 8, 8, 8),
    ),
}


@dataclass(frozen=True)
class EnasRnnSpaceConfig:
    """ENAS's recurrent space and its language model's dropouts (defaults: ``scripts/ptb_search.sh``).

    Attributes:
        channels: ``child_lstm_hidden_size``: the embedding's and the hidden state's size (720).
        nodes: ``child_rhn_depth``: nodes of a cell (12).
        dropoute: Word dropout on the embedding, ``1 - child_lstm_e_keep`` (0.25; 0.21 in the final run).
        dropoutx: Dropout on the cell's input, ``1 - child_lstm_x_keep`` (0.75).
        dropouth: Dropout on every state a matrix reads, ``1 - child_lstm_h_keep`` (0.25).
    """

    channels: Annotated[int, Rule(ge=1)] = 720
    nodes: Annotated[int, Rule(ge=1)] = 12
    dropoute: Annotated[float, Rule(ge=0, lt=1)] = 0.25
    dropoutx: Annotated[float, Rule(ge=0, lt=1)] = 0.75
    dropouth: Annotated[float, Rule(ge=0, lt=1)] = 0.25

    def __post_init__(self) -> None:
        check_rules(self, "space")


# The final network's size (scripts/ptb_final.sh: --child_lstm_hidden_size=748).
EVAL_CHANNELS = 748


def init_range(size: int) -> float:
    """``_build_params``'s uniform initialisation range for a hidden size."""
    return 0.1 if size <= 300 else 0.05 if size <= 400 else 0.04


@SPACES.register(
    "enas_rnn", config=EnasRnnSpaceConfig,
    traits={"choices": True, "tokens": True, "one_shot": True, "path_only": True},
)
class EnasRnnSpace(OptionsSpace[EnasRnnCell]):
    """ENAS's recurrent cell space, for word-level language models (Penn Treebank).

    Its networks read token ids (B, T) and return logits (B, vocabulary, T).

    Args:
        config: The cells' size and the language model's dropouts.
    """

    architecture_type = EnasRnnCell
    reference_dataset = "ptb"

    def __init__(self, config: EnasRnnSpaceConfig | None = None) -> None:
        self.config = config or EnasRnnSpaceConfig()

    def example_input(self, dataset: DatasetInfo, batch_size: int = 2, length: int = 5) -> torch.Tensor:
        """Random token ids (B, T) for a forward pass (the networks take no images)."""
        return torch.randint(dataset.num_classes, (batch_size, length))

    def decisions(self) -> tuple[Decision, ...]:
        """Node 0's activation, then per node ``l``: the node it reads, its activation (the
        controller's order)."""
        out = [Decision("node0.activation", ENAS_RNN_ACTIVATIONS)]
        for node in range(1, self.config.nodes):
            out += [Decision(f"node{node}.input", tuple(str(p) for p in range(node))),
                    Decision(f"node{node}.activation", ENAS_RNN_ACTIVATIONS)]
        return tuple(out)

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """Option indices of :meth:`decisions` (the code's arc)."""
        arch = self.check(arch)
        return tuple(int(v) for v in arch.arc().split())

    def decode(self, values: tuple[int, ...] | list[int]) -> EnasRnnCell:
        """The cell with these option indices (see :meth:`decisions`)."""
        names = decode_options(self.decisions(), values)
        return EnasRnnCell((names[0], *names[2::2]), tuple(int(p) for p in names[1::2]))

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` has this space's number of nodes."""
        return isinstance(arch, EnasRnnCell) and arch.nodes == self.config.nodes

    def parse(self, text: str) -> EnasRnnCell:
        """A cell from a published name (``ENAS``, ``ENAS_darts_genotypes``), JSON, or a ``fixed_arc``."""
        return load_record(
            text, EnasRnnCell, published=PUBLISHED, aliases={}, what="enas_rnn cell",
            json_form='{"activations": [name, ...], "inputs": [node, ...]}',
            form="a fixed_arc string (node 0's activation id, then 'input activation' per node)",
            looks_compact=lambda s: bool(s) and s.split()[0].isdigit(),
        )

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None,
    ) -> nn.Module:
        """The language model of ``arch`` (:class:`EnasRnnLanguageModel`).

        Args:
            arch: An :class:`EnasRnnCell`.
            dataset: ``num_classes`` is the vocabulary size (10,000 for PTB).
            channels: Embedding and hidden size (default: ``ptb_final.sh``'s 748).
            layers: The model has one recurrent layer (``--child_num_layers=1``): None or 1.
        """
        arch = expect_arch(arch, EnasRnnCell)
        if layers not in (None, 1):
            raise ConfigError(f"the enas_rnn language model has one recurrent layer; got layers={layers}")
        size = channels or EVAL_CHANNELS
        cfg = self.config
        cell = EnasRnnLayer(arch, nhid=size, dropoutx=cfg.dropoutx, dropouth=cfg.dropouth)
        return EnasRnnLanguageModel(cell=cell, ntoken=dataset.num_classes, dropoute=cfg.dropoute)

    @property
    def op_names(self) -> tuple[str, ...]:
        """The activations, in the code's ``func_idx`` order."""
        return ENAS_RNN_ACTIVATIONS


class EnasRnnLayer(RecurrentCell):
    """``_rhn_fixed``: the cell of a fixed arc (see the module's docstring); ``W0`` is the code's
    ``w_prev`` (rows: the input's, then the hidden state's; columns: ``h``, then ``t``), ``Ws[l - 1]``
    its ``w_skip[l]``."""

    def __init__(self, arch: EnasRnnCell, *, nhid: int, dropoutx: float, dropouth: float) -> None:
        super().__init__(ninp=nhid, nhid=nhid, steps=arch.nodes - 1, dropouth=dropouth, dropoutx=dropoutx)
        self.arch = arch
        self.functions = [activation(name) for name in arch.activations]
        self.loose_ends = arch.loose_ends
        bound = init_range(nhid)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def step(
        self, x: torch.Tensor, h_prev: torch.Tensor, x_mask: torch.Tensor | None, h_mask: torch.Tensor | None
    ) -> torch.Tensor:
        if x_mask is not None and h_mask is not None:
            xs = torch.cat([x * x_mask, h_prev * h_mask], dim=-1)  # (B, 2H)
        else:
            xs = torch.cat([x, h_prev], dim=-1)
        h, t = torch.split(xs.mm(self.W0), self.nhid, dim=-1)  # each (B, H)
        states = [h_prev + t.sigmoid() * (self.functions[0](h) - h_prev)]
        for node, p in enumerate(self.arch.inputs, start=1):
            prev = states[p]
            read = prev if h_mask is None else prev * h_mask
            h, t = torch.split(read.mm(self.Ws[node - 1]), self.nhid, dim=-1)
            states.append(prev + t.sigmoid() * (self.functions[node](h) - prev))
        return torch.stack([states[i] for i in self.loose_ends], -1).mean(-1)  # (B, H)


def word_mask(tokens: torch.Tensor, keep: float) -> torch.Tensor:
    """``_model``'s ``e_mask`` for token ids (B, T): each entry ``1 / keep`` or 0 (``floor(u +
    keep) / keep``), and also 0 where the same word was dropped earlier in the same sequence."""
    mask = torch.floor(torch.rand(tokens.shape, device=tokens.device) + keep) / keep  # (B, T)
    same = tokens[:, :, None] == tokens[:, None, :]  # (B, T, S): position t's word at s
    earlier = torch.ones(tokens.size(1), tokens.size(1), dtype=torch.bool, device=tokens.device).tril(-1)
    dropped_before = (same & earlier & (mask == 0)[:, None, :]).any(-1)  # (B, T)
    return mask.masked_fill(dropped_before, 0.0)


class EnasRnnLanguageModel(RnnLanguageModel):
    """``_model`` and ``_get_log_probs``: the embedding, one :class:`EnasRnnLayer`, and the decoder
    tied to the embedding without a bias; word dropout by :func:`word_mask`, no dropout on the
    embedding's or the cell's outputs.

    Args:
        cell: The layer.
        ntoken: Vocabulary size.
        dropoute: ``1 - child_lstm_e_keep``.
    """

    def __init__(self, *, cell: EnasRnnLayer, ntoken: int, dropoute: float) -> None:
        super().__init__(cell=cell, ntoken=ntoken, dropout=0.0, dropouti=0.0, dropoute=dropoute)
        self.decoder.register_parameter("bias", None)  # logits = h w_emb^T
        bound = init_range(cell.nhid)
        nn.init.uniform_(self.encoder.weight, -bound, bound)

    def run_dropped(
        self, tokens: torch.Tensor, hidden: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        emb = self.encoder(tokens)  # (B, T, H)
        if self.training and self.dropoute:
            emb = emb * word_mask(tokens, 1.0 - self.dropoute)[:, :, None]
        emb = emb.transpose(0, 1)  # (T, B, H), the layer's layout
        if hidden is None:
            hidden = emb.new_zeros(emb.size(1), self.nhid)
        outputs = self.cell(emb, hidden)  # (T, B, H)
        return F.linear(outputs, self.encoder.weight).permute(1, 2, 0), outputs, outputs  # (B, V, T)
