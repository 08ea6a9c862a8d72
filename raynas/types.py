"""Plain records shared across raynas: architectures, dataset facts and per-epoch reports.

Three things are kept apart: the *space* (what can be chosen, ``raynas.spaces``), the
*architecture* (what was chosen, an :class:`Architecture` record defined here) and the *network*
(the ``nn.Module`` a space builds from an architecture).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self, TypeVar, runtime_checkable

from raynas.errors import ArchitectureError, read_user_text

if TYPE_CHECKING:
    from torch import nn

_ARCHITECTURE_TYPES: dict[str, type[Architecture]] = {}
# The package whose import registers every space's architecture type, by name: imported lazily
# (as Ray Tune's SEARCH_ALG_IMPORT table does), so this ground floor imports no floor above it.
SPACES_MODULE = "raynas.spaces"
A = TypeVar("A", bound="Architecture")


class Architecture(ABC):
    """Base of architecture records: frozen, hashable dataclasses with a JSON round trip.

    Subclasses set ``space`` (the name of the space they belong to) and implement
    :meth:`to_dict` / :meth:`from_dict`. They are registered for :meth:`from_json` automatically.
    """

    space: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "space" in cls.__dict__:
            _ARCHITECTURE_TYPES[cls.space] = cls

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The architecture as JSON-compatible data (the space's published form where one exists)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Architecture:
        """Inverse of :meth:`to_dict`; raises :class:`ArchitectureError` on malformed data."""

    def canonical(self) -> Any:
        """A form that is equal for architectures that build the same network (default: to_dict)."""
        return self.to_dict()

    def key(self) -> str:
        """A short, stable identifier: equal keys mean the same network."""
        text = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return f"{self.space}-{hashlib.sha1(text.encode()).hexdigest()[:12]}"

    def to_json(self, indent: int | None = None) -> str:
        """JSON text with the space's name, readable back with :meth:`Architecture.from_json`."""
        return json.dumps({"space": self.space, **self.to_dict()}, indent=indent)

    @classmethod
    def read_json(cls, text: str, *, form: str, noun: str = "architecture") -> Self | None:
        """The architecture ``text`` holds as JSON text or names as a JSON file; None when it is
        neither (a published name, or the space's own notation, for the caller to read).

        Args:
            text: What the user wrote.
            form: The expected JSON object, for error messages (e.g. ``{"arch": "|...|"}``).
            noun: What the space calls its architectures in messages ("genotype" for DARTS).

        Raises:
            ArchitectureError: The file is missing, the JSON invalid or of another space, or the
                object malformed; the message names the file and what is wrong.
        """
        stripped = text.strip()
        if stripped.startswith("{"):
            where, raw = f"{cls.space} {noun} JSON", stripped
        else:
            path = Path(stripped)
            if path.suffix != ".json" and not path.is_file():
                return None
            where = f"{noun} file {str(path)!r}"
            raw = read_user_text(path, where, ArchitectureError)
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ArchitectureError(f"{where} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ArchitectureError(f"{where} must hold a JSON object {form}")
        data = dict(data)
        space = data.pop("space", cls.space)
        if space != cls.space:
            raise ArchitectureError(f"{where} is an architecture of space {space!r}, not {cls.space}")
        try:
            return cls.from_dict(data)  # type: ignore[return-value]
        except ArchitectureError as exc:
            raise ArchitectureError(f"{where}: {exc}") from None

    @staticmethod
    def from_json(text: str) -> Architecture:
        """Parse the output of :meth:`to_json` back into the right record type (the spaces, which
        define the record types, are imported on first need: a bare ``import raynas`` suffices)."""
        data = json.loads(text)
        space = data.pop("space", None) if isinstance(data, dict) else None
        if space not in _ARCHITECTURE_TYPES:
            importlib.import_module(SPACES_MODULE)  # registers every space's record type
        if space not in _ARCHITECTURE_TYPES:
            known = ", ".join(sorted(_ARCHITECTURE_TYPES))
            raise ArchitectureError(f"architecture JSON names space {space!r}; known: {known}")
        return _ARCHITECTURE_TYPES[space].from_dict(data)


def check_keys(data: dict[str, Any], keys: tuple[str, ...], what: str) -> None:
    """Raise :class:`ArchitectureError` if ``data`` (a ``from_dict`` argument) lacks one of ``keys``
    or has another; the message says which and lists the keys ``what`` has."""
    unknown = sorted(set(data) - set(keys))
    missing = [k for k in keys if k not in data]
    if unknown or missing:
        raise ArchitectureError(
            f"{what} has the keys {', '.join(keys)}; "
            + (f"unknown: {', '.join(unknown)}" if unknown else f"missing: {', '.join(missing)}")
        )


def published_record(name: str, records: dict[str, A], aliases: dict[str, str], what: str) -> A:
    """The published architecture ``name`` (or an alias of it) among ``records``; an unknown name
    is an :class:`ArchitectureError` that lists the published ones."""
    key = aliases.get(name, name)
    if key not in records:
        known = ", ".join(sorted([*records, *aliases]))
        raise ArchitectureError(f"unknown {what} {name!r}; published {what}s: {known}")
    return records[key]


TASKS = ("classification", "segmentation")


@dataclass(frozen=True)
class DatasetInfo:
    """What a network builder needs to know about its data.

    Attributes:
        name: The dataset's registry name.
        in_channels: Image channels (1 for token data).
        num_classes: Classes (the vocabulary for language modelling).
        image_size: Side of the (square) images, or the sequence length.
        task: ``classification`` (one label per input) or ``segmentation`` (a label per pixel:
            a space builds a dense-prediction network with (B, classes, H, W) logits).
    """

    name: str
    in_channels: int
    num_classes: int
    image_size: int
    task: str = "classification"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"DatasetInfo.task must be one of {', '.join(TASKS)}, got {self.task!r}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """One image, without the batch dimension: (C, H, W)."""
        return (self.in_channels, self.image_size, self.image_size)


@dataclass(frozen=True)
class EpochReport:
    """What one search epoch produced, sent from the worker to the search driver.

    Attributes:
        epoch: Zero-based index of the finished epoch.
        metrics: Scalar metrics (``train_loss``, ``valid_acc``, ``alpha_entropy``, ...).
        architecture: The architecture the search would return if it stopped now.
        arch_weights: The architecture parameters as nested lists, by name.
        seconds: Wall time of the epoch on the worker.
        timings: Where that time went (``step_seconds``, ``data_seconds``, ``eval_seconds``):
            recorded as metrics of the run, kept apart from the search's results.
    """

    epoch: int
    metrics: dict[str, float]
    architecture: Architecture
    arch_weights: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class EvalResult:
    """One evaluated candidate: what an evaluator measured, at what cost, and where.

    Every strategy is told these; the tracking layer records each as an MLflow child run and a
    row of the Parquet results store.

    Attributes:
        architecture: The candidate.
        metrics: Scalar results; ``objective`` names the one strategies maximise.
        objective: The metric strategies rank by (higher is better), e.g. ``valid_acc``.
        trial_id: A stable id for the evaluation (unique within a search; a retry reuses it).
        budget: How much training the candidate got (epochs; 0 for inherited weights or proxies).
        seconds: Wall time of the evaluation.
        node: Where it ran (accelerator or node type, ``local`` in-process).
        stopped_early: A scheduler stopped it before its full budget.
        started: When the evaluation started (Unix time, seconds; 0 when unknown).
        ended: When it ended (Unix time, seconds; 0 when unknown).
        node_id: The Ray node it ran on (empty in-process).
        curve: The objective after each unit of budget (epoch 1, 2, ... ``budget``) where the
            evaluation trained epoch by epoch (Tune trials); empty otherwise. Strategies compare
            candidates of different budgets at the budget both reached
            (:func:`compare_at_equal_budget`).
        handover: What the evaluator hands to later candidates' evaluations (the ``morphism``
            evaluator: the trained network its children grow from), on its way from the evaluator
            to the driver, which keeps it and takes it off; never recorded, compared or shown.
    """

    architecture: Architecture
    metrics: dict[str, float]
    objective: str = "valid_acc"
    trial_id: str = ""
    budget: float = 0.0
    seconds: float = 0.0
    node: str = "local"
    stopped_early: bool = False
    started: float = 0.0
    ended: float = 0.0
    node_id: str = ""
    curve: tuple[float, ...] = ()
    handover: Any = field(default=None, compare=False, repr=False)

    @property
    def score(self) -> float:
        """The objective's value (``-inf`` when the evaluation did not produce it)."""
        return float(self.metrics.get(self.objective, float("-inf")))

    def to_dict(self) -> dict[str, Any]:
        """JSON-compatible form (the architecture as its JSON text)."""
        return {
            "architecture": self.architecture.to_json(), "metrics": dict(self.metrics),
            "objective": self.objective, "trial_id": self.trial_id, "budget": self.budget,
            "seconds": self.seconds, "node": self.node, "stopped_early": self.stopped_early,
            "started": self.started, "ended": self.ended, "node_id": self.node_id,
            "curve": list(self.curve),
        }

    @staticmethod
    def from_dict(data: dict[str, Any]) -> EvalResult:
        """Inverse of :meth:`to_dict`."""
        return EvalResult(**{
            **data, "architecture": Architecture.from_json(data["architecture"]),
            "curve": tuple(data.get("curve", ())),
        })


