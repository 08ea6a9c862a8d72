"""MiLeNAS (He, Ye, Shen and Zhang, "MiLeNAS: Efficient Neural Architecture Search via Mixed-Level
Reformulation", CVPR 2020): the architecture descends the training loss and the validation loss
together. The paper's Eq. 6 weighs the validation term by lambda; the authors' code
(``search_algorithm/architect.py``, ``step_milenas``) weighs the training term, by
``lambda_train_regularizer``, and never reads ``lambda_valid_regularizer``: raynas follows the code,

    alpha <- alpha - eta_alpha * (lambda * grad_alpha L_train(w, alpha) + grad_alpha L_val(w, alpha))

(the same at the paper's and the scripts' lambda = 1).

and the paper's model-size-based search with early stopping. The derived architecture grows as
the search goes on (parametric convolutions displace skips and pools), so one search passes
through architectures of several sizes: every epoch records the derived architecture's
parameters at the papers' evaluation size (``eval_params``: the CIFAR-10 network, 36 channels and
20 cells for DARTS cells) and the convolutions it keeps per cell (``convs_normal``,
``convs_reduce``, as the authors' ``genotype()`` counts them); with ``model_size_band`` the search
returns the architecture of best validation accuracy among the epochs whose size lies in the band,
and stops once the derived architecture has outgrown it. ``stop_at_convs`` is the authors' own
stopping rule (``train_milenas.py --early_stopping 1``: 6 convolutions in the normal cell, none in
the reduction cell).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar

from raynas.config import Check, Rule
from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES

# Candidates without weights; every other op of a DARTS cell counts as a convolution.
PARAMETER_FREE = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})


@dataclass(frozen=True)
class MilenasConfig(GradientConfig):
    """MiLeNAS settings.

    Attributes:
        mixed_level_lambda: The weight of the training loss in alpha's gradient (the code's
            ``lambda_train_regularizer``; 1 in the paper's search).
        track_model_size: Record ``eval_params`` (and the convolution counts of DARTS cells) every
            epoch.
        model_size_band: ``[low, high]`` in millions of parameters at the evaluation size: return
            the best (validation accuracy) architecture of the epochs inside the band; empty: the
            last epoch's.
        stop_above_band: With a band, end the search once the derived architecture has been larger
            than ``high`` for ``size_patience`` epochs in a row.
        size_patience: See ``stop_above_band``.
        stop_at_convs: ``[normal, reduce]``: end the search when the derived cells keep exactly
            these many convolutions (the authors' code uses 6 and 0); empty: never.
    """

    mixed_level_lambda: Annotated[float, Rule(ge=0)] = 1.0
    track_model_size: bool = True
    model_size_band: tuple[float, ...] = ()
    stop_above_band: bool = True
    size_patience: Annotated[int, Rule(ge=1)] = 1
    stop_at_convs: tuple[int, ...] = ()

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "not model_size_band or "
            "(len(model_size_band) == 2 and 0 <= model_size_band[0] < model_size_band[1])",
            "strategy.model_size_band must be [low, high] in millions with 0 <= low < high, "
            "got {list(model_size_band)}",
        ),
        Check(
            "not stop_at_convs or (len(stop_at_convs) == 2 and min(stop_at_convs) >= 0)",
            "strategy.stop_at_convs must be [normal, reduce], two counts >= 0, got {list(stop_at_convs)}",
        ),
        Check(
            "not (model_size_band or stop_at_convs) or track_model_size",
            "strategy.model_size_band and strategy.stop_at_convs need strategy.track_model_size: true",
        ),
    )


@STRATEGIES.register("milenas", config=MilenasConfig)
class Milenas(GradientStrategy):
    """Mixed-level optimisation: one architecture gradient from both data halves."""

    config: MilenasConfig
    # search_algorithm/train_milenas.py clips the architecture parameters' gradient after the
    # weights' backward pass (``clip_grad_norm_(model.arch_parameters(), args.grad_clip)``), not
    # the weights': its weights step unclipped, and so do these (DARTS cells; a recurrent cell's
    # weights are clipped as DARTS's, the authors having no recurrent search).
    clips_weights = False

    def arch_backward(self, train_batch: Batch, valid_batch: Batch) -> None:
        # Two backward passes accumulating into alpha.grad: one graph alive at a time.
        loss_train, _ = self.loss(train_batch)
        (self.config.mixed_level_lambda * loss_train).backward(inputs=self.arch_params)
        loss_valid, _ = self.loss(valid_batch)
        loss_valid.backward(inputs=self.arch_params)

    def epoch_metrics(self) -> dict[str, float]:
        """The derived architecture's size at the papers' evaluation size (the space's default
        network for CIFAR-10, or for the dataset a space names, PTB for recurrent cells) and, for
        DARTS cells, its convolutions per cell."""
        if not self.config.track_model_size:
            return {}
        from raynas.data import dataset_info
        from raynas.profile import count_params
        from raynas.spaces import SPACES

        arch = self.genotype()
        space = SPACES.create(arch.space)
        network = space.build(arch, dataset_info(getattr(space, "reference_dataset", "cifar10")))
        metrics = {"eval_params": float(count_params(network))}
        if hasattr(arch, "normal") and hasattr(arch, "reduce"):
            metrics["convs_normal"] = float(sum(op not in PARAMETER_FREE for op, _ in arch.normal))
            metrics["convs_reduce"] = float(sum(op not in PARAMETER_FREE for op, _ in arch.reduce))
        return metrics

    @classmethod
    def stop_reason(cls, config: MilenasConfig, history: Sequence[Mapping[str, Any]]) -> str | None:
        """Why the search should end after the last epoch of ``history`` (its epochs' metrics),
        or None to go on."""
        last = history[-1]
        if config.stop_at_convs and "convs_normal" in last:
            normal, reduce = config.stop_at_convs
            if (last["convs_normal"], last["convs_reduce"]) == (normal, reduce):
                return (
                    f"the derived cells keep {normal} and {reduce} convolutions "
                    f"(strategy.stop_at_convs = {list(config.stop_at_convs)})"
                )
        if config.model_size_band and config.stop_above_band and len(history) >= config.size_patience:
            high = config.model_size_band[1] * 1e6
            recent = history[-config.size_patience :]
            if all(m.get("eval_params", 0.0) > high for m in recent):
                return (
                    f"the derived architecture has {last['eval_params'] / 1e6:.2f}M parameters, above "
                    f"strategy.model_size_band {list(config.model_size_band)} for {config.size_patience} "
                    "epoch(s)"
                )
        return None

    @classmethod
    def final_epoch(cls, config: MilenasConfig, history: Sequence[Mapping[str, Any]]) -> int:
        """The epoch whose architecture the search returns: with a size band, the one of best
        validation accuracy among those in the band (the last if none is); else the last."""
        if not config.model_size_band:
            return len(history) - 1
        low, high = (x * 1e6 for x in config.model_size_band)
        inside = [i for i, m in enumerate(history) if low <= m.get("eval_params", -1.0) <= high]
        if not inside:
            return len(history) - 1
        return max(inside, key=lambda i: (history[i]["valid_acc"], i))
