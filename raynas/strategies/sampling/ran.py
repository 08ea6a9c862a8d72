"""The searches of Restructurable Activation Networks (Bhardwaj et al., 2022).

``ran_e``, RAN-explicit's semi-automatic block replacement: start from a seed network (every
layer an inverted bottleneck), look up in the target device's latency table (``raynas latency``)
what replacing each layer's block with the hardware-aware block would save, and try the
replacements one at a time, the largest saving first. A replacement stays when the candidate
scores within ``tolerance`` of the seed (the accuracy the search may give up in all), and the
next candidate replaces one more block of the network kept so far. The answer of the search is
the last network kept: the fastest one found within the tolerance. The official code publishes
the networks this produced (RAN-e-C, RAN-e-GT), not the search's code; its steps here follow the
abstract ("replace inefficient blocks with hardware-aware blocks", driven by the hardware).

``ran_i``, RAN-implicit's training-free scaling (:meth:`raynas.spaces.ran.RanISpace.scale`):
proposes the scaled networks that reach a reference network's number of non-linear units
(NN-Mass), fewest multiply-adds first; no candidate is trained to choose them, the evaluator
only measures the chosen ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from raynas.config import Check, Rule, check_rules, names_record
from raynas.data import dataset_info
from raynas.errors import ConfigError
from raynas.latency import LATENCY_DIR, REQUIRED_TABLE, LatencyTable, find_table, required_table
from raynas.spaces.ran import ALIASES_E, ALIASES_I, E_FORM, I_FORM, PUBLISHED_E, PUBLISHED_I
from raynas.strategies.registry import STRATEGIES
from raynas.strategies.sampling.base import SamplingStrategy, choice_space
from raynas.types import Architecture, EvalResult, scores_at_common_budget


@dataclass(frozen=True)
class RanEConfig:
    """RAN-e's block replacement.

    Attributes:
        latency_table: A latency-table JSON file, or the name of a device whose table is
            ``<latency_dir>/<name>.json`` (measure one with ``raynas latency``).
        latency_dir: Where device tables live.
        dataset: The input the table was measured for (empty: the table's own record of it).
        seed_architecture: The network the search starts from, in the space's notation (empty:
            ``seed_block`` in every layer).
        seed_block: The seed's block where ``seed_architecture`` is empty.
        replacement: The hardware-aware block that replaces inefficient ones.
        tolerance: How far below the seed's score (the objective, e.g. validation accuracy) a
            kept network may score.
        evaluations: Candidates evaluated in all, the seed included.
    """

    latency_table: str = ""
    latency_dir: str = LATENCY_DIR
    dataset: str = ""
    seed_architecture: str = ""
    seed_block: str = "ibn_k3_e6"
    replacement: str = "collapsed"
    tolerance: Annotated[float, Rule(ge=0)] = 0.01
    evaluations: Annotated[int, Rule(ge=1)] = 20

    checks: ClassVar[tuple[Check, ...]] = (
        REQUIRED_TABLE,
        names_record(
            "seed_architecture", "strategy.seed_architecture", "ran_e network", E_FORM,
            "',' in text or text == 'collapsed' or text[:5] == 'ibn_k'", lambda: [*PUBLISHED_E, *ALIASES_E],
        ),
    )

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space_is['latency_tables']",
            "strategy 'ran_e' needs a space with latency tables (space: ran_e or fbnet)",
        ),
        Check(
            "replacement in space_is['layer_candidates']",
            "strategy.replacement {replacement!r} is not a candidate of every layer; candidates: "
            "{join(space_is['layer_candidates'])}",
        ),
        Check(
            "seed_architecture or seed_block in space_is['layer_candidates']",
            "strategy.seed_block {seed_block!r} is not a candidate of every layer",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")
        object.__setattr__(self, "latency_table", required_table(self.latency_table, self.latency_dir))


@STRATEGIES.register("ran_e", config=RanEConfig)
class RanE(SamplingStrategy):
    """Greedy replacement of the blocks that the latency table says cost most.

    Args:
        config: The table, seed, replacement, tolerance and budget.
        space: A space with latency tables whose every layer offers ``config.replacement``
            (``ran_e``; ``fbnet`` with ``skip`` works too).
        seed: Unused (the search is deterministic); kept for the common signature.
    """

    name = "ran_e"
    # It searches a space of its own kind, one with latency tables (through that space's flat
    # view), not any space's flat view.
    needs_choices = False

    def __init__(self, config: RanEConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        self.config = config
        if not hasattr(space, "layer_latency_keys"):
            raise ConfigError("strategy 'ran_e' needs a space with latency tables (space: ran_e or fbnet)")
        self.decisions = choice_space(space, self.name).decisions()
        self.table = LatencyTable.load(find_table(config.latency_table, config.latency_dir))
        info = dataset_info(config.dataset or self.table.meta.get("dataset", "") or "imagenet")
        options = [d.options for d in self.decisions]
        if any(config.replacement not in o for o in options):
            raise ConfigError(
                f"strategy.replacement {config.replacement!r} is not a candidate of every layer; "
                f"candidates: {', '.join(options[0])}"
            )
        self.seed_arch = (
            space.parse(config.seed_architecture) if config.seed_architecture
            else self._seed_of(config.seed_block, options)
        )
        # Milliseconds of every candidate in every layer, as the table has them (a missing entry
        # is reported now, naming what to measure).
        # The keys of a layer come in the order of the space's op_names (not necessarily its
        # decisions' order: fbnet's puts skip first).
        names = tuple(space.op_names)
        self.latency = [
            {name: self.table[key] for name, key in zip(names, keys, strict=True) if name in opts}
            for opts, keys in zip(options, self._keys(info), strict=True)
        ]
        self.fixed_ms = sum(self.table[k] for k in space.fixed_latency_keys(info))
        self.incumbent: Architecture | None = None
        self.incumbent_index = -1  # in history
        self.seed_score: float | None = None
        self.tried: set[int] = set()
        self.pending: int | None = None  # the layer the candidate in flight replaces

    def _seed_of(self, block: str, options: list[tuple[str, ...]]) -> Architecture:
        if any(block not in o for o in options):
            raise ConfigError(f"strategy.seed_block {block!r} is not a candidate of every layer")
        return self.space.decode([o.index(block) for o in options])

    def _keys(self, info: Any) -> tuple[tuple[str, ...], ...]:
        keys = self.space.layer_latency_keys(info)
        if len(keys) != len(self.decisions):
            raise ConfigError("the space's latency keys do not match its decisions")
        return keys

    def latency_ms(self, arch: Architecture) -> float:
        """The table's prediction for ``arch``'s network (stem and head included)."""
        values = self.space.encode(arch)
        return self.fixed_ms + sum(
            self.latency[i][d.options[v]] for i, (d, v) in enumerate(zip(self.decisions, values, strict=True))
        )

    def _blocks(self, arch: Architecture) -> list[str]:
        return [d.options[v] for d, v in zip(self.decisions, self.space.encode(arch), strict=True)]

    def savings(self) -> list[tuple[float, int]]:
        """``(milliseconds saved, layer)`` of the replacements left to try, largest first."""
        if self.incumbent is None:
            return []
        blocks, r = self._blocks(self.incumbent), self.config.replacement
        return sorted(
            ((self.latency[i][b] - self.latency[i][r], i) for i, b in enumerate(blocks)
             if b != r and i not in self.tried and self.latency[i][b] > self.latency[i][r]),
            key=lambda si: (-si[0], si[1]),
        )

    def propose(self) -> Architecture | None:
        if self.asked >= self.config.evaluations or self.in_flight:
            return None  # one candidate at a time: each builds on the last network kept
        if self.asked == 0:
            return self.seed_arch
        left = self.savings()
        if self.incumbent is None or not left:
            return None
        layer = left[0][1]
        self.tried.add(layer)
        self.pending = layer
        values = list(self.space.encode(self.incumbent))
        values[layer] = self.decisions[layer].options.index(self.config.replacement)
        return self.space.decode(values)

    def tell(self, result: EvalResult) -> None:
        """Record the result; keep the candidate when it is the seed, or faster (by the table)
        than the network kept and within the tolerance of the seed, the two compared at the budget
        both reached (:func:`raynas.types.scores_at_common_budget`: a candidate a Tune scheduler
        stopped early against the seed's score after as many epochs)."""
        latency = self.latency_ms(result.architecture)
        super().tell(result)
        if self.seed_score is None and result.architecture == self.seed_arch:
            self.seed_score = result.score
            self.incumbent, self.incumbent_index = result.architecture, len(self.history) - 1
            return
        if self.seed_score is None or self.incumbent is None:
            return
        seed = next(r for r in self.history if r.architecture == self.seed_arch)
        score, seed_score = scores_at_common_budget([result, seed])
        if score >= seed_score - self.config.tolerance and latency < self.latency_ms(self.incumbent):
            self.incumbent, self.incumbent_index = result.architecture, len(self.history) - 1

    @property
    def done(self) -> bool:
        if len(self.history) >= self.config.evaluations:
            return True
        return self.seed_score is not None and not self.in_flight and not self.savings()

    def final_results(self) -> list[EvalResult]:
        """The network kept last first (the search's answer), then the others, best first."""
        rest = super().final_results()
        if self.incumbent_index < 0:
            return rest
        kept = self.history[self.incumbent_index]
        return [kept, *(r for r in rest if r is not kept)]

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(), "incumbent_index": self.incumbent_index, "seed_score": self.seed_score,
            "tried": sorted(self.tried),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.incumbent_index = int(state["incumbent_index"])
        kept = self.incumbent_index >= 0
        self.incumbent = self.history[self.incumbent_index].architecture if kept else None
        self.seed_score = state["seed_score"]
        self.tried = set(state["tried"])


@dataclass(frozen=True)
class RanIConfig:
    """RAN-i's training-free scaling.

    Attributes:
        reference: The network whose non-linear units (NN-Mass) to reach, in the space's notation
            (empty: the space's unscaled base; ConvNeXt-T by default).
        mass_ratio: The share of the reference's NN-Mass to reach.
        dataset: The input the multiply-adds are counted on.
        evaluations: How many of the ranked networks to evaluate (the cheapest first).
    """

    reference: str = ""
    mass_ratio: Annotated[float, Rule(gt=0)] = 1.0
    dataset: str = "imagenet"
    evaluations: Annotated[int, Rule(ge=1)] = 1

    checks: ClassVar[tuple[Check, ...]] = (
        names_record(
            "reference", "strategy.reference", "ran_i network", I_FORM, "'/' in text",
            lambda: [*PUBLISHED_I, *ALIASES_I],
        ),
    )

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check("space_is['scale']", "strategy 'ran_i' needs the ran_i space (space: ran_i)"),
    )

    def __post_init__(self) -> None:
        check_rules(self, "strategy")


