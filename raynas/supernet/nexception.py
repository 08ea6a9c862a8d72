"""The NEXcepTion macro space's weight-sharing supernet: every network of the space
(:mod:`raynas.spaces.nexception`) in one module, each decision relaxed as DARTS relaxes an edge.

Each decision has a row of architecture parameters ``alpha``; its softmax weights (a soft
Gumbel-softmax sample while a strategy sets ``gumbel_tau`` and the model trains, one-hot rows on a
path) mix:

- stems, activations, norms, poolings, block ends and middle blocks: the weighted sum of their
  outputs (each option its own weights, except that the activation and norm options share the
  convolutions around them);
- activation places: the entry and exit blocks' separable convolutions and norms run once with
  activations before every convolution and once with one between them, and the two are mixed;
- kernel sizes: one depthwise kernel of the largest size, multiplied by ``sum_k p_k M_k`` where
  ``M_k`` keeps the central k x k entries (a zero-padded k x k kernel computes what a k x k one does);
- middle depths: the flow's output is ``sum_j p_j`` times its feature after ``d_j`` blocks.

With one-hot weights (:meth:`NexceptionSupernet.set_path`) only the chosen options run, and the
supernet computes exactly the stand-alone network :meth:`NexceptionSupernet.extract` returns.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops.nexception import (
    BOTTLENECK_EXPANSION,
    SqueezeExcite,
    StridedPointwise,
    make_activation,
    make_norm,
    make_pool,
)
from raynas.spaces.nexception import NexceptionArch, NexceptionSpace, XceptionNet
from raynas.supernet.convnext import _mix
from raynas.supernet.decisions import DecisionSupernet
from raynas.supernet.registry import SUPERNETS
from raynas.types import DatasetInfo


class _Weights:
    """The current forward pass's mixing weights by decision name, shared by the supernet's modules."""

    def __init__(self) -> None:
        self.by_name: dict[str, torch.Tensor] = {}

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.by_name[name]


class MixedActivation(nn.Module):
    def __init__(self, names: Sequence[str], w: _Weights) -> None:
        super().__init__()
        self.acts = nn.ModuleList(make_activation(n) for n in names)
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.w["activation"], [lambda a=a: a(x) for a in self.acts])


class MixedNorm(nn.Module):
    def __init__(self, names: Sequence[str], channels: int, w: _Weights) -> None:
        super().__init__()
        self.names = tuple(names)
        self.norms = nn.ModuleDict({n: make_norm(n, channels) for n in self.names})
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.w["norm"], [lambda n=n: self.norms[n](x) for n in self.names])


class ElasticSeparable(nn.Module):
    """A separable convolution whose depthwise kernel is the largest size, masked to the mixed size."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, w: _Weights) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in, bias=False)
        self.pointwise = nn.Conv2d(c_in, c_out, 1, bias=False)
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, c_in, H, W) -> (B, c_out, H, W)
        kernel = self.depthwise.weight * self.w["kernel"]  # (c_in, 1, K, K), zero outside the chosen k x k
        return self.pointwise(F.conv2d(x, kernel, padding=self.depthwise.padding, groups=x.size(1)))


class MixedEnd(nn.Module):
    """No block end, or squeeze and excitation (its activation mixed), mixed."""

    def __init__(self, names: Sequence[str], channels: int, activations: Sequence[str], w: _Weights) -> None:
        super().__init__()
        self.names = tuple(names)
        self.se = SqueezeExcite(channels, "relu") if "se" in self.names else None
        if self.se is not None:
            self.se.act = MixedActivation(activations, w)
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.w["block end"], [lambda n=n: x if n == "none" else self.se(x) for n in self.names])


class MixedPool(nn.Module):
    def __init__(self, names: Sequence[str], channels: int, w: _Weights) -> None:
        super().__init__()
        self.names = tuple(names)
        self.pools = nn.ModuleDict({n: make_pool(n, channels) for n in self.names})
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _mix(self.w["pooling"], [lambda n=n: self.pools[n](x) for n in self.names])


class FlowBlock(nn.Module):
    """An entry- or exit-flow block with every choice mixed."""

    def __init__(
        self,
        *,
        c_in: int,
        c_out: int,
        stride: int,
        grow_first: bool,
        first_activation: bool,
        k_max: int,
        space: NexceptionSpace,
        w: _Weights,
    ) -> None:
        super().__init__()
        c = space.config
        mid = c_out if grow_first else c_in
        self.convs = nn.ModuleList(
            [ElasticSeparable(c_in, mid, k_max, w), ElasticSeparable(mid, c_out, k_max, w)]
        )
        self.norms = nn.ModuleList([MixedNorm(c.norm_choices, mid, w), MixedNorm(c.norm_choices, c_out, w)])
        self.act = MixedActivation(c.activation_choices, w)
        self.places = c.places_choices
        self.first_activation = first_activation
        self.pool = MixedPool(c.pool_choices, c_out, w) if stride == 2 else nn.Identity()
        self.end = MixedEnd(c.block_end_choices, c_out, c.activation_choices, w)
        self.skip_conv = StridedPointwise(c_in, c_out, stride) if c_in != c_out or stride != 1 else None
        self.skip_norm = MixedNorm(c.norm_choices, c_out, w) if self.skip_conv is not None else None
        self.w = w

    def _rep(self, x: torch.Tensor, places: str) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if (places == "every" and (i > 0 or self.first_activation)) or (places == "fewer" and i == 1):
                x = self.act(x)
            x = norm(conv(x))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _mix(self.w["activation places"], [lambda p=p: self._rep(x, p) for p in self.places])
        skip = x if self.skip_conv is None else self.skip_norm(self.skip_conv(x))
        return self.end(self.pool(h)) + skip


