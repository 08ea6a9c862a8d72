"""Training from the parent's weights (Auto-Keras, Jin et al., KDD 2019): a candidate grown from
an evaluated network by morphisms starts from that network's trained weights, carried through the
same morphisms (:func:`raynas.spaces.autokeras.grow_state`), then trains as the official code's
``ModelTrainer.train_model`` does (keras-team/autokeras, ``autokeras/nn/model_trainer.py``): SGD at
0.025 with momentum 0.9 and weight decay 3e-4, cosine-annealed over the budget, stopped by its
``EarlyStop`` once the validation loss has not fallen for a while (:class:`EarlyStop`), the best
epoch's weights restored when it stops, and scored by the mean of the last epochs' results.

The architecture record says where it came from (its ``parent``'s key and the ``morphs``); the
weights travel with the work, not through a shared disk: the evaluator hands every network it
trains back with its result (:attr:`raynas.types.EvalResult.handover`), the driver's
:class:`ParentWeights` saves it as ``<tracking.output_dir>/<name>/weights/<key>.pt`` (beside the
search's checkpoint and journal) and hands the parent's to the evaluation of each child
(:meth:`MorphismEvaluator.receive`), on whatever node of a cluster the child runs. A strategy asks
for a child only after its parent's result, and a resumed search finds the parents in that folder.
"""

from __future__ import annotations

import copy
import math
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
    """The training of one candidate (as ``scratch``'s; ``channels`` and ``layers`` do not apply:
    the record holds every width and depth), its early stop, and the morphisms' noise. The
    defaults are the official code's (``nn/model_trainer.py``: SGD 0.025, no gradient clip;
    ``constant.py``: MAX_NO_IMPROVEMENT_NUM 5, MIN_LOSS_DEC 1e-4, SEARCH_MAX_ITER 200 epochs,
    which a job sets as ``epochs``).

    Attributes:
        patience: Epochs without the validation loss falling by ``min_loss_decrease`` that
            training goes on (:class:`EarlyStop`); the score is the mean of the last
            ``min(patience, epochs)`` epochs' validation results.
        min_loss_decrease: What counts as the validation loss falling, on the sum of its batches'
            mean losses (as the official ``_test`` adds them up).
        noise: Noise added to the weights a morphism creates, relative to their neighbours' range
            (the official NOISE_RATIO 1e-4: it breaks the symmetry of copied units; 0 keeps the
            parent's function exactly).
    """

    learning_rate: Annotated[float, Rule(gt=0)] = 0.025
    grad_clip: float = 0.0
    patience: Annotated[int, Rule(ge=1)] = 5
    min_loss_decrease: Annotated[float, Rule(ge=0)] = 1e-4
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


@dataclass
class EarlyStop:
    """Auto-Keras's early stop (``EarlyStop`` in ``autokeras/nn/model_trainer.py``), epoch by epoch.

    An epoch improves when its validation loss is below the lowest so far by ``min_decrease``.
    Once more than ``patience`` epochs in a row have not, the next epoch that does not improve
    ends training: the official code stops after ``patience + 2`` epochs without improvement, and
    an improving epoch in between does not take that back (its ``_done`` stays set).
    """

    patience: int
    min_decrease: float
    lowest: float = math.inf
    since_lowest: int = 0
    done: bool = False

    def epoch_end(self, loss: float) -> bool:
        """Whether training goes on after an epoch of validation loss ``loss``."""
        improved = loss <= self.lowest - self.min_decrease
        if self.done and not improved:
            return False
        if improved:
            self.lowest, self.since_lowest = loss, 0
        else:
            self.since_lowest += 1
        if self.since_lowest > self.patience:
            self.done = True
        return True


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
        """Train ``arch`` (from its parent's weights) until :class:`EarlyStop` ends it or the
        budget does; a stopped network goes back to its best epoch's weights (the lowest
        validation loss), as the official ``train_model`` reloads them. The result's validation
        loss and objective are the means of the last ``min(patience, epochs)`` epochs' (what
        ``train_model`` returns), its other metrics the last epoch's (``epoch``: the epochs
        trained); its budget is the epochs allowed, so that candidates are ranked by their scores
        wherever the early stop, the trainer's own and no scheduler's verdict, ended them, as
        Auto-Keras ranks them. It hands the trained weights over."""
        start = time.perf_counter()
        cfg = self.config
        stop = EarlyStop(cfg.patience, cfg.min_loss_decrease)
        history: list[dict[str, float]] = []
        best: dict[str, torch.Tensor] = {}
        for metrics, _ in self.train(arch):
            history.append(metrics)
            assert self.network is not None and self.valid_batches is not None
            going = stop.epoch_end(metrics["valid_loss"] * self.valid_batches)  # (the batches' sum)
            if stop.since_lowest == 0:
                best = copy.deepcopy(self.network.state_dict())
            if not going:
                self.network.load_state_dict(best)
                break
        assert self.network is not None
        last = history[-min(cfg.patience, cfg.epochs):]
        metrics = {
            **history[-1],
            **{key: sum(m[key] for m in last) / len(last) for key in ("valid_loss", self.objective)},
        }
        state = {k: v.detach().cpu() for k, v in self.network.state_dict().items()}
        return EvalResult(
            architecture=arch, metrics=metrics, objective=self.objective, trial_id=trial_id,
            budget=cfg.epochs, seconds=time.perf_counter() - start,
            handover={"architecture": arch.to_json(), "state": state},
        )
