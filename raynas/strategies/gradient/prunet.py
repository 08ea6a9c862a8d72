"""PruNet's tiered pruning inside inference-aware DNAS (Kierat, Sieniawski, Fridman, Yu, Migacz,
Morkisz, Florea, "Tiered Pruning for Efficient Differentiable Inference-Aware Neural Architecture
Search", 2022, arXiv 2209.11785), on the FBNet space and its latency tables.

FBNet's search (:mod:`raynas.strategies.gradient.fbnet`: Gumbel-softmax at ``tau_start *
tau_decay ** epoch``, warm-up epochs on the weights only, then per epoch the weights on the
training part and the architecture on the validation part) with the paper's three pruning tiers
on its supernet (:mod:`raynas.supernet.prunet`, which this strategy asks the fbnet space for):

1. Prunodes: each stochastic layer's inverted-residual blocks of kernel 3 and 5 are stochastic
   bi-path blocks that search the inner width (FBNet's expansions 1, 3, 6) with two paths, the
   current width and the next smaller one, in one masked pass. After an epoch, a Prunode whose
   smaller path's probability exceeds ``prunode_threshold`` moves one width down: its wider
   channels are pruned and its two logits start even again (their Adam moments too).
2. Blocks: after an epoch, every candidate of a stochastic layer whose probability (softmax of
   its ``theta``) is below ``block_threshold`` is removed from the layer; it is no longer computed
   and its weight in the layer's mixture and in the latency is exactly zero.
3. Layers: after an epoch, a stochastic layer whose ``skip`` probability exceeds
   ``layer_threshold`` is removed: only ``skip`` is left (the identity where the shape stays).

The loss of both steps is FBNet's ``CE * alpha * log(LAT) ** beta`` with the expected latency

    LAT = sum_l sum_i m_li * LAT_l(i),  LAT_l(Prunode) = q_small * LAT_l(k_e[j-1]) + q_large * LAT_l(k_e[j]),

``m`` and ``q`` the pass's Gumbel-softmax samples of the candidates and of each Prunode's two
paths, every term an entry of the device's latency table (``k3_e1``, ``k3_e3``, ... at the layer's
shapes). Pruning starts after the warm-up. The answer is every layer's most probable candidate, a
Prunode at its more probable width: an architecture of the FBNet space.

Only the paper's abstract could be read here (see docs/fidelity.md): the three tiers and the
latency-aware DNAS are the paper's; the pruning criteria as thresholds on the probabilities, their
values, the shrink-only Prunode over FBNet's expansions and FBNet's loss are raynas's reading.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import nn

from raynas.config import Rule, TrainConfig
from raynas.errors import ConfigError
from raynas.ops.fbnet import FBNET_BLOCKS
from raynas.strategies.gradient.base import Batch, GradientConfig
from raynas.strategies.gradient.fbnet import Fbnet, FbnetConfig
from raynas.strategies.registry import STRATEGIES
from raynas.supernet.prunet import (
    PRUNET_CANDIDATES,
    PRUNODE_EXPANSIONS,
    PRUNODE_KERNELS,
    SKIP,
    PrunetSupernet,
)
from raynas.train.accel import unwrap


@dataclass(frozen=True)
class PrunetConfig(FbnetConfig):
    """PruNet's settings: FBNet's (latency table, loss, temperature, warm-up) and the pruning tiers'.

    Attributes:
        block_threshold: A candidate whose probability in its layer falls below it is removed
            (0: no block pruning).
        layer_threshold: A layer whose ``skip`` probability exceeds it keeps only ``skip``
            (1: no layer pruning).
        prunode_threshold: A Prunode whose smaller path's probability exceeds it moves one width
            down (1: the inner widths are not pruned; the answer still takes the likelier path).
            Above 0.5, so that a few steps' drift from an even choice does not prune a width.
    """

    block_threshold: Annotated[float, Rule(ge=0, lt=1, says="must be in [0, 1) (0: no block pruning)")] = 0.05
    layer_threshold: Annotated[float, Rule(gt=0, le=1, says="must be in (0, 1] (1: no layer pruning)")] = 0.5
    prunode_threshold: Annotated[
        float, Rule(gt=0, le=1, says="must be in (0, 1] (1: no pruning of inner widths)")
    ] = 0.6


@STRATEGIES.register("prunet", config=PrunetConfig)
class Prunet(Fbnet):
    """FBNet's latency-aware DNAS over Prunodes, with blocks and layers pruned between epochs."""

    config: PrunetConfig
    model: PrunetSupernet

    def __init__(self, *, supernet: nn.Module, config: PrunetConfig, train: TrainConfig) -> None:
        if not isinstance(unwrap(supernet), PrunetSupernet):  # compiled or not
            raise ConfigError(
                f"strategy 'prunet' searches the fbnet space (space: fbnet) with its Prunode supernet; "
                f"got a {type(supernet).__name__}"
            )
        super().__init__(supernet=supernet, config=config, train=train)
        cols = [[FBNET_BLOCKS.index(f"k{k}_e{e}") for e in PRUNODE_EXPANSIONS] for k in PRUNODE_KERNELS]
        # (layers, 2, widths): each Prunode's table latency at every inner width, in latency_unit.
        self.prunode_latency = self.layer_latency[:, torch.tensor(cols)]
        fixed = [FBNET_BLOCKS.index(b) for b in PRUNET_CANDIDATES[len(PRUNODE_KERNELS):]]
        self.fixed_latency = self.layer_latency[:, fixed]  # (layers, 3): g2 blocks and skip

    @classmethod
    def space_overrides(cls, config: GradientConfig) -> dict[str, Any]:
        """The fbnet space's supernet with Prunodes (``mixed_op: prunode``)."""
        return {**super().space_overrides(config), "mixed_op": "prunode"}

    def expected_latency(self, weights: Any) -> torch.Tensor:  # type: ignore[override]
        """LAT under candidate weights (layers, 5) and path weights (layers, 2, 2), a scalar."""
        blocks, paths = weights
        levels = self.model.levels.unsqueeze(-1)  # (layers, 2, 1)
        wide = self.prunode_latency.gather(-1, levels).squeeze(-1)  # (layers, 2)
        small = self.prunode_latency.gather(-1, (levels - 1).clamp_min(0)).squeeze(-1)
        nodes = paths[..., 0] * small + paths[..., 1] * wide  # (layers, 2)
        return (blocks * torch.cat([nodes, self.fixed_latency], dim=1)).sum()

    def loss(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """FBNet's ``CE * alpha * log(LAT) ** beta`` over one Gumbel sample, and the logits (B, classes)."""
        x, y = batch
        weights = self.model.forward_weights()  # (layers, 5), (layers, 2, 2)
        logits = self.model(x, weights)
        ce = self.criterion(logits, y)
        lat = self.expected_latency(weights)
        return ce * self.config.alpha * torch.log(lat) ** self.config.beta, logits

    def sample_architectures(self, n: int, generator: torch.Generator | None = None) -> list[Any]:
        """``n`` architectures drawn from the candidates' and the Prunodes' path probabilities."""
        from raynas.spaces.fbnet import FbnetArch

        model = self.model
        probs = model.edge_weights().detach().float().cpu()  # (layers, 5)
        blocks = torch.multinomial(probs, n, replacement=True, generator=generator).T  # (n, layers)
        q = model.path_weights().detach().float().cpu()  # (layers, 2, 2)
        wider = torch.rand((n, *q.shape[:2]), generator=generator) < q[..., 1]  # (n, layers, 2)
        return [
            FbnetArch(tuple(
                model.candidate_block(layer, i, i >= len(PRUNODE_KERNELS) or bool(wider[s, layer, i]))
                for layer, i in enumerate(row.tolist())
            ))
            for s, row in enumerate(blocks)
        ]

    def prune(self) -> dict[str, int]:
        """The three tiers, once: layers, then blocks, then Prunode widths. Returns how many of each."""
        model = self.model
        layers = model.prune_layers(self.config.layer_threshold)
        blocks = model.prune_blocks(self.config.block_threshold) if self.config.block_threshold > 0 else []
        moved = model.shrink_prunodes(self.config.prunode_threshold)
        state = self.a_optimizer.state.get(model.phi, {})
        for layer, node in moved:  # the moved Prunode's two new paths start from an even choice
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][layer, node] = 0.0
        return {"layers": len(layers), "blocks": len(blocks), "prunodes": len(moved)}

    def end_epoch(self) -> None:
        """Prune (after the warm-up), then advance the schedules."""
        if self.epoch >= self.config.arch_start_epoch:
            self.prune()
        super().end_epoch()

    def epoch_metrics(self) -> dict[str, float]:
        """Table latency of the derived architecture and expected under the softmaxes, and what is
        left of the supernet: candidates alive, layers reduced to ``skip``, the Prunodes' mean width."""
        model = self.model
        with torch.no_grad():
            arch = model.genotype()
            derived = sum(
                float(self.layer_latency[layer, FBNET_BLOCKS.index(b)]) for layer, b in enumerate(arch.blocks)
            )
            expected = float(self.expected_latency((model.edge_weights(), model.path_weights())))
            alive = model.alive
            only_skip = (alive.sum(dim=1) == 1) & alive[:, SKIP]
            nodes = alive[:, : len(PRUNODE_KERNELS)]
            table = torch.tensor(PRUNODE_EXPANSIONS, dtype=torch.float32, device=alive.device)
            expansions = table[model.levels]  # (layers, 2): each Prunode's wider expansion
            mean_expansion = float(expansions[nodes].mean()) if bool(nodes.any()) else 0.0
        unit = self.config.latency_unit
        return {
            f"latency_{unit}": derived,
            f"expected_latency_{unit}": expected,
            "tau": self.tau(),
            "candidates_alive": float(alive.sum()),
            "layers_pruned": float(only_skip.sum()),
            "prunode_expansion": mean_expansion,
        }