class MiddleBlock(nn.Module):
    """Xception's middle block and NEXcepTion's bottleneck, mixed."""

    def __init__(self, channels: int, k_max: int, space: NexceptionSpace, w: _Weights) -> None:
        super().__init__()
        c = space.config
        self.names = c.middle_choices
        hidden = BOTTLENECK_EXPANSION * channels
        n, a = c.norm_choices, c.activation_choices
        self.branches = nn.ModuleDict()
        if "xception" in self.names:
            self.branches["xception"] = nn.Sequential(
                *(
                    m
                    for _ in range(3)
                    for m in (
                        MixedActivation(a, w),
                        ElasticSeparable(channels, channels, k_max, w),
                        MixedNorm(n, channels, w),
                    )
                )
            )
        if "bottleneck" in self.names:
            self.branches["bottleneck"] = nn.Sequential(
                ElasticSeparable(channels, hidden, k_max, w),
                MixedNorm(n, hidden, w),
                MixedActivation(a, w),
                ElasticSeparable(hidden, channels, k_max, w),
                MixedNorm(n, channels, w),
                ElasticSeparable(channels, channels, k_max, w),
            )
        self.ends = nn.ModuleDict({k: MixedEnd(c.block_end_choices, channels, a, w) for k in self.branches})
        self.w = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + _mix(
            self.w["middle block"], [lambda k=k: self.ends[k](self.branches[k](x)) for k in self.names]
        )


class NexceptionSupernet(DecisionSupernet):
    """Every network of a :class:`NexceptionSpace`, sharing weights, with one row of ``alpha`` per decision.

    Args:
        space: The space (its options, widths, stem stride and reductions).
        num_classes: Output classes.
        in_channels: Image channels.
    """

    def __init__(self, *, space: NexceptionSpace, num_classes: int, in_channels: int = 3) -> None:
        super().__init__()
        c = space.config
        self.space = space
        self.decisions = space.decisions()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.w = w = _Weights()
        widths, k_max = c.widths, max(c.kernel_choices)
        s = c.stem_stride
        pad = 0 if s > 1 else 1
        norms, acts = c.norm_choices, c.activation_choices
        stems = {
            "xception": lambda: nn.Sequential(
                nn.Conv2d(in_channels, widths[0] // 2, 3, stride=s, padding=pad, bias=False),
                MixedNorm(norms, widths[0] // 2, w),
                MixedActivation(acts, w),
                nn.Conv2d(widths[0] // 2, widths[0], 3, padding=pad, bias=False),
                MixedNorm(norms, widths[0], w),
                MixedActivation(acts, w),
            ),
            "patch2": lambda: nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 2 if s > 1 else 1, stride=s),
                MixedActivation(acts, w),
                MixedNorm(norms, widths[0], w),
            ),
        }
        self.stems = nn.ModuleDict({k: stems[k]() for k in c.stem_choices})
        self.entry = nn.ModuleList(
            FlowBlock(
                c_in=widths[i],
                c_out=widths[i + 1],
                stride=2 if i < c.reductions else 1,
                grow_first=True,
                first_activation=i > 0,
                k_max=k_max,
                space=space,
                w=w,
            )
            for i in range(3)
        )
        self.middle = nn.ModuleList(
            MiddleBlock(widths[3], k_max, space, w) for _ in range(max(c.depth_choices))
        )
        self.exit_block = FlowBlock(
            c_in=widths[3],
            c_out=widths[4],
            stride=2 if c.reductions > 3 else 1,
            grow_first=False,
            first_activation=True,
            k_max=k_max,
            space=space,
            w=w,
        )
        self.tail = nn.Sequential(
            nn.Conv2d(widths[4], widths[4], 3, padding=1, groups=widths[4], bias=False),
            nn.Conv2d(widths[4], widths[5], 1, bias=False),
            MixedNorm(norms, widths[5], w),
            MixedActivation(acts, w),
            nn.Conv2d(widths[5], widths[5], 3, padding=1, groups=widths[5], bias=False),
            nn.Conv2d(widths[5], widths[6], 1, bias=False),
            MixedNorm(norms, widths[6], w),
            MixedActivation(acts, w),
        )
        self.classifier = nn.Linear(widths[6], num_classes)
        kernels = torch.zeros(len(c.kernel_choices), 1, 1, k_max, k_max)
        for j, k in enumerate(c.kernel_choices):
            lo = (k_max - k) // 2
            kernels[j, ..., lo : lo + k, lo : lo + k] = 1.0
        self.register_buffer("kernel_masks", kernels, persistent=False)
        self.init_alphas()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, in, H, W) -> (B, classes)
        p = {d.name: q.to(x.device) for d, q in zip(self.decisions, self.forward_weights(), strict=True)}
        p["kernel"] = torch.einsum("k,kabij->abij", p["kernel size"], self.kernel_masks)  # (1, 1, K, K)
        self.w.by_name = p
        feature = _mix(p["stem"], [lambda k=k: self.stems[k](x) for k in self.space.config.stem_choices])
        for block in self.entry:
            feature = block(feature)
        depths = self.space.config.depth_choices
        last = max(
            d for d, q in zip(depths, p["middle depth"], strict=True) if q.requires_grad or float(q) != 0
        )
        outputs = [feature]  # after 0, 1, ... middle blocks
        for block in self.middle[:last]:
            outputs.append(block(outputs[-1]))
        feature = _mix(p["middle depth"], [lambda d=d: outputs[min(d, len(outputs) - 1)] for d in depths])
        feature = self.tail(self.exit_block(feature))  # (B, widths[6], h, w)
        return self.classifier(feature.mean((2, 3)))

    def extract(self, arch: NexceptionArch) -> XceptionNet:
        """The stand-alone network of ``arch`` with the weights it inherits (central k x k entries of
        the depthwise kernels, the chosen options' own weights, BatchNorm statistics included)."""
        a = self.space.check(arch)
        c = self.space.config
        net = XceptionNet(
            arch=a,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            stem_stride=c.stem_stride,
            reductions=c.reductions,
        )
        lo = (max(c.kernel_choices) - a.kernel_size) // 2
        k = slice(lo, lo + a.kernel_size)
        with torch.no_grad():
            _copy_all(net.stem, _chosen(self.stems[a.stem], a), k)
            for mine, theirs in zip(net.entry, self.entry, strict=True):
                _copy_flow(mine, theirs, a, k)
            for mine, theirs in zip(net.middle, self.middle, strict=False):
                _copy_all(mine.rep, _chosen(theirs.branches[a.middle], a), k)
                _copy_end(mine.end, theirs.ends[a.middle], a)
            _copy_flow(net.exit[0], self.exit_block, a, k)
            _copy_all(net.exit[1:], _chosen(self.tail, a), slice(None))
            net.classifier.load_state_dict(self.classifier.state_dict())
        return net



