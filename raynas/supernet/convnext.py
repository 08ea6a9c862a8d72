"""The ConvNeXt macro space's weight-sharing supernet: every network of the space
(:mod:`raynas.spaces.convnext`) inside the largest one, as FBNetV2 (Wan et al., CVPR 2020) shares
channels and single-path NAS (Stamoulis et al., 2019) shares kernels.

Each decision of the space has a row of architecture parameters ``alpha``; its softmax weights
(or, while a strategy sets ``gumbel_tau`` and the model trains, a soft Gumbel-softmax sample) mix:

- widths: every stage computes at its widest, its channels multiplied by the mask
  ``sum_j p_j [c < w_j]``; the hidden channels of the inverted bottleneck likewise by
  ``sum_{j,l} p_j q_l [c < e_l w_j]`` over widths and expansions;
- kernel sizes: one depthwise kernel of the largest size, multiplied by ``sum_k p_k M_k`` where
  ``M_k`` keeps the central k x k entries (a zero-padded k x k kernel computes what a k x k one does);
- depths: a stage's output is ``sum_j p_j`` times its feature after ``d_j`` blocks;
- activations, norms and stems: the weighted sum of their outputs. LayerNorm takes its
  statistics over the channels the width mask keeps (weighted by it).

With one-hot weights (:meth:`ConvNextSupernet.set_path`, single-path training and evaluation
with inherited weights) the supernet computes exactly the stand-alone network whose weights are
the leading slices of its own, and only that network's blocks run.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.convnext import LayerNorm2d
from raynas.ops.convnext_net import make_activation
from raynas.spaces.convnext import ConvNeXt, ConvNextArch, ConvNextSpace, init_weights
from raynas.supernet.decisions import DecisionSupernet
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo

LN_EPS = 1e-6


def _prefix_masks(sizes: Sequence[int], total: int) -> torch.Tensor:
    """(len(sizes), total): row j keeps the first ``sizes[j]`` entries."""
    return (torch.arange(total)[None, :] < torch.tensor(sizes)[:, None]).float()


def _mix(weights: torch.Tensor, branches: Sequence[Callable[[], torch.Tensor]]) -> torch.Tensor:
    """``sum_i weights[i] * branches[i]()``, computing no branch whose weight is exactly 0 (a path)."""
    out: torch.Tensor | None = None
    for w, branch in zip(weights, branches, strict=True):
        if not w.requires_grad and float(w) == 0.0:
            continue
        term = branch() if not w.requires_grad and float(w) == 1.0 else w * branch()
        out = term if out is None else out + term
    assert out is not None, "weights with no non-zero entry"
    return out


def masked_layer_norm(
    x: torch.Tensor, mask: torch.Tensor, norm: nn.LayerNorm, dim: int = 1
) -> torch.Tensor:
    """LayerNorm over dimension ``dim`` of ``x``, its statistics weighted by ``mask`` (the channels
    a width keeps), then masked; with a 0/1 mask, LayerNorm over the kept channels alone."""
    shape = [1] * x.dim()
    shape[dim] = -1
    m = mask.view(shape)
    total = mask.sum()
    mean = (x * m).sum(dim, keepdim=True) / total
    var = ((x - mean).square() * m).sum(dim, keepdim=True) / total
    out = (x - mean) * torch.rsqrt(var + LN_EPS) * norm.weight.view(shape) + norm.bias.view(shape)
    return out * m


class MixedNorm(nn.Module):
    """The space's norms (``ln``, ``bn``, in its order) over ``channels`` of (B, C, H, W) maps, or
    of (B, C) vectors with ``vector``; outputs are zero outside the width mask."""

    def __init__(self, names: Sequence[str], channels: int, *, vector: bool = False) -> None:
        super().__init__()
        self.names = tuple(names)
        self.norms = nn.ModuleDict({
            n: nn.LayerNorm(channels, eps=LN_EPS) if n == "ln"
            else nn.BatchNorm1d(channels) if vector else nn.BatchNorm2d(channels)
            for n in self.names
        })
        self.vector = vector

    def forward(self, x: torch.Tensor, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        m = mask if self.vector else mask[:, None, None]

        def norm(name: str) -> torch.Tensor:
            module = self.norms[name]
            return masked_layer_norm(x, mask, module) if name == "ln" else module(x) * m

        return _mix(weights, [lambda n=n: norm(n) for n in self.names])


class MixedActivation(nn.Module):
    """The space's activations, mixed."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.acts = nn.ModuleList(make_activation(n) for n in names)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return _mix(weights, [lambda a=a: a(x) for a in self.acts])


