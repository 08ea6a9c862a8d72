"""TEG-NAS's pruning search on a supernet (Chen et al., "Understanding and Accelerating Neural
Architecture Search with Training-Free and Theory-Grounded Metrics", code VITA-Group/TEGNAS; the
pruning is TE-NAS's, ``prune_tenas.py`` in VITA-Group/TENAS, which TEG-NAS extends with the
generalization indicator).

Training-free: no weight is trained. The supernet starts with every operation on every edge
(``none`` off first, as ``prune_func_rank`` does). Each round, for every operation still on an edge
that has more than one, the indicators of :mod:`raynas.supernet.teg` are measured with that
operation removed, on freshly initialised networks, as relative changes against the supernet as it
stands:

    ntk:    (kappa - kappa') / kappa      higher: removing it helps trainability, prune first
    region: (R - R') / R                  lower: removing it keeps more regions, prune first
    mse:    (mse - mse') / mse            higher: removing it helps generalization, prune first

each rounded to ``precision`` decimals and averaged over ``repeat`` initialisations. Each
indicator ranks the operations (dense ranks: equal changes share one; sorted on ``precision``
significant figures, ``round_to``), and on every edge the ``prune_number`` operations with the
smallest sum of ranks are removed (ties in the order of the first indicator's sort, as the code's
stable sorts). Rounds repeat until one operation remains per edge. On DARTS cells the edges of each
node are then pruned by the same ranks to the ``edges_per_node`` of the largest sums
(``prune_func_rank_group``), node by node, the normal cell first.

One round per training step of the search (the step's batches are the NTK's training batch and
the regression's validation batch); once pruned, a step only measures the supernet's loss. The
TEG-NAS paper's own supernet search (its probabilistic one) has no released code; the ``mse``
indicator is ranked here as the code ranks the NTK's (lower is better for both).

Two departures from ``prune_tenas.py``, for a reproducible search: each round draws one
initialisation per repeat, shared by every operation's measurement (the code's NTK network is
drawn once per round too, its thin network once per operation), and the batches are those of the
step for every operation (the code draws a new one per measurement from a shuffled loader); the
origin is measured once per repeat on the supernet as it stands.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

import torch
from torch import nn

from raynas.config import Check, Rule, TrainConfig, check_rules
from raynas.strategies.gradient.base import GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES
from raynas.supernet import teg
from raynas.supernet.darts import num_edges
from raynas.train.segmentation import labelled, mean_cross_entropy
from raynas.train.step import Batch, StepResult

Choice = tuple[int, int, int]  # (cell type, edge, operation)


@dataclass(frozen=True)
class TegPruneConfig:
    """The pruning search (defaults: ``prune_launch.py`` on NAS-Bench-201; on DARTS CIFAR-10 it
    prunes 3 operations per edge per round on batches of 14).

    Attributes:
        indicators: Which indicators rank the operations: ``ntk``, ``region``, ``mse`` (TEG-NAS:
            all three; TE-NAS: ``ntk`` and ``region``).
        prune_number: Operations removed per edge per round (at most all but one).
        repeat: Initialisations each change is averaged over.
        precision: Decimals the changes are rounded to (and significant figures of their sort).
        batch_size: Images of the step's batches the NTK and the regression use (0: all; the
            code's 72 on NAS-Bench-201).
        region_inputs: Crops per batch of the region count (the code's 1,000).
        region_batches: Batches of crops (the code's 3).
        edges_per_node: Edges kept per node of a DARTS cell (2).
    """

    indicators: tuple[str, ...] = teg.INDICATORS
    prune_number: Annotated[int, Rule(ge=1)] = 1
    repeat: Annotated[int, Rule(ge=1)] = 3
    precision: Annotated[int, Rule(ge=1)] = 3
    batch_size: int = 0
    region_inputs: Annotated[int, Rule(ge=1)] = 1000
    region_batches: Annotated[int, Rule(ge=1)] = 3
    edges_per_node: Annotated[int, Rule(ge=1)] = 2

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "indicators and set(indicators) <= set(known) and len(set(indicators)) == len(indicators)",
            "strategy.indicators must be distinct names among {join(known)}; got {list(indicators)}",
            tables={"known": teg.INDICATORS},
        ),
        Check(
            "batch_size == 0 or batch_size >= 2",
            "strategy.batch_size must be 0 (the whole batch) or at least 2, got {batch_size}",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


def round_to(number: float, precision: int, eps: float = 1e-8) -> float:
    """``number`` to ``precision`` significant figures (``prune_tenas.py``'s ``round_to``)."""
    if number == 0 or not math.isfinite(number):
        return number
    sign = 1.0 if number > 0 else -1.0
    size = abs(number) + eps
    power = math.floor(math.log(size, 10)) + 1
    return sign * round(size * 10 ** (-power), precision) * 10 ** power


def change(origin: float, value: float, precision: int) -> float:
    """``round((origin - value) / origin, precision)``; 0 where either is not finite."""
    if not (math.isfinite(origin) and math.isfinite(value)) or origin == 0:
        return 0.0
    return round((origin - value) / origin, precision)


def dense_ranks(
    values: Sequence[tuple[float, Choice]], *, descending: bool, precision: int
) -> list[tuple[Choice, int]]:
    """The code's ranking of one indicator: sort by the value's ``precision`` significant figures
    (stable), then rank 0 for the first, the previous rank again for a value equal to the previous
    one, else one more."""
    order = sorted(values, key=lambda v: round_to(v[0], precision), reverse=descending)
    ranks: list[tuple[Choice, int]] = []
    for i, (value, choice) in enumerate(order):
        rank = 0 if i == 0 else ranks[-1][1] + (0 if value == order[i - 1][0] else 1)
        ranks.append((choice, rank))
    return ranks


def rank_sum_order(
    changes: dict[str, list[tuple[float, Choice]]], precision: int
) -> list[tuple[Choice, int]]:
    """Every choice with its sum of ranks over the indicators, ascending (most prunable first):
    ``ntk`` and ``mse`` changes ranked descending, ``region`` ascending; equal sums keep the first
    indicator's order."""
    total: dict[Choice, int] = {}
    for name, values in changes.items():
        for choice, rank in dense_ranks(values, descending=name != "region", precision=precision):
            total[choice] = total.get(choice, 0) + rank
    return sorted(total.items(), key=lambda item: item[1])


@STRATEGIES.register("teg_nas_prune", config=TegPruneConfig)
class TegPrune(GradientStrategy):
    """Prune a supernet by its indicators' ranks, one round per step, no training.

    Args:
        supernet: The ``nb201`` or ``darts`` supernet; its alphas hold the mask (0 on, ``-INF``
            off) and so its :meth:`genotype` is the pruned cell.
        config: Indicators, operations per round, repeats, batches.
        train: The search's training settings (only its epochs bound the rounds).
    """

    config: TegPruneConfig  # type: ignore[assignment]
    trains_weights = False

    def __init__(self, *, supernet: nn.Module, config: TegPruneConfig, train: TrainConfig) -> None:
        # Not GradientStrategy.__init__: nothing is optimised. The attributes the search reads
        # (model, arch_params, epoch, lr) are set here.
        self.model = supernet
        self.config = config
        self.train = train
        self.criterion = mean_cross_entropy
        self.shape = teg.CellShape.of_supernet(supernet)
        self.kind = self.shape.kind
        self.arch_params: list[nn.Parameter] = list(supernet.arch_parameters())[: self.shape.cell_types]  # type: ignore[operator]
        with torch.no_grad():
            for alpha in self.arch_params:
                alpha.zero_()  # every operation on (the code sets alpha[:, :] = 0)
                alpha[:, self._none()] = -teg.INF
        self.epoch = 0
        self.rounds = 0
        self.phase = "ops"  # then "edges" (DARTS), then "done"
        self.history: list[list[Choice]] = []  # what each round removed

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:  # type: ignore[override]
        return {}

    @property
    def lr(self) -> float:
        return 0.0

    def _none(self) -> int:
        return list(self.shape.primitives).index("none")

    def masks(self) -> list[torch.Tensor]:
        """The current mask, one (edges, ops) tensor per cell type, on the host."""
        return [a.detach().cpu().clone() for a in self.arch_params]

    def active(self) -> list[torch.Tensor]:
        """Which operations are on: (edges, ops) booleans per cell type."""
        return [m > -teg.INF / 2 for m in self.masks()]

    @property
    def pruned(self) -> bool:
        """Whether the search is over (one operation per edge, and on DARTS two edges per node)."""
        return self.phase == "done"

    def step(self, train_batch: Batch, valid_batch: Batch) -> StepResult:
        """One pruning round (while any remains), then the supernet's loss on the training batch."""
        if self.phase != "done":
            batch = self._teg_batch(train_batch, valid_batch)
            seed = int(torch.randint(2**62, ()))  # from the search's stream: a resumed search draws the same
            if self.phase == "ops":
                removed = self.prune_operations(batch, seed)
                self.history.append(removed)
                self.rounds += 1
                if all(int(a.sum(1).max()) == 1 for a in self.active()):
                    self.phase = "edges" if self.kind == "darts" else "done"
            else:
                self.history.append(self.prune_edges(batch, seed))
                self.rounds += 1
                self.phase = "done"
        x, y = train_batch
        with torch.no_grad():
            logits = self.model(x)  # (B, classes)
            loss = self.criterion(logits, y)
        count = labelled(y)
        return StepResult(loss_sum=loss.detach() * count, correct=(logits.argmax(1) == y).sum(), count=count)

    def _teg_batch(self, train_batch: Batch, valid_batch: Batch) -> teg.TegBatch:
        (x, y), (vx, vy) = train_batch, valid_batch
        n = self.config.batch_size or x.shape[0]
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        crops = teg.region_crops(
            x.detach().cpu(), size=self.config.region_inputs, batches=self.config.region_batches,
            side=self.shape.crop, generator=generator,
        )
        return teg.TegBatch(
            x=x[:n].detach().cpu(), y=y[:n].cpu(), valid_x=vx[:n].detach().cpu(), valid_y=vy[:n].cpu(),
            crops=crops, num_classes=self.shape.num_classes,
        )

    def _networks(self, seed: int) -> list[tuple[nn.Module, nn.Module]]:
        out = []
        for r in range(self.config.repeat):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + r)
                out.append(teg.build_networks(self.shape))
        return out

    def _changes(
        self, choices: Sequence[Choice], masks: list[torch.Tensor], batch: teg.TegBatch, seed: int,
    ) -> dict[str, list[tuple[float, Choice]]]:
        """Each indicator's relative change when each choice is removed, averaged over repeats."""
        which = self.config.indicators
        nets = self._networks(seed)
        origins = [teg.indicators(ntk, thin, masks, batch, which) for ntk, thin in nets]
        out: dict[str, list[tuple[float, Choice]]] = {name: [] for name in which}
        for choice in choices:
            ct, edge, op = choice
            trial = [m.clone() for m in masks]
            trial[ct][edge, op] = -teg.INF
            sums = dict.fromkeys(which, 0.0)
            for (ntk, thin), origin in zip(nets, origins, strict=True):
                value = teg.indicators(ntk, thin, trial, batch, which)
                for name in which:
                    sums[name] += change(origin[name], value[name], self.config.precision)
            for name in which:
                out[name].append((sums[name] / len(nets), choice))
        return out

    def prune_operations(self, batch: teg.TegBatch, seed: int) -> list[Choice]:
        """``prune_func_rank``: remove up to ``prune_number`` operations from every edge that has
        more than one, those with the smallest sums of ranks. Returns what it removed."""
        masks = self.masks()
        active = [m > -teg.INF / 2 for m in masks]
        # The code reads the count off the first edge (all edges lose the same number a round);
        # at least one, so that a supernet whose edges differ (DARTS's S1 masks) still shrinks.
        number = max(1, min(self.config.prune_number, int(active[0][0].sum()) - 1))
        choices = [
            (ct, e, o)
            for ct, on in enumerate(active) for e in range(on.shape[0]) if int(on[e].sum()) > 1
            for o in range(on.shape[1]) if on[e, o]
        ]
        order = rank_sum_order(self._changes(choices, masks, batch, seed), self.config.precision)
        per_edge: dict[tuple[int, int], list[Choice]] = {}
        for choice, _ in order:
            picked = per_edge.setdefault(choice[:2], [])
            if len(picked) < number:
                picked.append(choice)
        removed = [c for picked in per_edge.values() for c in picked]
        self._remove(removed)
        return removed

    def prune_edges(self, batch: teg.TegBatch, seed: int) -> list[Choice]:
        """``prune_func_rank_group``: on every node of both DARTS cells with more than
        ``edges_per_node`` inputs, remove the edges (their one operation) with the smallest sums
        of ranks, keeping ``edges_per_node``; node by node, each measured on the supernet as the
        nodes before it left it. A removed edge weighs all its operations equally from then on
        (every alpha of its row is -INF: the code's softmax does the same)."""
        nodes = self.model.nodes  # type: ignore[union-attr]
        removed: list[Choice] = []
        for ct in range(self.shape.cell_types):
            for node in range(nodes):
                first, last = num_edges(node), num_edges(node + 1)
                if last - first <= self.config.edges_per_node:
                    continue
                masks = self.masks()
                choices = [
                    (ct, e, o) for e in range(first, last)
                    for o in range(masks[ct].shape[1]) if masks[ct][e, o] > -teg.INF / 2
                ]
                order = rank_sum_order(self._changes(choices, masks, batch, seed), self.config.precision)
                cut = [choice for choice, _ in order[: -self.config.edges_per_node]]
                self._remove(cut)
                removed += cut
        return removed

    def _remove(self, choices: Sequence[Choice]) -> None:
        with torch.no_grad():
            for ct, edge, op in choices:
                self.arch_params[ct][edge, op] = -teg.INF

    def end_epoch(self) -> None:
        self.epoch += 1

    def epoch_metrics(self) -> dict[str, float]:
        """Operations still on, rounds so far, and whether the pruning is over."""
        return {
            "ops_on": float(sum(int(a.sum()) for a in self.active())),
            "prune_rounds": float(self.rounds),
            "pruned": float(self.pruned),
        }

    @staticmethod
    def stop_reason(config: TegPruneConfig, history: list[dict[str, float]]) -> str | None:
        """The search ends once the supernet is pruned to one cell."""
        if history and history[-1].get("pruned") == 1.0:
            return "pruned to one operation per edge"
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "epoch": self.epoch,
            "rounds": self.rounds,
            "phase": self.phase,
            "history": [[list(c) for c in r] for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.epoch = int(state["epoch"])
        self.rounds = int(state["rounds"])
        self.phase = str(state["phase"])
        self.history = [[(int(a), int(b), int(c)) for a, b, c in r] for r in state["history"]]

