"""Progressive search with a learned predictor: PNAS (Liu et al., "Progressive Neural Architecture
Search", ECCV 2018), its stages evaluated in parallel.

PNAS grows cells one block at a time: every expansion of the current beam is scored by a surrogate
trained on the cells evaluated so far, the top K are trained and evaluated, and the surrogate is
refit. There are two ways to grow, chosen by the space:

**Cells, block by block (PNAS).** On a space whose every decision belongs to a two-input node of a
cell (the DARTS cell: per node its inputs, then an op on each; see
:func:`raynas.spaces.darts_genotype.cell_decisions`), a candidate at stage ``b`` is a cell of ``b``
blocks (b = 1..B), its output the concatenation of its blocks, used as every cell of the network
(PNAS searches one cell; its reduction cells are the same cell with stride 2, so the normal and
the reduction cell of a candidate are equal). The stages follow PNAS's Algorithm 1:

- stage 1: ``S_1`` is every 1-block cell, all evaluated (PNAS trains all of them);
- stage ``b`` (2..B): ``S'_b`` is every one-block expansion of *every* cell of ``S_{b-1}`` (after
  stage 1 that is every 1-block cell, not only the best ``beam_size``), ranked by the predictor;
  ``S_b`` is its top ``beam_size``, and those of them not evaluated yet are asked (in cell mode
  that is all of them: a cell of ``b`` blocks is first met at stage ``b``; one told without
  being asked is not evaluated again, but it joins ``S_b`` only if the predictor ranks it in);
- the beam expanded next is ``S_b`` whole: measured scores only train the predictor (refit on
  every result) and pick the answer, the best ``B``-block cell by measured score.

The predictor reads a one-hot encoding of the blocks a cell has (none for blocks it has not:
PNAS's MLP predictor also reads cells of any size).

**Groups of decisions (other spaces).** The "blocks" are groups of a space's decisions, filled in
order:

- a space may offer ``decision_groups()``, a tuple of tuples of decision indices that covers every
  decision once; the default is one decision per group;
- decisions not filled yet take option 0, which spaces order as the neutral choice (NAS-Bench-201's
  ``none``), so every partial architecture is a complete, evaluable one;
- at stage ``s`` the expansions of every beam member (all option combinations of group ``s``)
  that were not evaluated yet are ranked by the predictor (a small MLP regressor on the one-hot
  encoding, refit from scratch on every result so far; a random order before there are two
  results), and the top ``beam_size`` are asked (evaluated in parallel by the driver);
- once they are all told, the beam is the ``beam_size`` best of the stage's expansions by score
  (those asked and those evaluated before, such as the parents themselves: option 0 leaves a
  group unset), and the next group is expanded. After the last group the search is done.

Candidates a Tune scheduler stopped early are ranked at equal budget
(:func:`raynas.types.compare_at_equal_budget`), and the predictor learns from scores at equal
budget: its target for each candidate is the objective at the smallest budget every candidate
evaluated so far reached, read from the candidate's learning curve
(:func:`raynas.types.scores_at_common_budget`; the scores as they are when every
candidate has one budget). A candidate without a curve (inherited weights, a proxy, a trial whose
epochs were not all reported) keeps its own score: it cannot be judged at equal budget. PNAS's
ensemble of five predictors and its LSTM predictor are not reproduced (one MLP).
EPNAS (Zhou et al., 2019), whose REINFORCE-trained policy grows networks progressively under
resource targets, is the ``epnas`` strategy (:mod:`raynas.strategies.sampling.epnas`).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ConfigError
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import CellShapeLimits, SamplingStrategy
from raynas.types import Architecture, Decision, EvalResult, compare_at_equal_budget, scores_at_common_budget

Values = tuple[int, ...]


@dataclass(frozen=True)
class ProgressiveConfig:
    """Beam width and the predictor (PNAS: K=256 cells per stage, an ensemble of 5 LSTMs/MLPs).

    Attributes:
        beam_size: K, candidates evaluated per stage after the first. Cells grown block by block
            (PNAS): the K cells the predictor ranks first are the beam expanded next, whatever
            their measured scores; the first stage evaluates, and its beam is, every 1-block cell.
            Groups of decisions: the beam is the best K of the stage's expansions by score.
        predictor_hidden: Hidden units of the MLP predictor.
        predictor_steps: Full-batch Adam steps each time the predictor is refit.
        predictor_learning_rate: Adam's learning rate for the predictor.
        max_expansions: Upper bound on the expansions ranked per stage (more is an error that
            names the block or group). Cells: stage 2 expands every 1-block cell, so its count
            is (1-block cells) x (block 2's options) whatever ``beam_size`` is; on the default
            ``darts`` space (7 ops, 4 nodes) that is 49 x 147 = 7,203, then 8 x 294 = 2,352 and
            8 x 490 = 3,920 at stages 3 and 4 (``beam_size`` 8). PNAS's K = 256 makes stage 4
            256 x 490 = 125,440: raise this with it.
        cell_shape: Bounds on the width and depth of the cells (:class:`CellShapeLimits`; cells
            grown block by block only). A block never narrows or shallows a cell, so expansions
            past a maximum are dropped at every stage (with all their descendants); the minimums
            hold for the cells of the last stage, the answers (a cell of fewer blocks is a step on
            the way, smaller by construction).
    """

    beam_size: Annotated[int, Rule(ge=1)] = 8
    predictor_hidden: Annotated[int, Rule(ge=1)] = 64
    predictor_steps: Annotated[int, Rule(ge=1)] = 200
    predictor_learning_rate: Annotated[float, Rule(gt=0)] = 1e-2
    max_expansions: Annotated[int, Rule(ge=1)] = 100_000
    cell_shape: CellShapeLimits | None = None

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not (evaluator == 'supernet' and train['epochs'] and space_is['two_input_cells'])",
            "strategy 'progressive' grows cells block by block (PNAS), and a one-shot supernet "
            "has a fixed number of nodes: use the scratch or training_free evaluator",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


class Predictor(nn.Module):
    """A small MLP regressor from the one-hot encoding of an architecture to its score.

    Args:
        sizes: The number of options of every decision.
        hidden: Hidden units.
    """

    def __init__(self, sizes: tuple[int, ...], hidden: int) -> None:
        super().__init__()
        self.offsets = [0, *itertools.accumulate(sizes)][:-1]
        self.net = nn.Sequential(nn.Linear(sum(sizes), hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def one_hot(self, values: list[Values]) -> torch.Tensor:
        """(N, sum of option counts): a 1 at each decision's chosen option (a cell of fewer
        blocks sets the first decisions only)."""
        x = torch.zeros(len(values), self.net[0].in_features)
        for row, v in enumerate(values):
            x[row, [o + i for o, i in zip(self.offsets[: len(v)], v, strict=True)]] = 1.0
        return x

    def forward(self, values: list[Values]) -> torch.Tensor:
        return self.net(self.one_hot(values)).squeeze(1)  # (N,)


@dataclass(frozen=True)
class CellLayout:
    """Where a space keeps its two-input cells, for growing them block by block.

    Attributes:
        cells: The architecture's fields that hold each cell's edges (``normal``, ``reduce``).
        ops: The operations a block may apply (the same for every node).
        blocks: B, nodes per cell.
    """

    cells: tuple[str, ...]
    ops: tuple[str, ...]
    blocks: int

    def sizes(self) -> tuple[int, ...]:
        """Options of every block's three decisions: its pair of inputs among the ``b + 1`` states
        before block ``b`` (0-based), then the op on each."""
        n = len(self.ops)
        return tuple(v for b in range(self.blocks) for v in ((b + 2) * (b + 1) // 2, n, n))


def cell_layout(decisions: tuple[Decision, ...], sample: Architecture) -> CellLayout | None:
    """The layout of a space whose every decision is a two-input node's (``<cell>.<node>.inputs``,
    ``op_a``, ``op_b``), every cell of the same size and ops, its architectures dataclasses with a
    field of edges per cell (``sample``: one of them); None for any other space."""
    if not decisions or len(decisions) % 3 or not dataclasses.is_dataclass(sample):
        return None
    nodes: dict[str, list[tuple[Decision, ...]]] = {}
    for i in range(0, len(decisions), 3):
        inputs, op_a, op_b = decisions[i : i + 3]
        node = inputs.name.rsplit(".", 1)[0]
        cell = node.split(".", 1)[0]
        if (
            "." not in node or not inputs.name.endswith(".inputs")
            or op_a.name != f"{node}.op_a" or op_b.name != f"{node}.op_b" or op_a.options != op_b.options
        ):
            return None
        k = len(nodes.setdefault(cell, []))
        if inputs.options != tuple(f"{a}+{b}" for a in range(k + 2) for b in range(a + 1, k + 2)):
            return None
        nodes[cell].append((inputs, op_a, op_b))
    cells = tuple(nodes)
    sizes = {len(v) for v in nodes.values()}
    ops = {d[1].options for v in nodes.values() for d in v}
    if len(sizes) != 1 or len(ops) != 1:
        return None
    if not all(isinstance(getattr(sample, c, None), tuple) for c in cells):
        return None
    return CellLayout(cells=cells, ops=ops.pop(), blocks=sizes.pop())


@STRATEGIES.register("progressive", config=ProgressiveConfig)
class Progressive(SamplingStrategy):
    """Beam search over groups of decisions, ranked by a predictor refit on every result.

    Args:
        config: Beam width and predictor settings.
        space: The space to search (``decision_groups()`` is used if it has one).
        seed: Seeds the first stage's random ranking and the predictor's initial weights.
    """

    name = "progressive"

    def __init__(self, config: ProgressiveConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        self.seed = seed
        # PNAS's cells, grown block by block, on spaces of two-input cells; else groups of decisions.
        self.layout = cell_layout(self.decisions, self.space.decode([0] * len(self.decisions)))
        if self.layout is not None:
            self.sizes = self.layout.sizes()
            self.groups = tuple((3 * b, 3 * b + 1, 3 * b + 2) for b in range(self.layout.blocks))
            self.beam: list[Values] = [()]  # the empty cell; stage b adds block b
        else:
            self.sizes = tuple(len(d.options) for d in self.decisions)
            self.groups = self.stage_groups()
            self.beam = [(0,) * len(self.decisions)]
        self.stage = 0  # the group being expanded
        # This stage's candidates for the next beam (evaluated expansions and those asked) and
        # those still to ask.
        self.candidates: list[Values] | None = None
        self.to_ask: list[Values] = []
        self.scores: dict[Values, float] = {}
        self.results: dict[Values, EvalResult] = {}  # each candidate's best result
        if config.cell_shape is not None and self.layout is None:
            raise ConfigError(
                "strategy.cell_shape: progressive bounds cells it grows block by block, and "
                f"{type(self.space).__name__}'s decisions are not two-input cells; remove it"
            )
        self.constrain_cells(config.cell_shape)

    def _expansions(self) -> list[Values]:
        group = self.groups[self.stage]
        options = math.prod(self.sizes[i] for i in group)
        count = len(self.beam) * options
        if count > self.config.max_expansions:
            limit = f"more than strategy.max_expansions ({self.config.max_expansions})"
            if self.layout is None:
                names = ", ".join(self.decisions[i].name for i in group)
                raise ConfigError(
                    f"decision group ({names}) has {count} expansions of the beam, {limit}: "
                    "raise it or lower beam_size"
                )
            fix = ("every 1-block cell is expanded (PNAS), whatever beam_size is: raise it or use "
                   "fewer primitives" if self.stage == 1 else "raise it or lower beam_size")
            raise ConfigError(
                f"block {self.stage + 1} has {count} expansions ({len(self.beam)} cells of "
                f"{self.stage} block(s) x {options} ways to add it), {limit}: {fix}"
            )
        out: list[Values] = []
        seen: set[Values] = set()
        for parent in self.beam:
            for options in itertools.product(*(range(self.sizes[i]) for i in group)):
                if self.layout is not None:  # a cell of one more block
                    out.append(parent + options)
                    continue
                child = list(parent)
                for i, option in zip(group, options, strict=True):
                    child[i] = option
                if tuple(child) not in seen:
                    seen.add(tuple(child))
                    out.append(tuple(child))
        return out

    def predictor(self) -> Predictor | None:
        """The predictor fit on every candidate's finite score so far, at equal budget (None with
        fewer than two): the score of each candidate's best result at the smallest budget they
        all reached (:func:`scores_at_common_budget`)."""
        targets = scores_at_common_budget(list(self.results.values()))
        data = [(v, s) for v, s in zip(self.results, targets, strict=True) if math.isfinite(s)]
        if len(data) < 2:
            return None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000 + self.stage)  # refits do not depend on ask order
            model = Predictor(self.sizes, self.config.predictor_hidden)
        y = torch.tensor([s for _, s in data])  # (N,)
        y = (y - y.mean()) / y.std().clamp_min(1e-8)
        x = model.one_hot([v for v, _ in data])  # (N, sum of option counts)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.config.predictor_learning_rate)
        for _ in range(self.config.predictor_steps):
            optimizer.zero_grad()
            loss = nn.functional.mse_loss(model.net(x).squeeze(1), y)
            loss.backward()
            optimizer.step()
        return model.eval()

    def _rank(self, new: list[Values]) -> list[Values]:
        """Expansions, best predicted first (in random order before any predictor)."""
        model = self.predictor()
        if model is None:
            new = list(new)
            self.rng.shuffle(new)
            return new
        with torch.no_grad():
            predicted = model(new).tolist()  # (N,)
        order = sorted(range(len(new)), key=lambda i: -predicted[i])  # stable: ties keep their order
        return [new[i] for i in order]

    def _start_stage(self) -> None:
        """Choose the stage's candidates and queue those not evaluated yet.

        Cells (PNAS's Algorithm 1): stage 1's are every 1-block cell; stage ``b``'s, ``S_b``, the
        top ``beam_size`` of every expansion by the predictor (one evaluated already stays in
        ``S_b`` without being asked again if it ranks there). Groups: the top ``beam_size``
        unevaluated expansions are asked, and the evaluated ones compete as they are.
        """
        expansions = self._expansions()
        if self.shape_limits is not None:  # maximums at every stage, minimums at the last
            last = self.stage == len(self.groups) - 1
            expansions = [v for v in expansions
                          if self.shape_violation(self.decode(v), upper_only=not last) == 0]
        if self.layout is None:
            known = [v for v in expansions if v in self.scores]
            asked = self._rank([v for v in expansions if v not in self.scores])[: self.config.beam_size]
            self.candidates = known + asked
        else:
            self.candidates = self._rank(expansions)
            if self.stage > 0:  # S_1 is every 1-block cell
                self.candidates = self.candidates[: self.config.beam_size]
        self.to_ask = [v for v in self.candidates if v not in self.scores]

    def _finish_stages(self) -> None:
        """Close every stage whose candidates are all told and open the next."""
        while self.stage < len(self.groups):
            if self.candidates is None:
                self._start_stage()
            assert self.candidates is not None
            if not all(v in self.scores for v in self.candidates):
                return
            # Best first, at equal budget where Tune stopped some early (stable for ties).
            ranked = sorted(self.candidates, key=functools.cmp_to_key(
                lambda a, b: compare_at_equal_budget(self.results[b], self.results[a])
            ))
            # Cells: S_b is expanded whole (PNAS); groups: the best beam_size by score.
            self.beam = ranked if self.layout is not None else ranked[: self.config.beam_size]
            self.stage += 1
            self.candidates = None

    def propose(self) -> Architecture | None:
        self._finish_stages()
        if not self.to_ask:
            return None  # the stage's candidates are being evaluated, or the search is over
        return self.decode(self.to_ask.pop(0))

    def tell(self, result: EvalResult) -> None:
        super().tell(result)
        self._note(result)
        self._finish_stages()

    def _note(self, result: EvalResult) -> None:
        values = self.encode(result.architecture)
        self.scores[values] = max(result.score, self.scores.get(values, -math.inf))
        known = self.results.get(values)
        if known is None or compare_at_equal_budget(result, known) > 0:
            self.results[values] = result


    def check_search(self, *, supernet_epochs: int) -> None:
        if self.layout is not None and supernet_epochs:
            raise ConfigError(
                "strategy 'progressive' grows cells block by block (PNAS), and a one-shot supernet "
                "has a fixed number of nodes: use the scratch or training_free evaluator"
            )

    def decode(self, values: Values) -> Architecture:
        """The architecture of a candidate: a cell of ``len(values) / 3`` blocks used as every
        cell, or the space's decoding of a full vector of decisions."""
        if self.layout is None:
            return self.space.decode(values)
        layout, edges = self.layout, []
        for b in range(len(values) // 3):
            pair, op_a, op_b = values[3 * b : 3 * b + 3]
            first, second = (int(v) for v in self.decisions[3 * b].options[pair].split("+"))
            edges += [(layout.ops[op_a], first), (layout.ops[op_b], second)]
        concat = tuple(range(2, 2 + len(values) // 3))
        full = self.space.decode([0] * len(self.decisions))
        fields: dict[str, Any] = {}
        for cell in layout.cells:
            fields[cell] = tuple(edges)
            if hasattr(full, f"{cell}_concat"):  # the cell's output: every block it has
                fields[f"{cell}_concat"] = concat
        return dataclasses.replace(full, **fields)  # type: ignore[type-var]

    def encode(self, arch: Architecture) -> Values:
        """Inverse of :meth:`decode` (a cell's blocks read from its first cell's edges, each
        block's two edges ordered by input)."""
        if self.layout is None:
            return tuple(self.space.encode(arch))
        edges = getattr(arch, self.layout.cells[0])
        values: list[int] = []
        for b in range(len(edges) // 2):
            (op_a, a), (op_b, b_in) = sorted(edges[2 * b : 2 * b + 2], key=lambda e: e[1])
            pair = self.decisions[3 * b].options.index(f"{a}+{b_in}")
            values += [pair, self.layout.ops.index(op_a), self.layout.ops.index(op_b)]
        return tuple(values)

    def final_results(self) -> list[EvalResult]:
        """Best first, at equal budget; when cells grow block by block, only the cells of all
        ``B`` blocks (PNAS's answer is the best of ``S_B``; the smaller ones are steps on the
        way), unless there are none yet."""
        ranked = super().final_results()
        if self.layout is None:
            return ranked
        full = [r for r in ranked if len(self.encode(r.architecture)) == 3 * self.layout.blocks]
        return full or ranked

    def best(self) -> EvalResult | None:
        ranked = self.final_results()
        return ranked[0] if ranked else None

    @property
    def done(self) -> bool:
        return self.stage >= len(self.groups)

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "beam": [list(v) for v in self.beam],
            "stage": self.stage,
            "candidates": None if self.candidates is None else [list(v) for v in self.candidates],
            "to_ask": [list(v) for v in self.to_ask],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the saved stage: its candidates that were in flight are asked again first (see
        :meth:`SamplingStrategy.load_state_dict`), then those it had not asked yet."""
        super().load_state_dict(state)
        self.scores, self.results = {}, {}
        for r in self.history:
            self._note(r)
        self.beam = [tuple(int(x) for x in v) for v in state["beam"]]
        self.stage = int(state["stage"])
        candidates = state["candidates"]
        self.candidates = None if candidates is None else [tuple(int(x) for x in v) for v in candidates]
        self.to_ask = [tuple(int(x) for x in v) for v in state["to_ask"]]
        # No _finish_stages() here: the saved state is one it left (tell ends with it, ask begins
        # with it), and opening a stage now would draw its random order before the paths the run
        # sampled first (sample_path shares the random stream).