class ElasticBlock(nn.Module):
    """A ConvNeXt block at the widest width, largest kernel and expansion of its stage."""

    def __init__(
        self, *, channels: int, kernel_size: int, expansion: int, activations: Sequence[str],
        norms: Sequence[str], layer_scale_init: float,
    ) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.dwconv = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels)
        self.norm = MixedNorm(norms, channels)
        self.pwconv1 = nn.Linear(channels, expansion * channels)
        self.act = MixedActivation(activations)
        self.pwconv2 = nn.Linear(expansion * channels, channels)
        self.gamma = (
            nn.Parameter(torch.full((channels,), float(layer_scale_init))) if layer_scale_init > 0 else None
        )

    def forward(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        # x: (B, C, H, W), zero outside the width mask w["mask"] (C,)
        kernel = self.dwconv.weight * w["kernel"]  # (C, 1, K, K), zero outside the chosen k x k
        h = F.conv2d(x, kernel, self.dwconv.bias, padding=self.kernel_size // 2, groups=x.size(1))
        h = self.norm(h, w["mask"], w["norm"]).permute(0, 2, 3, 1)  # (B, H, W, C)
        h = self.act(self.pwconv1(h), w["activation"]) * w["hidden"]  # (B, H, W, E*C)
        h = self.pwconv2(h)  # (B, H, W, C)
        if self.gamma is not None:
            h = h * self.gamma
        return x + h.permute(0, 3, 1, 2) * w["mask"][:, None, None]


class ConvNextSupernet(DecisionSupernet):
    """Every network of a :class:`ConvNextSpace`, sharing weights, with one row of ``alpha`` per decision.

    Args:
        space: The space (its decisions and options, stem stride and layer scale).
        num_classes: Output classes.
        in_channels: Image channels.
    """

    def __init__(self, *, space: ConvNextSpace, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        c = space.config
        self.space = space
        self.decisions = space.decisions()
        self.widths = tuple(max(w) for w in c.width_choices)
        k_max, e_max = max(c.kernel_choices), max(c.expansion_choices)
        s = c.stem_stride
        self.in_channels = in_channels
        stems = {
            "patchify": lambda: nn.Conv2d(in_channels, self.widths[0], s, stride=s),
            "resnet": lambda: nn.Conv2d(in_channels, self.widths[0], 3 if s == 1 else 7, stride=min(s, 2),
                                        padding=1 if s == 1 else 3, bias=False),
        }
        norms = c.norm_choices
        self.stem_convs = nn.ModuleDict({k: stems[k]() for k in c.stem_choices})
        self.stem_norms = nn.ModuleDict({k: MixedNorm(norms, self.widths[0]) for k in c.stem_choices})
        self.stem_act = MixedActivation(c.activation_choices)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1) if s == 4 else nn.Identity()
        self.down_norms = nn.ModuleList(MixedNorm(norms, w) for w in self.widths[:-1])
        self.down_convs = nn.ModuleList(
            nn.Conv2d(a, b, 2, stride=2) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
        )
        self.stages = nn.ModuleList(
            nn.ModuleList(
                ElasticBlock(channels=w, kernel_size=k_max, expansion=e_max,
                             activations=c.activation_choices, norms=norms,
                             layer_scale_init=c.layer_scale_init)
                for _ in range(max(depths))
            )
            for w, depths in zip(self.widths, c.depth_choices, strict=True)
        )
        self.head_norm = MixedNorm(norms, self.widths[-1], vector=True)
        self.classifier = nn.Linear(self.widths[-1], num_classes)
        self.apply(init_weights)
        for i, (ws, w) in enumerate(zip(c.width_choices, self.widths, strict=True)):
            self.register_buffer(f"width_masks_{i}", _prefix_masks(ws, w), persistent=False)
            hidden = [_prefix_masks([e * v for e in c.expansion_choices], e_max * w) for v in ws]
            self.register_buffer(  # (widths, expansions, E*W)
                f"hidden_masks_{i}", torch.stack(hidden), persistent=False)
        kernels = torch.zeros(len(c.kernel_choices), k_max, k_max)
        for j, k in enumerate(c.kernel_choices):
            lo = (k_max - k) // 2
            kernels[j, lo : lo + k, lo : lo + k] = 1.0
        self.register_buffer("kernel_masks", kernels, persistent=False)
        self.init_alphas()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        p = [w.to(x.device) for w in self.forward_weights()]
        n = len(self.widths)
        depth_w, width_w = p[0 : 2 * n : 2], p[1 : 2 * n : 2]
        kernel_w, expansion_w, act_w, norm_w, stem_w = p[2 * n :]
        kernel = torch.einsum("k,kij->ij", kernel_w, self.kernel_masks)  # (K, K)
        masks = [width_w[i] @ getattr(self, f"width_masks_{i}") for i in range(n)]  # each (W_i,)

        def stem(kind: str) -> torch.Tensor:
            h = self.stem_norms[kind](self.stem_convs[kind](x), masks[0], norm_w)
            return self.stem_pool(self.stem_act(h, act_w)) if kind == "resnet" else h

        kinds = self.space.config.stem_choices
        feature = _mix(stem_w, [lambda k=k: stem(k) for k in kinds])  # (B, W_0, H/s, W/s)
        for i, blocks in enumerate(self.stages):
            if i:
                feature = self.down_norms[i - 1](feature, masks[i - 1], norm_w)
                feature = self.down_convs[i - 1](feature) * masks[i][:, None, None]
            hidden = torch.einsum("j,l,jlc->c", width_w[i], expansion_w, getattr(self, f"hidden_masks_{i}"))
            w = {"mask": masks[i], "hidden": hidden, "kernel": kernel, "norm": norm_w, "activation": act_w}
            depths = self.space.config.depth_choices[i]
            last = max(d for d, q in zip(depths, depth_w[i], strict=True) if q.requires_grad or float(q) != 0)
            outputs = [feature]  # after 0, 1, ... blocks
            for j in range(last):
                outputs.append(blocks[j](outputs[-1], w))
            feature = _mix(depth_w[i], [lambda d=d, o=outputs: o[min(d, len(o) - 1)] for d in depths])
        pooled = self.head_norm(feature.mean((2, 3)), masks[-1], norm_w)  # (B, W_last)
        return self.classifier(pooled)

    def extract(self, arch: ConvNextArch) -> ConvNeXt:
        """The stand-alone network of ``arch`` with the weights it inherits: the leading slices of
        the supernet's (central ones of the depthwise kernels), BatchNorm statistics included."""
        a = self.space.check(arch)
        c = self.space.config
        net = ConvNeXt(arch=a, num_classes=self.classifier.out_features, in_channels=self.in_channels,
                       stem_stride=c.stem_stride, layer_scale_init=c.layer_scale_init)
        w, hidden = a.widths, [a.expansion * v for v in a.widths]
        lo = (self.stages[0][0].kernel_size - a.kernel_size) // 2
        k = slice(lo, lo + a.kernel_size)
        with torch.no_grad():
            _copy(net.stem[0], self.stem_convs[a.stem], (w[0],))
            _copy(net.stem[1], self.stem_norms[a.stem].norms[a.norm], (w[0],))
            for i, stage in enumerate(net.stages):
                blocks = list(stage)
                if i:
                    down = blocks.pop(0)
                    _copy(down[0], self.down_norms[i - 1].norms[a.norm], (w[i - 1],))
                    _copy(down[1], self.down_convs[i - 1], (w[i], w[i - 1]))
                for block, src in zip(blocks, self.stages[i], strict=False):
                    block.dwconv.weight.copy_(src.dwconv.weight[: w[i], :, k, k])
                    block.dwconv.bias.copy_(src.dwconv.bias[: w[i]])
                    _copy(block.norm, src.norm.norms[a.norm], (w[i],))
                    _copy(block.pwconv1, src.pwconv1, (hidden[i], w[i]))
                    _copy(block.pwconv2, src.pwconv2, (w[i], hidden[i]))
                    if block.gamma is not None:
                        block.gamma.copy_(src.gamma[: w[i]])
            _copy(net.norm, self.head_norm.norms[a.norm], (w[-1],))
            _copy(net.classifier, self.classifier, (self.classifier.out_features, w[-1]))
        return net



def _copy(dst: nn.Module, src: nn.Module, sizes: tuple[int, ...]) -> None:
    """Copy the leading ``sizes`` slice of every parameter and buffer of ``src`` into ``dst``'s."""
    target = dst.norm if isinstance(dst, LayerNorm2d) else dst
    for name, tensor in [*target.named_parameters(), *target.named_buffers()]:
        value = getattr(src, name)
        index = tuple(slice(0, n) for n in sizes[: value.dim()])
        tensor.copy_(value[index] if value.dim() else value)


@SUPERNETS.register("convnext")
def convnext_supernet(space: ConvNextSpace, dataset: DatasetInfo) -> ConvNextSupernet:
    """The weight-sharing network of the ConvNeXt macro space."""
    return ConvNextSupernet(space=space, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