def compare_at_equal_budget(a: EvalResult, b: EvalResult) -> int:
    """Which of two results is better (1: ``a``, -1: ``b``, 0: neither), at equal budget.

    Where both have a learning curve, they are compared at the budget both reached (the objective
    after epoch ``min(len(a.curve), len(b.curve))``): a candidate a scheduler stopped after one
    epoch is judged against the others' first epoch, not against their last. When that ties (or
    a result has no curve: inherited weights, proxies, a failure), the one with more budget is
    better (a scheduler kept it on after comparing it at the lower budget), then the higher
    score.
    """
    common = min(len(a.curve), len(b.curve))
    if common:
        x, y = a.curve[common - 1], b.curve[common - 1]
        if x != y:
            return 1 if x > y else -1
    if a.budget != b.budget:
        return 1 if a.budget > b.budget else -1
    return (a.score > b.score) - (a.score < b.score)


def scores_at_common_budget(results: Sequence[EvalResult]) -> list[float]:
    """Each result's objective at the smallest budget that every result with a learning curve
    reached: the scalar learning signal of a batch a Tune scheduler stopped some of early.

    The score at budget ``k`` is read from the curve as :func:`compare_at_equal_budget` reads it
    (``curve[k - 1]``, the objective after epoch ``k``), ``k`` the shortest curve among
    ``results``. When the curves all have one length (every candidate trained to the same
    budget) or there are none, the scores are the results' own (:attr:`EvalResult.score`),
    unchanged. A result without a curve (inherited weights, a proxy, a failure, a trial whose
    epochs were not all reported) keeps its own score: there is no history to read it from at
    another budget, so it cannot be judged at equal budget.
    """
    lengths = {len(r.curve) for r in results if r.curve}
    if len(lengths) < 2:
        return [r.score for r in results]
    common = min(lengths)
    return [float(r.curve[common - 1]) if r.curve else r.score for r in results]