@STRATEGIES.register("ran_i", config=RanIConfig)
class RanI(SamplingStrategy):
    """Proposes the scaled networks that reach the reference's NN-Mass, fewest multiply-adds first.

    Args:
        config: The reference, the share of its NN-Mass, the input and the budget.
        space: A ``ran_i`` space.
        seed: Unused (the ranking is deterministic).
    """

    name = "ran_i"
    needs_choices = False  # it scales the ran_i space's base network, not any space's flat view

    def __init__(self, config: RanIConfig, *, space: Any, seed: int = 0) -> None:
        super().__init__(space=space, seed=seed)
        if not hasattr(space, "scale"):
            raise ConfigError("strategy 'ran_i' needs the ran_i space (space: ran_i)")
        self.config = config
        reference = space.parse(config.reference) if config.reference else None
        self.ranked = space.scale(
            dataset_info(config.dataset), reference=reference, mass_ratio=config.mass_ratio
        )
        if not self.ranked:
            raise ConfigError(
                f"no network of the space's multipliers reaches {config.mass_ratio} x the reference's NN-Mass"
            )
        self.ranked = self.ranked[: config.evaluations]

    def propose(self) -> Architecture | None:
        return self.ranked[self.asked] if self.asked < len(self.ranked) else None

    @property
    def done(self) -> bool:
        return len(self.history) >= len(self.ranked)

    def final_results(self) -> list[EvalResult]:
        """The evaluated networks in the scaling's order (the training-free choice first)."""
        order = {a: i for i, a in enumerate(self.ranked)}
        return sorted(self.history, key=lambda r: order.get(r.architecture, len(order)))
