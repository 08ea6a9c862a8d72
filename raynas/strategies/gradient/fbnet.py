"""FBNet's latency-aware DNAS (Wu et al., "FBNet: Hardware-Aware Efficient ConvNet Design via
Differentiable Neural Architecture Search", CVPR 2019).

Every training pass draws each layer's block weights from the (soft) Gumbel-softmax of ``theta``
at temperature ``tau``, annealed as ``tau_start * tau_decay ** epoch`` (5.0 and 0.956 =
exp(-0.045) per epoch). The loss of both steps is

    L(a, w_a) = CE(a, w_a) * alpha * log(LAT(a)) ** beta,

with ``LAT(a) = sum_l sum_i m_{l,i} * LAT_l(block_i)`` the latency the device's lookup table
predicts under the same Gumbel weights ``m``, so that it is differentiable in ``theta`` (the
epoch's ``train_loss`` is this loss; ``valid_loss`` stays the plain cross-entropy). The table
comes from ``latency_table``: a JSON file, or a device name in ``latency_dir`` (see
``raynas.latency``). LAT sums the searchable layers only: the stem and head are the same in every
architecture. The product form is the paper's (JunrQ/NAS's MXNet FBNet adds the terms instead;
its alpha = 0.2 and beta = 0.6 are the defaults here). ``log(LAT) ** beta`` needs LAT > 1 in
the chosen unit: ``latency_unit: us`` suits networks that run in under a millisecond.

The schedule is the paper's (Section 4.1), not DARTS's step-by-step alternation: the first
``arch_start_epoch`` epochs (10) train the weights only (warm-up); after that every epoch first
trains the weights on the whole training part of the data and then ``theta`` on the whole
validation part (:attr:`Fbnet.alternates_by_epoch`: the loop calls :meth:`Fbnet.weight_step` on
every training batch, then :meth:`Fbnet.arch_step` on every validation batch). The paper splits its
data 80/20 (``data.train_portion: 0.8``) and trains ``theta`` with Adam at 0.01, weight decay 5e-4
(the defaults here; Adam's betas left at their defaults). The paper's final architectures are
sampled from ``P_theta`` and trained from scratch: ``final.top`` architectures drawn from the last
epoch's ``P_theta`` (:meth:`Fbnet.draw_answers`) are retrained with ``final``'s budget, and the best
is the answer; without ``final`` the answer is the distribution's mode, the most probable
architecture (the argmax of every layer's ``theta``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

import torch
from torch import nn

from raynas.config import Check, Rule, TrainConfig
from raynas.errors import ConfigError
from raynas.latency import LATENCY_DIR, REQUIRED_TABLE, LatencyTable, find_table, required_table
from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy
from raynas.strategies.registry import STRATEGIES
from raynas.train.step import StepResult


@dataclass(frozen=True)
class FbnetConfig(GradientConfig):
    """FBNet settings (alpha, beta: the defaults of JunrQ/NAS's FBNet; tau: the paper's schedule).

    Attributes:
        latency_table: A latency-table JSON file, or the name of a device whose table is
            ``<latency_dir>/<name>.json``. Resolved to an absolute path when the config is read,
            if it exists by then.
        latency_dir: Where device tables live.
        alpha: Scale of the loss.
        beta: Exponent of ``log(LAT)``.
        latency_unit: ``ms`` (the paper's) or ``us``: the unit LAT is taken in.
        tau_start: Gumbel-softmax temperature of the first epoch.
        tau_decay: Factor of the temperature per epoch.
        arch_learning_rate: Adam's learning rate for ``theta`` (the paper's 0.01).
        arch_weight_decay: Adam's weight decay for ``theta`` (the paper's 5e-4).
        arch_betas: Adam's betas (PyTorch's defaults: the paper names none).
        arch_start_epoch: Warm-up epochs that train the weights only (the paper's 10).
    """

    latency_table: str = ""
    latency_dir: str = LATENCY_DIR
    alpha: Annotated[float, Rule(gt=0)] = 0.2
    beta: Annotated[float, Rule(gt=0)] = 0.6
    latency_unit: Literal["ms", "us"] = "ms"
    tau_start: Annotated[float, Rule(gt=0)] = 5.0
    tau_decay: Annotated[float, Rule(gt=0, le=1)] = 0.956
    arch_learning_rate: float = 1e-2
    arch_weight_decay: float = 5e-4
    arch_betas: tuple[float, ...] = (0.9, 0.999)
    arch_start_epoch: int = 10

    checks: ClassVar[tuple[Check, ...]] = (REQUIRED_TABLE,)

    job_checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "space_is['layer_shapes']",
            "strategy {strategy!r} needs a layer-wise space with latency tables (space: fbnet)",
        ),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "latency_table", required_table(self.latency_table, self.latency_dir))


@STRATEGIES.register("fbnet", config=FbnetConfig)
class Fbnet(GradientStrategy):
    """First-order alternating updates of ``w`` and ``theta`` with FBNet's latency-aware loss."""

    config: FbnetConfig
    # Per epoch: the weights on all the training batches, then theta on all the validation ones.
    alternates_by_epoch = True

    def __init__(self, *, supernet: nn.Module, config: FbnetConfig, train: TrainConfig) -> None:
        super().__init__(supernet=supernet, config=config, train=train)
        if not hasattr(supernet, "layer_shapes"):
            raise ConfigError("strategy 'fbnet' needs a layer-wise space with latency tables (space: fbnet)")
        self.table = LatencyTable.load(find_table(config.latency_table, config.latency_dir))
        self.layer_latency = layer_latency_matrix(self.table, supernet)  # (layers, 9), in ms
        scale = 1000.0 if config.latency_unit == "us" else 1.0
        self.layer_latency = self.layer_latency * scale
        device = next(supernet.parameters()).device
        self.layer_latency = self.layer_latency.to(device)
        fastest = float(self.layer_latency.min(dim=1).values.sum())
        if fastest <= 1.0:
            raise ConfigError(
                f"the fastest architecture's table latency is {fastest:.3g} {config.latency_unit}: "
                "log(LAT) ** beta needs LAT > 1; set strategy.latency_unit: us"
            )
        self._set_tau()

    def tau(self) -> float:
        """The Gumbel-softmax temperature of the current epoch."""
        return self.config.tau_start * self.config.tau_decay**self.epoch

    def _set_tau(self) -> None:
        self.model.gumbel_tau = self.tau()

    def expected_latency(self, weights: torch.Tensor) -> torch.Tensor:
        """LAT under block weights (layers, 9): ``sum_l sum_i m_li * LAT_l(i)``, a scalar."""
        return (weights * self.layer_latency).sum()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """FBNet's loss ``CE * alpha * log(LAT) ** beta`` and the logits (B, classes)."""
        x, y = batch
        weights = self.model.forward_weights()  # (layers, 9): one Gumbel sample for this pass
        logits = self.model(x, weights)
        ce = self.criterion(logits, y)
        lat = self.expected_latency(weights)
        return ce * self.config.alpha * torch.log(lat) ** self.config.beta, logits

    def weight_step(self, batch: Batch) -> StepResult:
        """One SGD step of the weights on a training batch (blocks weighted by a Gumbel sample)."""
        self.model.train()
        return super().weight_step(batch)

    def arch_step(self, batch: Batch) -> None:
        """One Adam step of ``theta`` on a validation batch; nothing during the warm-up."""
        if self.epoch < self.config.arch_start_epoch:
            return
        self.model.train()
        self.a_optimizer.zero_grad(set_to_none=True)
        self.arch_backward(batch, batch)  # first order: the validation batch's loss
        self.arch_update()

    def sample_architectures(self, n: int, generator: torch.Generator | None = None) -> list[Any]:
        """``n`` architectures drawn from ``P_theta`` (every layer's block from the softmax of its
        ``theta``), as the paper draws the ones it trains from scratch."""
        return _draw(self.model.theta.detach(), n, generator)

    @staticmethod
    def draw_answers(arch_state: dict[str, Any], n: int, seed: int) -> list[Any]:
        """``n`` distinct architectures drawn from the ``P_theta`` of an epoch's recorded
        architecture state (``{"theta": ...}``), seeded: the paper's end of the search, which
        samples six architectures from the trained distribution and trains them from scratch
        (``final.top`` of them here). Fewer when ``100 n`` draws find fewer distinct ones (a
        distribution that has all but settled)."""
        theta = torch.tensor(arch_state["theta"], dtype=torch.float32)
        generator = torch.Generator().manual_seed(seed)
        found: dict[str, Any] = {}
        for _ in range(100):
            for arch in _draw(theta, n, generator):
                if len(found) < n:
                    found.setdefault(arch.key(), arch)
            if len(found) == n:
                break
        return list(found.values())

    def epoch_metrics(self) -> dict[str, float]:
        """Table latency of the derived architecture and expected under the softmax (``latency_unit``)."""
        with torch.no_grad():
            derived = self.model.theta.argmax(dim=-1)  # (layers,)
            rows = torch.arange(len(derived), device=derived.device)
            unit = self.config.latency_unit
            return {
                f"latency_{unit}": float(self.layer_latency[rows, derived].sum()),
                f"expected_latency_{unit}": float(self.expected_latency(self.model.edge_weights())),
                "tau": self.tau(),
            }

    def end_epoch(self) -> None:
        super().end_epoch()
        self._set_tau()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._set_tau()


def _draw(theta: torch.Tensor, n: int, generator: torch.Generator | None) -> list[Any]:
    """``n`` architectures, every layer's block drawn from the softmax of its row of ``theta``."""
    from raynas.ops.fbnet import FBNET_BLOCKS
    from raynas.spaces.fbnet import FbnetArch

    probs = torch.softmax(theta.float().cpu(), dim=-1)  # (layers, 9)
    picks = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, layers)
    return [FbnetArch(tuple(FBNET_BLOCKS[i] for i in row.tolist())) for row in picks]


def layer_latency_matrix(table: LatencyTable, supernet: nn.Module) -> torch.Tensor:
    """The table's milliseconds of every candidate in every layer of ``supernet``: (layers, 9)."""
    from raynas.spaces.fbnet import block_key

    rows = [[table[block_key(b, spec)] for b in supernet.primitives] for spec in supernet.layer_shapes()]
    matrix = torch.tensor(rows, dtype=torch.float32)
    if not torch.isfinite(matrix).all():
        raise ConfigError(f"latency table {table.device!r} has entries that are not finite")
    return matrix