def best_at_equal_budget(results: Iterable[EvalResult]) -> EvalResult | None:
    """The first result no later one beats by :func:`compare_at_equal_budget` (None if empty)."""
    best: EvalResult | None = None
    for result in results:
        if best is None or compare_at_equal_budget(result, best) > 0:
            best = result
    return best


@dataclass(frozen=True)
class Decision:
    """One categorical choice of a space's flat view: a name and its options, in a fixed order.

    Spaces that offer :meth:`ChoiceSpace.decisions` put a neutral or simplest option first where
    one exists (NAS-Bench-201's ``none``), so a partial architecture can be filled with option 0.
    """

    name: str
    options: tuple[str, ...]


def decode_options(decisions: tuple[Decision, ...], values: tuple[int, ...] | list[int]) -> list[str]:
    """The option names that ``values`` pick, one per decision; a clear error when one is out of range."""
    if len(values) != len(decisions):
        raise ArchitectureError(f"expected {len(decisions)} option indices, got {len(values)}")
    names = []
    for decision, value in zip(decisions, values, strict=True):
        if not 0 <= int(value) < len(decision.options):
            raise ArchitectureError(
                f"{decision.name}: option {value} out of range; choose 0..{len(decision.options) - 1} "
                f"({', '.join(decision.options)})"
            )
        names.append(decision.options[int(value)])
    return names


@runtime_checkable
class ChoiceSpace(Protocol):
    """A space's flat categorical view, which sampling strategies search over.

    ``decode(encode(arch)) == arch`` for every architecture of the space, and every tuple of
    option indices decodes to an architecture of the space.
    """

    def decisions(self) -> tuple[Decision, ...]:
        """The choices that make up an architecture, in a fixed order."""
        ...

    def encode(self, arch: Architecture) -> tuple[int, ...]:
        """The option index of every decision."""
        ...

    def decode(self, values: tuple[int, ...] | list[int]) -> Architecture:
        """The architecture with these option indices."""
        ...


@runtime_checkable
class SearchSpace(Protocol):
    """What every registered space provides (see ``raynas.spaces``).

    A space is built from its config dataclass; it never holds a network's weights itself. Its
    weight-sharing supernet, if it has one, is registered under the space's name in
    ``raynas.supernet.SUPERNETS``; a space may also offer the flat categorical view
    (:class:`ChoiceSpace`) and ``draw(arch)``, its own picture of an architecture.
    """

    architecture_type: ClassVar[type[Architecture]]

    def sample(self, rng: random.Random) -> Architecture:
        """A random architecture of the space."""
        ...

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` belongs to this space (as configured)."""
        ...

    def parse(self, text: str) -> Architecture:
        """An architecture from a published name, a file, or the space's string form."""
        ...

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None, auxiliary: bool = False,
    ) -> nn.Module:
        """The stand-alone network of ``arch`` for ``dataset`` (paper-sized by default)."""
        ...
