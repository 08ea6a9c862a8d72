"""Training from the parent's weights (Auto-Keras, Jin et al., KDD 2019): a candidate grown from
an evaluated network by morphisms starts from that network's trained weights, carried through the
same morphisms (:func:`raynas.spaces.autokeras.grow_state`), then trains for the budget as
``scratch`` does.

The architecture record says where it came from (its ``parent``'s key and the ``morphs``); the
weights travel through the search's storage: every network this evaluator trains is saved as
``<tracking.output_dir>/<name>/weights/<key>.pt`` (a local folder or ``s3://``, so evaluator
actors on other nodes find it), before its result is returned, so a strategy that asks for a
child only after its parent's result always finds the parent's weights.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, ClassVar

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


@EVALUATORS.register("morphism", config=MorphismConfig)
class MorphismEvaluator(ScratchEvaluator):
    """Trains each candidate from its parent's morphed weights (from scratch when it has none)
    and keeps the trained weights for its children.

    Args:
        config: The budget and the morphisms' noise.
        search: The search job (an ``autokeras`` space).
    """

    def __init__(self, config: MorphismConfig, *, search: SearchConfig) -> None:
        super().__init__(config, search=search)
        if not isinstance(self.space, AutoKerasSpace):
            raise ConfigError(
                f"evaluator 'morphism' carries weights through network morphisms: set space.name "
                f"to 'autokeras' (got {search.space.name!r})"
            )
        self.noise = config.noise
        self.folder = weights_folder(search)

    def weights_path(self, key: str) -> str:
        """The file of the trained network with key ``key``."""
        return storage.join(self.folder, f"{key}.pt")

    def initial_network(self, arch: Architecture) -> torch.nn.Module:
        """``arch``'s network: its parent's trained weights grown by its morphisms, or fresh."""
        model = super().initial_network(arch)
        if not isinstance(arch, MorphArch) or not arch.parent:
            return model
        path = self.weights_path(arch.parent)
        if not storage.exists(path):
            raise RaynasError(
                f"{arch.key()} grows from {arch.parent}, whose trained weights are not at {path}"
            )
        saved = load_checkpoint(path)
        parent = Architecture.from_json(saved["architecture"])
        assert isinstance(parent, MorphArch)
        grown, state = grow_state(parent, saved["state"], arch.morphs, noise=self.noise)
        if grown.key() != arch.key():
            raise ArchitectureError(f"the morphs of {arch.key()} grow {parent} into {grown}, not {arch}")
        model.load_state_dict(state)
        return model

    def evaluate(self, arch: Architecture, *, trial_id: str = "") -> EvalResult:
        """Train ``arch`` (from its parent's weights) and keep its trained weights."""
        start = time.perf_counter()
        result = super().evaluate(arch, trial_id=trial_id)
        assert self.network is not None
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        save_checkpoint({"architecture": arch.to_json(), "state": state}, self.weights_path(arch.key()))
        return EvalResult(
            architecture=arch, metrics=result.metrics, trial_id=trial_id, budget=result.budget,
            seconds=time.perf_counter() - start,
        )
