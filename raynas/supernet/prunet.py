"""PruNet's supernet over the FBNet space (Kierat et al., "Tiered Pruning for Efficient
Differentiable Inference-Aware Neural Architecture Search", 2022, arXiv 2209.11785).

Every searchable layer is a stochastic layer of five candidates (:data:`PRUNET_CANDIDATES`): two
*Prunodes*, stochastic bi-path blocks that search the inner (hidden) width of FBNet's inverted
residual block with kernel 3 and kernel 5, then FBNet's two grouped blocks and ``skip``. A layer
mixes its candidates with the (Gumbel-)softmax of its row of ``theta``, as FBNet does.

A Prunode holds the weights of its widest block (expansion 6) and searches the inner width over
FBNet's expansions (1, 3, 6; the widths ``c_in * e``, so every answer is a block of the FBNet space
with an entry in its latency tables). At any time it offers two paths: the block at its current
width ``W[j]`` and at the next smaller one ``W[j - 1]``, weighted ``q = (q_small, q_large)`` by the
(Gumbel-)softmax of its two logits ``phi``. Both paths share the first ``W[j - 1]`` channels, and
the 1x1 projection is linear, so the pair costs one pass of the wider block with the hidden
channels masked: channels below ``W[j - 1]`` weighted ``q_small + q_large``, the others ``q_large``
(O(1) memory and compute in the number of widths, as the paper's Prunode). Channels past ``W[j]``
are pruned: not computed, never used again. When the smaller path wins, the strategy shrinks the
Prunode (``j -= 1``) and the pair moves down (:meth:`PrunetSupernet.shrink_prunodes`); at ``j = 0``
it is a single block. Its expansion-1 path keeps a 1x1 expansion that FBNet's ``k*_e1`` block has
not (the path's weights are shared with the wider ones); the answer is FBNet's block, retrained.

Blocks of a layer (:meth:`PrunetSupernet.prune_blocks`) and whole layers
(:meth:`PrunetSupernet.prune_layers`) are removed during the search by the strategy
(``raynas.strategies.gradient.prunet``): a removed candidate's weight is exactly zero and it is no
longer computed; a removed layer keeps only ``skip``. What is removed lives in buffers (``alive``,
``levels``), so a checkpoint restores it with the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.fbnet import FBNET_BLOCKS, conv_bn, make_block
from raynas.spaces.fbnet import FbnetArch, FbnetSpaceConfig, LayerSpec, layer_specs
from raynas.supernet.base import mean_entropy

# The candidates of every stochastic layer: the Prunodes of kernel 3 and 5 first (in that order,
# the rows of ``phi``), then the FBNet blocks a Prunode does not cover.
PRUNET_CANDIDATES: tuple[str, ...] = ("k3", "k5", "k3_e1_g2", "k5_e1_g2", "skip")
PRUNODE_KERNELS: tuple[int, ...] = (3, 5)
# The inner widths a Prunode searches, as FBNet's expansions of the layer's input channels.
PRUNODE_EXPANSIONS: tuple[int, ...] = (1, 3, 6)
SKIP = PRUNET_CANDIDATES.index("skip")


def _sliced_batch_norm(x: torch.Tensor, bn: nn.BatchNorm2d, width: int) -> torch.Tensor:
    """``bn`` on the first ``width`` channels of its statistics and parameters (x: (B, width, H, W));
    the running statistics of those channels are updated in place while training."""
    weight = bn.weight[:width] if bn.weight is not None else None
    bias = bn.bias[:width] if bn.bias is not None else None
    return F.batch_norm(
        x, bn.running_mean[:width], bn.running_var[:width], weight, bias,  # type: ignore[index]
        bn.training, bn.momentum if bn.momentum is not None else 0.0, bn.eps,
    )


class Prunode(nn.Module):
    """A stochastic bi-path inverted-residual block whose inner width is searched.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the depthwise convolution.
        kernel: Depthwise kernel size.
        expansions: The inner widths searched, as multiples of ``c_in`` (ascending).
        affine: Learnable BatchNorm scale and shift.
    """

    def __init__(
        self, *, c_in: int, c_out: int, stride: int, kernel: int,
        expansions: Sequence[int] = PRUNODE_EXPANSIONS, affine: bool = True,
    ) -> None:
        super().__init__()
        if list(expansions) != sorted(set(expansions)) or expansions[0] < 1:
            raise ValueError(
                f"Prunode expansions must be ascending positive integers, got {list(expansions)}"
            )
        self.widths = tuple(c_in * e for e in expansions)
        self.stride, self.kernel = stride, kernel
        wide = self.widths[-1]
        self.expand = nn.Conv2d(c_in, wide, 1, bias=False)
        self.expand_bn = nn.BatchNorm2d(wide, affine=affine)
        self.depthwise = nn.Conv2d(
            wide, wide, kernel, stride=stride, padding=kernel // 2, groups=wide, bias=False
        )
        self.depthwise_bn = nn.BatchNorm2d(wide, affine=affine)
        self.project = nn.Conv2d(wide, c_out, 1, bias=False)
        self.project_bn = nn.BatchNorm2d(c_out, affine=affine)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor, level: int, q: torch.Tensor) -> torch.Tensor:
        """The mixture ``q_small * block(W[level-1]) + q_large * block(W[level])`` of ``x``.

        Args:
            x: (B, c_in, H, W).
            level: Index of the wider path's width in :attr:`widths`; 0 is a single path.
            q: (2,) weights of the smaller and the wider path (the smaller ignored at level 0).

        Returns:
            (B, c_out, H / stride, W / stride).
        """
        width = self.widths[level]
        h = F.relu(_sliced_batch_norm(F.conv2d(x, self.expand.weight[:width]), self.expand_bn, width))
        h = F.conv2d(
            h, self.depthwise.weight[:width], stride=self.stride, padding=self.kernel // 2, groups=width
        )
        h = F.relu(_sliced_batch_norm(h, self.depthwise_bn, width))  # (B, width, H/s, W/s)
        if level > 0:
            small = self.widths[level - 1]
            mask = torch.cat([(q[0] + q[1]).expand(small), q[1].expand(width - small)])  # (width,)
            h = h * mask.view(1, width, 1, 1).to(h.dtype)
        else:
            h = h * q[1].to(h.dtype)
        y = self.project_bn(F.conv2d(h, self.project.weight[:, :width]))  # (B, c_out, H/s, W/s)
        return x + y if self.residual else y


class PrunetLayer(nn.Module):
    """One stochastic layer: the two Prunodes, FBNet's two grouped blocks and ``skip``.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the layer.
        affine: Learnable BatchNorm scale and shift in the candidates.
    """

    def __init__(self, *, c_in: int, c_out: int, stride: int, affine: bool) -> None:
        super().__init__()
        self.candidates = nn.ModuleList([
            *(Prunode(c_in=c_in, c_out=c_out, stride=stride, kernel=k, affine=affine)
              for k in PRUNODE_KERNELS),
            *(make_block(b, c_in=c_in, c_out=c_out, stride=stride, affine=affine)
              for b in PRUNET_CANDIDATES[len(PRUNODE_KERNELS):]),
        ])

    def forward(
        self, x: torch.Tensor, weights: torch.Tensor, paths: torch.Tensor, alive: Sequence[bool],
        levels: Sequence[int],
    ) -> torch.Tensor:
        """``sum_i weights[i] * candidate_i(x)`` over the candidates still alive.

        Args:
            x: (B, c_in, H, W).
            weights: (5,) candidate weights (zero where pruned).
            paths: (2, 2) the Prunodes' path weights (small, large).
            alive: Which candidates are still in the layer.
            levels: The Prunodes' current width indices.
        """
        out: torch.Tensor | None = None
        for i, candidate in enumerate(self.candidates):
            if not alive[i]:
                continue
            y = candidate(x, levels[i], paths[i]) if i < len(PRUNODE_KERNELS) else candidate(x)
            term = y if sum(alive) == 1 else weights[i] * y
            out = term if out is None else out + term
        assert out is not None, "a stochastic layer always keeps one candidate"
        return out


class PrunetSupernet(nn.Module):
    """The FBNet macro layout with a :class:`PrunetLayer` per searchable layer.

    Architecture parameters: ``theta`` (layers, 5), the candidates' logits, and ``phi``
    (layers, 2, 2), each Prunode's logits of its smaller and wider path. Buffers: ``alive``
    (layers, 5), the candidates not pruned; ``levels`` (layers, 2), each Prunode's width index.

    Args:
        config: The space's macro layout (``bn_affine``; ``mixed_op`` is ``prunode``).
        num_classes: Output classes.
        in_channels: Image channels.
        image_size: Input resolution (the layers' latency-table keys depend on it).
    """

    def __init__(
        self, *, config: FbnetSpaceConfig, num_classes: int, in_channels: int = 3, image_size: int = 224
    ) -> None:
        super().__init__()
        self.config = config
        self.candidates = PRUNET_CANDIDATES  # the columns of theta
        self.primitives = FBNET_BLOCKS  # the blocks its answers are made of (priced by latency tables)
        self.specs: tuple[LayerSpec, ...] = layer_specs(config, image_size)
        affine = config.bn_affine
        self.stem = conv_bn(in_channels, config.stem_channels, 3, stride=config.stem_stride, affine=affine)
        self.layers = nn.ModuleList(
            PrunetLayer(c_in=s.c_in, c_out=s.c_out, stride=s.stride, affine=affine) for s in self.specs
        )
        self.head = conv_bn(self.specs[-1].c_out, config.head_channels, 1, affine=affine)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(config.head_channels, num_classes)
        n, nodes = len(self.specs), len(PRUNODE_KERNELS)
        # Near-uniform initial choices, as FBNet's theta: 1e-3 * N(0, 1).
        self.theta = nn.Parameter(1e-3 * torch.randn(n, len(PRUNET_CANDIDATES)))
        self.phi = nn.Parameter(torch.zeros(n, nodes, 2))
        self.register_buffer("alive", torch.ones(n, len(PRUNET_CANDIDATES), dtype=torch.bool))
        self.register_buffer("levels", torch.full((n, nodes), len(PRUNODE_EXPANSIONS) - 1, dtype=torch.long))
        # Set by a strategy: training passes use Gumbel-softmax samples at this temperature.
        self.gumbel_tau: float | None = None

    # --- parameters and weights ---------------------------------------------------------------

    def arch_parameters(self) -> list[nn.Parameter]:
        """``theta`` and ``phi``, optimised on validation data."""
        return [self.theta, self.phi]

    def weights(self) -> Iterator[nn.Parameter]:
        """Every parameter but ``theta`` and ``phi``, optimised on training data."""
        arch = {id(self.theta), id(self.phi)}
        return (p for p in self.parameters() if id(p) not in arch)

    def masked_theta(self) -> torch.Tensor:
        """``theta`` with pruned candidates at -inf: (layers, 5)."""
        return self.theta.masked_fill(~self.alive, -math.inf)

    def masked_phi(self) -> torch.Tensor:
        """``phi`` with the smaller path of single-path Prunodes (level 0) at -inf: (layers, 2, 2)."""
        single = torch.stack([self.levels == 0, torch.zeros_like(self.alive[:, :2])], dim=-1)
        return self.phi.masked_fill(single, -math.inf)

    def edge_weights(self, reduction: bool = False) -> torch.Tensor:
        """The candidates' probabilities, softmax of the masked ``theta``: (layers, 5)."""
        if reduction:
            raise ValueError("the PruNet supernet has no reduction cell")
        return F.softmax(self.masked_theta(), dim=-1)

    def path_weights(self) -> torch.Tensor:
        """The Prunodes' path probabilities (small, large), softmax of the masked ``phi``: (layers, 2, 2)."""
        return F.softmax(self.masked_phi(), dim=-1)

    def forward_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weights of one forward pass: candidates (layers, 5) and paths (layers, 2, 2);
        soft Gumbel-softmax samples at ``gumbel_tau`` while training with it set, else the softmaxes."""
        if self.gumbel_tau is None or not self.training:
            return self.edge_weights(), self.path_weights()
        tau = self.gumbel_tau
        return (
            F.gumbel_softmax(self.masked_theta(), tau=tau, dim=-1),
            F.gumbel_softmax(self.masked_phi(), tau=tau, dim=-1),
        )

    def forward(
        self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Logits (B, classes) of images (B, in, H, W), under ``weights`` (default: one sample)."""
        blocks, paths = self.forward_weights() if weights is None else weights
        alive, levels = self.alive.tolist(), self.levels.tolist()
        feature = self.stem(x)
        for i, layer in enumerate(self.layers):
            feature = layer(feature, blocks[i], paths[i], alive[i], levels[i])
        feature = self.head(feature)
        return self.classifier(self.global_pooling(feature).flatten(1))

    # --- pruning (called by the strategy between epochs) ----------------------------------------

    @torch.no_grad()
    def prune_blocks(self, threshold: float) -> list[tuple[int, int]]:
        """Remove every candidate whose probability in its layer is below ``threshold`` (the
        layer's most probable candidate always stays). Returns the (layer, candidate) removed."""
        probs = self.edge_weights()
        removed = []
        for layer in range(len(self.layers)):
            best = int(probs[layer].argmax())
            for i in range(len(PRUNET_CANDIDATES)):
                if self.alive[layer, i] and i != best and float(probs[layer, i]) < threshold:
                    self.alive[layer, i] = False
                    removed.append((layer, i))
        return removed

    @torch.no_grad()
    def prune_layers(self, threshold: float) -> list[int]:
        """Reduce to ``skip`` every layer whose ``skip`` probability exceeds ``threshold``
        (its other candidates removed). Returns the layers removed."""
        probs = self.edge_weights()
        removed = []
        for layer in range(len(self.layers)):
            choices = int(self.alive[layer].sum())
            if choices > 1 and self.alive[layer, SKIP] and float(probs[layer, SKIP]) > threshold:
                self.alive[layer] = False
                self.alive[layer, SKIP] = True
                removed.append(layer)
        return removed

    @torch.no_grad()
    def shrink_prunodes(self, threshold: float) -> list[tuple[int, int]]:
        """Move every alive Prunode whose smaller path's probability exceeds ``threshold`` one
        width down (its wider channels pruned) and reset its ``phi`` to an even choice. Returns
        the (layer, Prunode) moved."""
        q = self.path_weights()
        moved = []
        for layer in range(len(self.layers)):
            for node in range(len(PRUNODE_KERNELS)):
                shrinkable = bool(self.alive[layer, node]) and int(self.levels[layer, node]) > 0
                if shrinkable and float(q[layer, node, 0]) > threshold:
                    self.levels[layer, node] -= 1
                    self.phi[layer, node] = 0.0
                    moved.append((layer, node))
        return moved

    # --- the answer and tracking -----------------------------------------------------------------

    def candidate_block(self, layer: int, index: int, take_wider: bool) -> str:
        """The FBNet block that candidate ``index`` of ``layer`` stands for (a Prunode: at its wider
        or its smaller width)."""
        if index >= len(PRUNODE_KERNELS):
            return PRUNET_CANDIDATES[index]
        level = int(self.levels[layer, index])
        width = level if take_wider or level == 0 else level - 1
        return f"k{PRUNODE_KERNELS[index]}_e{PRUNODE_EXPANSIONS[width]}"

    def genotype(self) -> FbnetArch:
        """Every layer's most probable candidate; a Prunode at its more probable width."""
        with torch.no_grad():
            best = self.masked_theta().argmax(dim=-1).tolist()
            q = self.path_weights()
            wider = (q[..., 1] >= q[..., 0]).tolist()  # (layers, 2): ties take the wider width
            return FbnetArch(tuple(
                self.candidate_block(layer, i, i >= len(PRUNODE_KERNELS) or wider[layer][i])
                for layer, i in enumerate(best)
            ))

    def arch_state(self) -> dict[str, list[list[float]]]:
        """``theta`` (layers, 5) and ``phi`` (2 rows per layer: Prunode k3, k5), pruned entries at
        -1e9 (a softmax of zero), as nested lists."""
        with torch.no_grad():
            theta = self.masked_theta().clamp_min(-1e9)
            phi = self.masked_phi().clamp_min(-1e9).reshape(-1, 2)
            return {"theta": theta.cpu().tolist(), "phi": phi.cpu().tolist()}

    def arch_entropy(self) -> float:
        """Mean entropy of the layers' candidate distributions (nats; log(5) is uniform)."""
        return mean_entropy(self.edge_weights())

    def max_entropy(self) -> float:
        """Entropy of a uniform distribution over the five candidates."""
        return math.log(len(PRUNET_CANDIDATES))

    def layer_shapes(self) -> Sequence[LayerSpec]:
        """The shapes of every searchable layer (what a latency table is keyed by)."""
        return self.specs
