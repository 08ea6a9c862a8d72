"""Training from the parent's weights (Auto-Keras, Jin et al., KDD 2019): a candidate grown from
an evaluated network by morphisms starts from that network's trained weights, carried through the
same morphisms (:func:`raynas.spaces.autokeras.grow_state`), then trains for the budget as
``scratch`` does.

The architecture record says where it came from (its ``parent``'s key and the ``morphs``); the
weights travel with the work, not through a shared disk: the evaluator hands every network it
trains back with its result (:attr:`raynas.types.EvalResult.handover`), the driver's
:class:`ParentWeights` saves it as ``<tracking.output_dir>/<name>/weights/<key>.pt`` (beside the
search's checkpoint and journal) and hands the parent's to the evaluation of each child
(:meth:`MorphismEvaluator.receive`), on whatever node of a cluster the child runs. A strategy asks
for a child only after its parent's result, and a resumed search finds the parents in that folder.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Annotated, Any, ClassVar

import torch

from raynas import storage
from raynas.config import Check, Rule, SearchConfig
from raynas.errors import ArchitectureError, ConfigError, RaynasError
from raynas.evaluators.registry import EVALUATORS
from raynas.evaluators.scratch import ScratchConfig, ScratchEvaluator
from raynas.spaces.autokeras import NOISE_RATIO, AutoKerasSpace, MorphArch, grow_state
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.types import Architecture, EvalResult


@dataclass(frozen=True)
class MorphismConfig(ScratchConfig):
    """The training budget of one candidate (as ``scratch``; ``channels`` and ``layers`` do not
    apply: the record holds every width and depth), and the morphisms' noise.

    Attributes:
        noise: Noise added to the weights a morphism creates, relative to their neighbours' range
            (the official NOISE_RATIO 1e-4: it breaks the symmetry of copied units; 0 keeps the
            parent's function exactly).
    """

    noise: Annotated[float, Rule(ge=0, lt=1)] = NOISE_RATIO

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space_is['morphisms']",
            "evaluator 'morphism' carries weights through network morphisms: set space.name to "
            "'autokeras' (got {space!r})",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()


def weights_folder(search: SearchConfig) -> str:
    """Where a search's trained networks are kept: ``<tracking.output_dir>/<name>/weights``."""
    return storage.join(search.tracking.output_dir, search.name, "weights")


class ParentWeights:
    """The driver's side of weight inheritance: keeps the trained network each result hands over
    (in :func:`weights_folder`) and gives each child its parent's.

    Args:
        search: The search job.
    """

    def __init__(self, search: SearchConfig) -> None:
        self.folder = weights_folder(search)

    def path(self, key: str) -> str:
        """The file of the trained network with key ``key``."""
        return storage.join(self.folder, f"{key}.pt")

    def keep(self, result: EvalResult) -> EvalResult:
        """Save the trained network ``result`` hands over; ``result`` without it."""
        if result.handover is None:
            return result
        save_checkpoint(result.handover, self.path(result.architecture.key()))
        return replace(result, handover=None)

    def given(self, arch: Architecture) -> dict[str, Any]:
        """What ``arch``'s evaluation starts from: its parent's trained network by the parent's
        key (empty for a network trained from scratch).

        Raises:
            RaynasError: The parent's trained network was never kept.
        """
        if not isinstance(arch, MorphArch) or not arch.parent:
            return {}
        path = self.path(arch.parent)
        if not storage.exists(path):
            raise RaynasError(
                f"{arch.key()} grows from {arch.parent}, whose trained weights are not at {path}"
            )
        return {arch.parent: load_checkpoint(path)}


@EVALUATORS.register("morphism", config=MorphismConfig)
class MorphismEvaluator(ScratchEvaluator):
    """Trains each candidate from its parent's morphed weights (from scratch when it has none)
    and hands the trained weights back with its result, for its children.

    Args:
        config: The budget and the morphisms' noise.
        search: The search job (an ``autokeras`` space).
    """

    # What the driver keeps of the results' handovers and gives each candidate (execution/pool.py).
    handovers: ClassVar[type[ParentWeights]] = ParentWeights

    def __init__(self, config: MorphismConfig, *, search: SearchConfig) -> None:
        super().__init__(config, search=search)
        if not isinstance(self.space, AutoKerasSpace):
            raise ConfigError(
                f"evaluator 'morphism' carries weights through network morphisms: set space.name "
                f"to 'autokeras' (got {search.space.name!r})"
            )
        self.noise = config.noise
        self.received: dict[str, Any] = {}  # trained parents by key, for the next evaluation

    def receive(self, given: dict[str, Any]) -> None:
        """Take the trained networks the next evaluation grows from, by key
        (:meth:`ParentWeights.given`)."""
        self.received = dict(given)

    def initial_network(self, arch: Architecture) -> torch.nn.Module:
        """``arch``'s network: its parent's trained weights grown by its morphisms, or fresh."""
        model = super().initial_network(arch)
        if not isinstance(arch, MorphArch) or not arch.parent:
            return model
        saved = self.received.get(arch.parent)
        if saved is None:
            raise RaynasError(f"{arch.key()} grows from {arch.parent}, whose trained weights were not given")
        parent = Architecture.from_json(saved["architecture"])
        assert isinstance(parent, MorphArch)
        grown, state = grow_state(parent, saved["state"], arch.morphs, noise=self.noise)
        if grown.key() != arch.key():
            raise ArchitectureError(f"the morphs of {arch.key()} grow {parent} into {grown}, not {arch}")
        model.load_state_dict(state)
        return model

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Train ``arch`` (from its parent's weights); the result hands the trained weights over."""
        start = time.perf_counter()
        result = super().evaluate(arch, trial_id=trial_id)
        assert self.network is not None
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        return EvalResult(
            architecture=arch, metrics=result.metrics, objective=result.objective, trial_id=trial_id,
            budget=result.budget, seconds=time.perf_counter() - start,
            handover={"architecture": arch.to_json(), "state": state},
        )