def _chosen(module: nn.Module, arch: NexceptionArch) -> list[nn.Module]:
    """The modules with weights that ``arch``'s path runs through in ``module``, in order (mixed
    norms resolved to the chosen one, elastic separable convolutions split in two)."""
    out: list[nn.Module] = []
    for child in module.children() if isinstance(module, nn.Sequential) else [module]:
        if isinstance(child, MixedNorm):
            out.append(child.norms[arch.norm])
        elif isinstance(child, MixedActivation):
            continue  # no weights
        elif isinstance(child, ElasticSeparable):
            out += [child.depthwise, child.pointwise]
        else:
            out.append(child)
    return out


def _weighted_leaves(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if not list(m.children()) and list(m.parameters())]


def _copy_all(dst: nn.Module, src: list[nn.Module], k: slice) -> None:
    """Copy the parameters and buffers of ``src``'s leaves into ``dst``'s, leaf by leaf (depthwise
    kernels cut to their central ``k`` x ``k`` entries)."""
    targets = _weighted_leaves(dst)
    sources = [m for s in src for m in _weighted_leaves(s)]
    assert len(targets) == len(sources), (len(targets), len(sources))
    for t, s in zip(targets, sources, strict=True):
        for value, other in zip(
            [*t.parameters(), *t.buffers()], [*s.parameters(), *s.buffers()], strict=True
        ):
            if value.dim() == 4 and other.shape[-1] != value.shape[-1]:
                other = other[..., k, k]
            value.copy_(other)


def _copy_end(dst: nn.Module, src: MixedEnd, arch: NexceptionArch) -> None:
    if arch.block_end == "se":
        assert src.se is not None
        _copy_all(dst, [src.se.fc1, src.se.bn, src.se.fc2], slice(None))


def _copy_flow(dst: nn.Module, src: FlowBlock, arch: NexceptionArch, k: slice) -> None:
    convs = [m for conv in src.convs for m in (conv.depthwise, conv.pointwise)]
    norms = [n.norms[arch.norm] for n in src.norms]
    _copy_all(dst.rep, [convs[0], convs[1], norms[0], convs[2], convs[3], norms[1]], k)
    _copy_end(dst.end, src.end, arch)
    if src.skip_conv is not None:
        assert src.skip_norm is not None
        _copy_all(dst.skip, [src.skip_conv, src.skip_norm.norms[arch.norm]], k)


@SUPERNETS.register("nexception")
def nexception_supernet(space: NexceptionSpace, dataset: DatasetInfo) -> NexceptionSupernet:
    """The weight-sharing network of the NEXcepTion macro space."""
    return NexceptionSupernet(space=space, num_classes=dataset.num_classes, in_channels=dataset.in_channels)
