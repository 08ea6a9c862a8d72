"""ENAS: an LSTM controller trained with REINFORCE over a weight-sharing supernet (Pham et al.,
"Efficient Neural Architecture Search via Parameter Sharing", ICML 2018).

The controller emits the space's decisions one after another, as ``melodyguan/enas``'s
``src/cifar10/micro_controller.py`` does:

* an **operation** is sampled from ``c' * tanh(W h / T)`` (``h`` the LSTM output, ``T`` the
  temperature, ``c' = tanh_constant / op_tanh_reduce``), and its embedding is the next input; the
  softmax weights and embeddings are shared by every decision with the same options (ENAS shares
  ``w_soft`` and ``w_emb`` across all nodes and both cells);
* a node's **inputs** (spaces whose nodes pick earlier states: DARTS cells, the recurrent cell) are
  chosen by attention over the states before it: ``c * tanh(v^T tanh(W1 h_j + W2 h) / T)`` over
  the anchors ``h_j`` (zero for a cell's inputs, the LSTM output after each earlier node's
  decisions otherwise); the chosen anchor is the next input. A DARTS node takes two such choices,
  independent, so the same input twice is possible (index_1, index_2, then op_1, op_2);
* after a node's decisions one more LSTM step writes its anchor, and the next node starts again
  from the first input (``g_emb``).

REINFORCE follows the same file's ``build_trainer``: the reward of a sample is its score plus
``w * H``, no gradient, where ``H`` sums ``-p(a) log p(a)`` over the decisions it took (the code's
``log_prob * exp(-log_prob)`` of each chosen action, in all three controllers: not the
distributions' whole entropy), the baseline is a moving average of the
rewards started at 0 and updated before it is used, and the loss is ``-log p(a) * (R - b)``,
averaged over ``controller_batch`` samples (the code's ``controller_num_aggregate``). The score is
inherited-weight validation accuracy, or on language models ``c / perplexity`` with the validation
loss capped at 10 (``src/ptb/ptb_enas_controller.py``: ``80 / valid_ppl``).

A Tune scheduler (ASHA, HyperBand) may stop some candidates early, and a controller batch then
mixes budgets. The batch is learnt from at equal budget: every sample's score is its objective at
the smallest budget the batch's candidates reached, read from each one's learning curve
(:func:`raynas.types.scores_at_common_budget`); a batch trained to one budget
keeps its scores as they are. This cannot be made fair where the history is missing: the
language-model reward is read from ``valid_loss``, which the curve (the objective only) does not
record, so it stays at the final budget; a result without a curve keeps its own score; and the
moving-average baseline carries earlier batches' rewards, which may be at other budgets. The
derived architectures are ranked at equal budget too (:meth:`Enas.final_results`).

The search interleaves two kinds of training, as in the paper: the shared child (the supernet) is
trained on paths sampled from the policy (:meth:`Enas.sample_path`), and after each child epoch
``controller_steps`` controller steps of ``controller_batch`` candidates each are evaluated
(:attr:`Enas.evaluations_per_epoch`). After ``controller_epochs`` such epochs the final phase
derives as Section 2.2 of the paper does: ``derive_samples`` architectures sampled from the trained
policy, each scored, and the one with the highest reward is the search's answer
(:meth:`Enas.best`, :meth:`Enas.final_results`); candidates scored while the controller was
learning are not.

Nothing is kept per ask but the architecture (what the base records for candidates in flight):
a controller step recomputes the log-probabilities of its batch's actions under the current
policy, so a candidate asked again after a resume is learnt from exactly as it would have been.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.ops.enas import ENAS_OPS
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import (
    CellShapeLimits,
    SamplingStrategy,
    fitting_sample,
    rewards_at_common_budget,
)
from raynas.strategies.sampling.policy import choose
from raynas.types import Architecture, Decision, EvalResult, compare_at_equal_budget

# micro_controller.py's op-logit biases over ENAS's operations: b_soft's start, b_soft_no_learn.
ENAS_OP_BIAS = (10.0, 10.0, 0.0, 0.0, 0.0)
ENAS_OP_NO_LEARN = (0.25, 0.25, -0.25, -0.25, -0.25)

# ptb_enas_controller.py caps the validation loss at 10 before its reward 80 / exp(loss).
PPL_LOSS_CAP = 10.0


@dataclass(frozen=True)
class EnasConfig:
    """The controller and its REINFORCE training. The defaults are the authors' cell search as it
    runs: ``scripts/cifar10_micro_search.sh`` and the controller ``src/cifar10/main.py`` builds.
    The paper's text (Sec. 3.2) gives a tanh constant of 2.5, a temperature of 5 and a learning
    rate of 3.5e-4, which are ``scripts/ptb_search.sh``'s constant and temperature (with a rate of
    1e-3 and an entropy weight of 1e-3 there): where the code and the paper differ, the code.

    Attributes:
        lstm_size: Hidden size of the LSTM (64, ``main.py``).
        lstm_layers: Stacked LSTM layers, each fed the output of the one below; the top one's
            output is read (1: ``main.py`` builds the micro controller with ``lstm_num_layers=1``,
            its class default being 2).
        tanh_constant: ``c`` in ``c * tanh(logits / temperature)`` (1.1; 0 turns the squashing off).
        temperature: Divides the logits before the tanh (0: none, as the cell search's unset
            ``controller_temperature``; 1 is the same).
        op_tanh_reduce: Operation logits use ``tanh_constant / op_tanh_reduce`` (2.5; 1: the same
            as for inputs).
        learning_rate: Adam's learning rate for the controller (3.5e-3).
        entropy_weight: ``w``, weight of the entropy bonus added to each reward (1e-4).
        baseline_decay: Decay of the reward's moving-average baseline (0.99).
        reward_constant: ``c`` of the language-model reward ``c / perplexity`` (80).
        controller_batch: Candidates per controller step (their losses are averaged).
        controller_steps: Controller steps after each child (supernet) epoch.
        controller_epochs: Child epochs followed by controller training; set it to ``train.epochs``.
        derive_samples: Architectures sampled from the final policy and evaluated; the one with
            the highest reward is the answer.
        skip_target: On ENAS's macro space, the skip probability the controller's penalty pulls
            towards (0.4, ``scripts/cifar10_macro_search.sh``).
        skip_weight: The weight of that penalty, ``KL`` to ``skip_target`` added to the loss (0.8;
            0: none). Unused where no decision is a macro layer's skip.
        cell_shape: Bounds on the width and depth of the candidates' cells
            (:class:`CellShapeLimits`): a sample outside them is drawn again from the policy (the
            controller learns from evaluated samples only); the child's training paths are not
            bounded.
    """

    lstm_size: Annotated[int, Rule(ge=1)] = 64
    lstm_layers: Annotated[int, Rule(ge=1)] = 1
    tanh_constant: Annotated[float, Rule(ge=0, says="must be >= 0 (0: off)")] = 1.1
    temperature: Annotated[float, Rule(ge=0, says="must be >= 0 (0: off)")] = 0.0
    op_tanh_reduce: Annotated[float, Rule(gt=0)] = 2.5
    learning_rate: Annotated[float, Rule(gt=0)] = 3.5e-3
    entropy_weight: Annotated[float, Rule(ge=0)] = 1e-4
    baseline_decay: Annotated[float, Rule(ge=0, lt=1)] = 0.99
    reward_constant: Annotated[float, Rule(gt=0)] = 80.0
    controller_batch: Annotated[int, Rule(ge=1)] = 10
    controller_steps: Annotated[int, Rule(ge=1)] = 30
    controller_epochs: Annotated[int, Rule(ge=0)] = 10
    derive_samples: Annotated[int, Rule(ge=1)] = 100
    skip_target: Annotated[float, Rule(gt=0, lt=1)] = 0.4
    skip_weight: Annotated[float, Rule(ge=0)] = 0.8
    cell_shape: CellShapeLimits | None = None

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "controller_epochs == train['epochs']",
            "strategy.controller_epochs ({controller_epochs}) must equal train.epochs "
            "({train['epochs']}): ENAS trains its controller after every epoch of the shared child",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


# -- the controller's program: which LSTM steps it takes, in order --------------------------------


@dataclass(frozen=True)
class Step:
    """One step of the controller's program.

    Attributes:
        kind: ``op`` (sample an option), ``input`` (sample an earlier state by attention),
            ``anchors`` (a cell starts: ``size`` LSTM steps give its inputs' anchors), ``node``
            (a node's decisions are done: one LSTM step gives its anchor), ``layer`` (a macro
            layer's op is chosen: one LSTM step gives the query of its skips and its anchor) or
            ``skip`` (whether that layer skips from earlier layer ``edge``, by attention);
            ENAS's recurrent program: ``rnn_anchor`` (one LSTM step gives node ``size``'s anchor),
            ``rnn_input`` (node ``size``'s input among the earlier nodes, by attention).
        decision: The flat decision an ``op``, ``input`` or ``skip`` step sets.
        size: Options of an ``op``; states to choose from for ``input`` and ``anchors``; the
            layer's skips for ``layer`` and ``skip``.
        cell: For the inputs and operations of a two-input node: the architecture's field that
            holds the cell's edges (``normal``, ``reduce``, ``cell``), else empty.
        edge: The index of the edge in that field that the step sets.
        pair: An ``input`` step of a two-input node (its decision names the pair).
    """

    kind: Literal["op", "input", "anchors", "node", "layer", "skip", "rnn_anchor", "rnn_input"]
    decision: int = -1
    size: int = 0
    cell: str = ""
    edge: int = -1
    pair: bool = False

    @property
    def samples(self) -> bool:
        """Whether the step samples an action."""
        return self.kind in ("op", "input", "skip", "rnn_input")


def _inputs_of(decision: Decision) -> tuple[bool, int] | None:
    """``(pair, n)`` when ``decision`` picks inputs among ``n`` earlier states: two distinct ones
    (options ``"0+1"``, ``"0+2"``, ... of a ``*.inputs`` decision) or one (options ``"0"``..``"n-1"``
    of a ``*.input`` decision, or ``*.input_a``, ``*.input_b`` of a node taking two, the same one
    twice allowed: ENAS's own space); None for any other decision."""
    options = decision.options
    if decision.name.endswith(".inputs") and options and "+" in options[-1]:
        n = int(options[-1].split("+")[1]) + 1 if options[-1].split("+")[1].isdigit() else 0
        if n >= 2 and options == tuple(f"{a}+{b}" for a in range(n) for b in range(a + 1, n)):
            return True, n
    if decision.name.endswith((".input", ".input_a", ".input_b")) and options == tuple(
        str(j) for j in range(len(options))
    ):
        return False, len(options)
    return None


def _split(name: str) -> tuple[str, str]:
    """(node, cell) of a decision name: ``normal.node2.op_a`` -> (``normal.node2``, ``normal``)."""
    node = name.rsplit(".", 1)[0] if "." in name else name
    return node, (node.rsplit(".", 1)[0] if "." in node else "")


def _macro_plan(decisions: tuple[Decision, ...]) -> tuple[Step, ...] | None:
    """``general_controller.py``'s program (whole channels) where the decisions are ENAS's macro
    layout, ``layer<i>.op`` then ``layer<i>.skip<j>`` (``"0"``, ``"1"``) for every ``j < i``, layer
    after layer; None for any other layout."""
    steps: list[Step] = []
    at = layer = 0
    while at < len(decisions):
        if decisions[at].name != f"layer{layer}.op":
            return None
        steps += [Step("op", at, len(decisions[at].options)), Step("layer", size=layer)]
        for j in range(layer):
            k = at + 1 + j
            if k >= len(decisions) or (decisions[k].name, decisions[k].options) != (
                f"layer{layer}.skip{j}", ("0", "1")
            ):
                return None
            steps.append(Step("skip", k, layer, edge=j))
        at += 1 + layer
        layer += 1
    return tuple(steps) if steps else None


def _recurrent_plan(decisions: tuple[Decision, ...]) -> tuple[Step, ...] | None:
    """``ptb_enas_controller.py``'s program where the decisions are ENAS's recurrent layout,
    ``node0.activation`` then ``node<l>.input`` (``"0"``..``"l-1"``) and ``node<l>.activation`` for
    every later node; None for any other layout."""
    if not decisions or decisions[0].name != "node0.activation":
        return None
    steps = [Step("rnn_anchor", size=0), Step("op", 0, len(decisions[0].options))]
    at = node = 1
    while at < len(decisions):
        wanted = (f"node{node}.input", tuple(str(j) for j in range(node)), f"node{node}.activation")
        if at + 1 >= len(decisions) or (
            decisions[at].name, decisions[at].options, decisions[at + 1].name
        ) != wanted:
            return None
        steps += [Step("rnn_anchor", size=node), Step("rnn_input", at, node),
                  Step("op", at + 1, len(decisions[at + 1].options))]
        at += 2
        node += 1
    return tuple(steps)


def controller_plan(decisions: tuple[Decision, ...], *, pairs: bool = True) -> tuple[Step, ...]:
    """The controller's program for ``decisions``: attention steps for the decisions that pick a
    node's inputs (two for a pair of inputs when ``pairs``), operation steps for the others; on
    ENAS's macro and recurrent layouts, their controllers' programs (:func:`_macro_plan`,
    :func:`_recurrent_plan`).

    A cell whose nodes do not take their inputs among ``n0, n0 + 1, ...`` states in order (a
    layout the attention cannot follow) makes every decision an operation step.
    """
    special = _macro_plan(decisions) or _recurrent_plan(decisions)
    if special is not None:
        return special
    plain = tuple(Step("op", i, len(d.options)) for i, d in enumerate(decisions))
    steps: list[Step] = []
    states: dict[str, int] = {}  # cell -> states available to its next node
    nodes: dict[str, int] = {}  # cell -> nodes done
    open_node: tuple[str, str] | None = None  # (node, cell) whose anchor is still to write
    ops_in_node = 0
    for i, d in enumerate(decisions):
        node, cell = _split(d.name)
        if open_node is not None and open_node[0] != node:
            steps.append(Step("node"))
            states[open_node[1]] += 1
            nodes[open_node[1]] += 1
            open_node = None
        found = _inputs_of(d)
        if found is not None and (pairs or not found[0]):
            pair, n = found
            if cell not in states:
                steps.append(Step("anchors", size=n))
                states[cell], nodes[cell] = n, 0
            if states[cell] != n:
                return plain
            if pair:
                k = nodes[cell]
                steps += [Step("input", i, n, cell, 2 * k + s, True) for s in (0, 1)]
            else:
                steps.append(Step("input", i, n))
            open_node, ops_in_node = (node, cell), 0
        elif (
            open_node is not None and open_node[0] == node and ops_in_node < 2
            and steps[-1 - ops_in_node].pair
        ):
            k = nodes[cell]
            steps.append(Step("op", i, len(d.options), cell, 2 * k + ops_in_node))
            ops_in_node += 1
        else:
            steps.append(Step("op", i, len(d.options)))
            if open_node is not None:
                ops_in_node += 1
    if open_node is not None:
        steps.append(Step("node"))
    return tuple(steps)


class Controller(nn.Module):
    """The ENAS policy over a program of :class:`Step`.

    Args:
        plan: The steps, from :func:`controller_plan`.
        options: For every ``op`` step's decision, its option names (decisions with the same
            options share their softmax weights and embeddings).
        hidden: LSTM size.
        layers: Stacked LSTM layers (``stack_lstm`` in the authors' ``src/common_ops.py``).
        tanh_constant: ``c`` in ``c * tanh(logits / temperature)`` (0: no squashing).
        temperature: Divides the logits (0 or 1: none).
        op_tanh_reduce: Operation logits use ``tanh_constant / op_tanh_reduce``.
        first_cell: The decisions of the first cell sampled (ENAS's normal cell), whose op
            logits on ENAS's own operations get ``b_soft_no_learn``.
        skip_target: The skip probability the macro program's KL penalty pulls towards.

    On the macro program (``general_controller.py``, whole channels) a layer's op is sampled from
    the op head (without a bias: the code's ``w_soft`` only), its embedding feeds one more LSTM
    step whose output ``h`` is the layer's anchor and the query of its skips: skip ``j`` has the
    logits ``c * tanh([-u, u] / T)``, ``u = v^T tanh(W1 h_j + W2 h)``, each sampled on its own; the
    next layer starts from the chosen anchors' sum over ``1 +`` their number (layer 0: ``g_emb``).
    :attr:`skip_penalty` holds, after every call, each sequence's mean over the layers of
    ``sum sigmoid(z) * log(sigmoid(z) / [1 - t, t])`` over the layer's skip logits ``z``.

    On the recurrent program (``ptb_enas_controller.py``) every LSTM step starts from a zero state
    (the code never carries ``prev_c``, ``prev_h`` over); node ``l``'s first step gives its anchor
    ``h``, its input is sampled from ``c * tanh(v^T tanh(W1 h_j + W2 h) / T) - (l - j)^2 / 12`` over
    the earlier anchors, the chosen anchor over ``0.1 + l - j`` is the next step's input (node 0:
    ``g_emb``), whose output samples the activation (a head without a bias).
    """

    def __init__(
        self, plan: tuple[Step, ...], options: dict[int, tuple[str, ...]], *, hidden: int,
        tanh_constant: float, temperature: float, op_tanh_reduce: float = 1.0, layers: int = 1,
        first_cell: frozenset[int] = frozenset(), skip_target: float = 0.4,
    ) -> None:
        super().__init__()
        self.plan = plan
        self.tanh_constant = tanh_constant
        self.temperature = temperature
        self.op_tanh_reduce = op_tanh_reduce
        kinds: list[tuple[str, ...]] = []
        self.kind_of: dict[int, int] = {}  # op step's decision -> its shared head
        for step in plan:
            if step.kind == "op":
                names = options[step.decision]
                if names not in kinds:
                    kinds.append(names)
                self.kind_of[step.decision] = kinds.index(names)
        self.start = nn.Parameter(torch.zeros(1, hidden))  # g_emb: the first input of every node
        self.lstm = nn.ModuleList(nn.LSTMCell(hidden, hidden) for _ in range(layers))
        self.embeddings = nn.ModuleList(nn.Embedding(len(k), hidden) for k in kinds)  # w_emb
        # general_controller.py and ptb_enas_controller.py have w_soft only, no b_soft
        unbiased = any(step.kind in ("skip", "rnn_input") for step in plan)
        self.stateless = any(step.kind == "rnn_input" for step in plan)
        self.heads = nn.ModuleList(  # w_soft, b_soft
            nn.Linear(hidden, len(k), bias=not unbiased) for k in kinds
        )
        self.attention = any(step.kind in ("input", "skip", "rnn_input") for step in plan)
        self.log_skip_target = torch.tensor([1 - skip_target, skip_target]).log()
        self.skip_penalty = torch.zeros(0)
        if self.attention:
            self.attn_1 = nn.Linear(hidden, hidden, bias=False)  # keys: W1 h_j
            self.attn_2 = nn.Linear(hidden, hidden, bias=False)  # query: W2 h
            self.attn_v = nn.Linear(hidden, 1, bias=False)
        for p in self.parameters():  # the paper initialises uniformly in [-0.1, 0.1]
            nn.init.uniform_(p, -0.1, 0.1)
        # On ENAS's own operations (raynas.ops.enas: the code's op_id order) the op head is
        # micro_controller.py's: its bias b_soft starts at 10 on both separable convolutions, and
        # the first cell's op logits (its use_bias sampler: the normal cell) get b_soft_no_learn
        # added after the squashing.
        self.no_learn: dict[int, torch.Tensor] = {}
        for k, names in enumerate(kinds):
            if names == ENAS_OPS:
                with torch.no_grad():
                    self.heads[k].bias.copy_(torch.tensor(ENAS_OP_BIAS))
        for step in plan:
            if step.kind == "op" and step.decision in first_cell and options[step.decision] == ENAS_OPS:
                self.no_learn[step.decision] = torch.tensor(ENAS_OP_NO_LEARN)

    @property
    def actions(self) -> int:
        """Actions per sample (one per ``op`` and ``input`` step)."""
        return sum(step.samples for step in self.plan)

    def squash(self, u: torch.Tensor, constant: float) -> torch.Tensor:
        """``constant * tanh(u / temperature)`` (either part off when 0)."""
        if self.temperature and self.temperature != 1:
            u = u / self.temperature
        return constant * torch.tanh(u) if constant else u

    def step(
        self, x: torch.Tensor, state: list[tuple[torch.Tensor, torch.Tensor]] | None
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]]]:
        """One step of the stacked LSTM on ``x`` (B, hidden): the top layer's output (B, hidden)
        and every layer's new ``(h, c)``."""
        new = []
        for i, cell in enumerate(self.lstm):
            h, c = cell(x, None if state is None else state[i])
            new.append((h, c))
            x = h
        return x, new

    def forward(
        self, actions: torch.Tensor | None = None, *, batch: int = 1,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sample ``batch`` sequences, or score the given ones (teacher forcing).

        Args:
            actions: (B, A) actions to score, or None to sample.
            batch: How many sequences to sample when ``actions`` is None.
            generator: The random stream samples are drawn from.

        Returns:
            The actions (B, A), their log-probabilities (B,) and ``H`` (B,): ``-p(a) log p(a)``
            summed over each sequence's actions (the code's ``sample_entropy``).
        """
        n = actions.shape[0] if actions is not None else batch
        g = self.start.expand(n, -1)  # (B, hidden)
        x, state = g, None
        anchors: list[torch.Tensor] = []  # (B, hidden) each: what a chosen input feeds the LSTM
        keys: list[torch.Tensor] = []  # (B, hidden) each: W1 of the anchor's LSTM output
        chosen, log_prob, entropy = [], g.new_zeros(n), g.new_zeros(n)
        penalties: list[torch.Tensor] = []  # (B,) each: a macro layer's skip KL
        layer_h, mixed, taken = g, g, g.new_zeros(n)  # a macro layer's query, chosen anchors' sum, count
        for step in self.plan:
            if step.kind == "skip":  # layer_h: the layer's LSTM output (its "layer" step's)
                u = self.attn_v(torch.tanh(keys[step.edge] + self.attn_2(layer_h))).squeeze(-1)  # (B,)
                z = self.squash(torch.stack([-u, u], -1), self.tanh_constant)  # (B, 2)
                log_p = torch.log_softmax(z, dim=-1)
                a, log_p_a = choose(log_p, actions, len(chosen), generator)  # (B,) each
                chosen.append(a)
                log_prob = log_prob + log_p_a
                entropy = entropy - log_p_a.exp() * log_p_a
                p_skip = torch.sigmoid(z)  # the code's skip_prob: a sigmoid of each logit
                penalties[-1] = penalties[-1] + (p_skip * (p_skip.log() - self.log_skip_target)).sum(-1)
                mixed, taken = mixed + a[:, None] * anchors[step.edge], taken + a
                if step.edge == step.size - 1:  # the layer's last skip: its anchor, the next input
                    x = mixed / (1.0 + taken)[:, None]
                    anchors.append(layer_h)
                    keys.append(self.attn_1(layer_h))
                continue
            if step.kind == "rnn_input":  # layer_h: the node's anchor, from its "rnn_anchor" step
                k = torch.stack(keys[: step.size], 1)  # (B, l, hidden)
                u = self.attn_v(torch.tanh(k + self.attn_2(layer_h)[:, None])).squeeze(-1)  # (B, l)
                distance = step.size - torch.arange(step.size, device=u.device)  # l - j
                log_p = torch.log_softmax(self.squash(u, self.tanh_constant) - distance**2 / 12.0, dim=-1)
                a, log_p_a = choose(log_p, actions, len(chosen), generator)  # (B,) each
                chosen.append(a)
                log_prob = log_prob + log_p_a
                entropy = entropy - log_p_a.exp() * log_p_a
                picked = torch.stack(anchors[: step.size], 1)[torch.arange(n), a]  # (B, hidden)
                x = picked / (0.1 + (step.size - a)).to(picked.dtype)[:, None]
                continue
            h, state = self.step(x, None if self.stateless else state)  # (B, hidden)
            if step.kind == "rnn_anchor":
                anchors.append(h)
                keys.append(self.attn_1(h))
                layer_h, x = h, (g if step.size == 0 else x)
                continue
            if step.kind == "layer":
                if step.size == 0:  # the first layer: no skips; the next one starts from g_emb
                    anchors.append(h)
                    keys.append(self.attn_1(h))
                    x = g
                else:
                    layer_h, mixed, taken = h, torch.zeros_like(h), h.new_zeros(n)
                    penalties.append(h.new_zeros(n))
                continue
            if step.kind == "anchors":  # a cell's inputs: zero anchors, keys from the LSTM
                anchors, keys = [torch.zeros_like(h)], [self.attn_1(h)]
                for _ in range(step.size - 1):
                    h, state = self.step(x, state)
                    anchors.append(torch.zeros_like(h))
                    keys.append(self.attn_1(h))
                continue
            if step.kind == "node":  # the node's anchor; the next node starts from g_emb
                anchors.append(h)
                keys.append(self.attn_1(h))
                x = g
                continue
            if step.kind == "input":
                k = torch.stack(keys[: step.size], 1)  # (B, n, hidden)
                u = self.attn_v(torch.tanh(k + self.attn_2(h)[:, None])).squeeze(-1)  # (B, n)
                log_p = torch.log_softmax(self.squash(u, self.tanh_constant), dim=-1)
            else:
                head = self.kind_of[step.decision]
                u = self.heads[head](h)  # (B, options)
                u = self.squash(u, self.tanh_constant / self.op_tanh_reduce)
                if step.decision in self.no_learn:
                    u = u + self.no_learn[step.decision]
                log_p = torch.log_softmax(u, dim=-1)
            t = len(chosen)
            a, log_p_a = choose(log_p, actions, t, generator)  # (B,) each
            chosen.append(a)
            log_prob = log_prob + log_p_a
            entropy = entropy - log_p_a.exp() * log_p_a
            if step.kind == "input":
                x = torch.stack(anchors[: step.size], 1)[torch.arange(n), a]  # (B, hidden)
            else:
                x = self.embeddings[self.kind_of[step.decision]](a)  # (B, hidden)
        self.skip_penalty = torch.stack(penalties, 1).mean(1) if penalties else g.new_zeros(n)
        return torch.stack(chosen, 1), log_prob, entropy


@STRATEGIES.register("enas", config=EnasConfig)
class Enas(SamplingStrategy):
    """ENAS's controller: sample from the policy, learn from the candidates' rewards, then derive.

    Args:
        config: Controller, REINFORCE and schedule settings.
        space: The space to search.
        seed: Seeds the controller's initial weights and its samples.
    """

    name = "enas"
    needs_supernet = True

    def __init__(self, config: EnasConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.plan = controller_plan(self.decisions, pairs=self._edges_settable())
        options = {i: d.options for i, d in enumerate(self.decisions)}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.controller = Controller(
                self.plan, options, hidden=config.lstm_size, tanh_constant=config.tanh_constant,
                temperature=config.temperature, op_tanh_reduce=config.op_tanh_reduce,
                layers=config.lstm_layers,
                first_cell=frozenset(i for i, d in enumerate(self.decisions) if d.name.startswith("normal.")),
                skip_target=config.skip_target,
            )
        self.optimizer = torch.optim.Adam(self.controller.parameters(), lr=config.learning_rate)
        self.generator = torch.Generator().manual_seed(seed)
        self.baseline = 0.0  # the authors' code starts the moving average at 0
        self.consumed = 0  # results of the history already used for controller steps
        self.constrain_cells(config.cell_shape)

    def _edges_settable(self) -> bool:
        """Whether the space's architectures keep each two-input cell as a tuple of (op, input)
        edges in a field named after the cell (DARTS genotypes, Auto-DeepLab cells): only then can
        a node take the same input twice, as ENAS's nodes can."""
        cells = {_split(d.name)[1] for d in self.decisions if (f := _inputs_of(d)) is not None and f[0]}
        if not cells:
            return False
        arch = self.space.decode([0] * len(self.decisions))
        return dataclasses.is_dataclass(arch) and all(
            isinstance(getattr(arch, cell, None), tuple) for cell in cells
        )

    @property
    def evaluations_per_epoch(self) -> int:  # type: ignore[override]
        """Candidates evaluated after each child epoch: ``controller_steps * controller_batch``."""
        return self.config.controller_steps * self.config.controller_batch

    @property
    def search_evaluations(self) -> int:
        """Candidates of the controller-training phase, before the final derivation."""
        return self.config.controller_epochs * self.evaluations_per_epoch

    def check_search(self, *, supernet_epochs: int) -> None:
        if self.config.controller_epochs != supernet_epochs:
            raise ConfigError(
                f"strategy.controller_epochs ({self.config.controller_epochs}) must equal train.epochs "
                f"({supernet_epochs}): ENAS trains its controller after every epoch of the shared child"
            )

    # -- architectures <-> actions -------------------------------------------------------------

    def decode_actions(self, actions: list[int] | tuple[int, ...]) -> Architecture:
        """The architecture a controller sample stands for; a two-input node's edges keep the
        order they were sampled in, the same input twice included."""
        values = [0] * len(self.decisions)
        edges: dict[str, dict[int, list[Any]]] = {}
        sampling = [s for s in self.plan if s.samples]
        for step, a in zip(sampling, actions, strict=True):
            if step.cell:  # an edge of a two-input node: set below
                edge = edges.setdefault(step.cell, {}).setdefault(step.edge, [None, None])
                if step.kind == "input":
                    edge[1] = int(a)
                else:
                    edge[0] = self.decisions[step.decision].options[int(a)]
            else:
                values[step.decision] = int(a)
        arch = self.space.decode(values)  # pair decisions at "0+1": replaced next
        if not edges:
            return arch
        fields = {}
        for cell, chosen in edges.items():
            cell_edges = list(getattr(arch, cell))
            for index, (op, source) in chosen.items():
                cell_edges[index] = (op, source)
            fields[cell] = tuple(cell_edges)
        return dataclasses.replace(arch, **fields)  # type: ignore[type-var]

    def encode_actions(self, arch: Architecture) -> list[int]:
        """The controller actions that sample ``arch`` (inverse of :meth:`decode_actions`)."""
        pair_cells = {s.cell for s in self.plan if s.cell}
        distinct = arch
        if pair_cells:  # the flat view takes two distinct inputs: give it some, read edges below
            fields = {}
            for cell in pair_cells:
                cell_edges = list(getattr(arch, cell))
                for k in range(0, len(cell_edges), 2):
                    (_, a), (op_b, b) = cell_edges[k], cell_edges[k + 1]
                    if a == b:
                        cell_edges[k + 1] = (op_b, 1 if a == 0 else 0)
                fields[cell] = tuple(cell_edges)
            distinct = dataclasses.replace(arch, **fields)  # type: ignore[type-var]
        values = self.space.encode(distinct)
        out = []
        for step in self.plan:
            if not step.samples:
                continue
            if step.cell:
                op, source = getattr(arch, step.cell)[step.edge]
                options = self.decisions[step.decision].options
                out.append(source if step.kind == "input" else options.index(op))
            else:
                out.append(values[step.decision])
        return out

    # -- sampling -------------------------------------------------------------------------------

    def _sample(self) -> Architecture:
        with torch.no_grad():
            actions, _, _ = self.controller(batch=1, generator=self.generator)
        return self.decode_actions([int(v) for v in actions[0]])

    def sample_path(self) -> Architecture:
        """A path drawn from the policy: the shared child trains on the controller's samples."""
        return self._sample()

    def propose(self) -> Architecture | None:
        total = self.search_evaluations + self.config.derive_samples
        if self.asked >= total:
            return None
        if self.asked >= self.search_evaluations and len(self.history) < self.search_evaluations:
            return None  # derive from the final policy: wait for the last controller step
        return fitting_sample(self, self._sample, what="enas's controller")

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        batch = self.config.controller_batch
        while (
            len(self.history) - self.consumed >= batch
            and self.consumed + batch <= self.search_evaluations
        ):
            self._step(self.history[self.consumed : self.consumed + batch])
            self.consumed += batch

    # -- REINFORCE ------------------------------------------------------------------------------

    def reward(self, result: EvalResult, score: float | None = None) -> float:
        """ENAS's reward of an evaluation: ``reward_constant / perplexity`` for a language model
        (the validation loss capped at 10, as ``ptb_enas_controller.py``), else the score
        (validation accuracy; ``score`` in its place, the score at another budget, when given);
        0 for a failed evaluation."""
        metrics = result.metrics
        if "valid_ppl" in metrics and "valid_loss" in metrics:
            loss = metrics["valid_loss"]  # the final budget's: the curve records the objective only
            if not math.isfinite(loss):
                return 0.0
            return self.config.reward_constant / math.exp(min(loss, PPL_LOSS_CAP))
        score = result.score if score is None else score
        return score if math.isfinite(score) else 0.0

    def advantages(self, rewards: list[float]) -> torch.Tensor:
        """``R - b`` for each reward in turn, the moving-average baseline ``b`` (started at 0)
        updated with ``R`` first, as the authors' code does."""
        out = []
        decay = self.config.baseline_decay
        for r in rewards:
            self.baseline = decay * self.baseline + (1 - decay) * r
            out.append(r - self.baseline)
        return torch.tensor(out)

    def policy_loss(self, results: list[EvalResult]) -> torch.Tensor:
        """REINFORCE's loss over a batch, mean of ``-log p(a_i) * (R_i + w H_i - b_i)`` (the
        entropy ``H_i`` of sample i's decisions enters its reward without a gradient), plus on the
        macro space ``skip_weight`` times the mean skip penalty (``general_controller.py``'s
        ``build_trainer``); updates the baseline."""
        actions = torch.tensor([self.encode_actions(r.architecture) for r in results])  # (B, A)
        _, log_prob, entropy = self.controller(actions)
        bonus = self.config.entropy_weight * entropy.detach()  # (B,)
        # At the batch's common budget.
        rewards = torch.tensor(rewards_at_common_budget(self.reward, results)) + bonus
        advantages = self.advantages(rewards.tolist())
        loss = (-log_prob * advantages).mean()
        if any(step.kind == "skip" for step in self.plan) and self.config.skip_weight:
            loss = loss + self.config.skip_weight * self.controller.skip_penalty.mean()
        return loss

    def _step(self, results: list[EvalResult]) -> None:
        loss = self.policy_loss(results)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    # -- the answer ------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return len(self.history) >= self.search_evaluations + self.config.derive_samples

    def final_results(self) -> list[EvalResult]:
        """The architectures derived from the trained policy, highest reward first (the paper's
        Section 2.2); before the derivation has results, every result so far. Where their
        budgets differ (Tune stopped some early), they are ranked at equal budget instead, by
        the objective (:func:`compare_at_equal_budget`: each pair at the budget both reached;
        on a language model, the objective's curve rather than the perplexity reward)."""
        derived = self.history[self.search_evaluations :] or self.history
        if len({r.budget for r in derived}) > 1:
            return sorted(derived, key=functools.cmp_to_key(compare_at_equal_budget), reverse=True)
        return sorted(derived, key=self.reward, reverse=True)

    def best(self) -> EvalResult | None:
        """The derived architecture with the highest reward (before the derivation has results,
        the best result so far)."""
        ranked = self.final_results()
        return ranked[0] if ranked else None

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "controller": self.controller.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "baseline": self.baseline,
            "consumed": self.consumed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the policy, its optimiser and random stream; the candidates in flight at the
        save are asked again first, in the same order (see :meth:`SamplingStrategy.load_state_dict`)."""
        super().load_state_dict(state)
        self.controller.load_state_dict(state["controller"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.baseline = float(state["baseline"] or 0.0)
        self.consumed = int(state["consumed"])
