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
  statistics over the channels the width mask keeps (weighted by it);
- activations and norms per block: each place only ``every`` has (an activation after the
  depthwise convolution's norm and after the residual sum, a norm after each 1x1 layer) gives
  ``p_one x + p_every f(x)``;
- downsampling: a stage's feature after its first block is the weighted sum of the separate
  downsampling layer followed by the stage's first block and of a strided block of its own; the
  norms after the patchify stem and after the pooling weigh in with ``p_separate``, as above.

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
from raynas.ops.convnext_net import ConvNeXtStageBlock, Subsample, make_activation
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


def _every(weights: torch.Tensor, names: Sequence[str], x: torch.Tensor,
           layer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A place only the ``every`` option (of ``names``, weighted by ``weights``) has a layer at."""
    return _mix(weights, [lambda n=n: layer(x) if n == "every" else x for n in names])


class ElasticBlock(nn.Module):
    """A ConvNeXt block at the widest width, largest kernel and expansion of its stage; with
    ``in_channels``, the strided block that starts a stage (ResNet's downsampling).

    Args:
        channels: The widest width of the stage.
        kernel_size: The largest kernel.
        expansion: The largest expansion.
        activations: The space's activations.
        norms: The space's norms.
        act_layers: The space's activations per block (``one``, ``every``).
        norm_layers: The space's norms per block (with ``every``, the norms after the 1x1 layers).
        layer_scale_init: Initial layer scale (0: none).
        in_channels: The previous stage's widest width, for a strided block (None: a block at
            one width).
    """

    def __init__(
        self, *, channels: int, kernel_size: int, expansion: int, activations: Sequence[str],
        norms: Sequence[str], act_layers: Sequence[str], norm_layers: Sequence[str], layer_scale_init: float,
        in_channels: int | None = None,
    ) -> None:
        super().__init__()
        c_in = channels if in_channels is None else in_channels
        self.act_layers, self.norm_layers = tuple(act_layers), tuple(norm_layers)
        every_norm = "every" in self.norm_layers
        self.kernel_size = kernel_size
        self.stride = 1 if in_channels is None else 2
        self.dwconv = nn.Conv2d(c_in, c_in, kernel_size, padding=kernel_size // 2, groups=c_in)
        self.norm = MixedNorm(norms, c_in)
        self.pwconv1 = nn.Linear(c_in, expansion * channels)
        self.hidden_norm = MixedNorm(norms, expansion * channels) if every_norm else None
        self.act = MixedActivation(activations)
        self.pwconv2 = nn.Linear(expansion * channels, channels)
        self.out_norm = MixedNorm(norms, channels) if every_norm else None
        self.gamma = (
            nn.Parameter(torch.full((channels,), float(layer_scale_init))) if layer_scale_init > 0 else None
        )
        if in_channels is not None:  # ResNet's projection shortcut, a 1x1 stride-2 convolution
            self.subsample = Subsample()
            self.shortcut_conv = nn.Conv2d(c_in, channels, 1, bias=False)
            self.shortcut_norm = MixedNorm(norms, channels)

    def forward(self, x: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        # x: (B, C_in, H, W), zero outside the width mask w["in_mask"] (C_in,); w["mask"] (C,) is
        # the output's
        mask = w["mask"]

        def act(t: torch.Tensor) -> torch.Tensor:
            return self.act(t, w["activation"])

        def norm_last(norm: MixedNorm, m: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
            return lambda t: norm(t.permute(0, 3, 1, 2), m, w["norm"]).permute(0, 2, 3, 1)

        kernel = self.dwconv.weight * w["kernel"]  # (C_in, 1, K, K), zero outside the chosen k x k
        h = F.conv2d(x, kernel, self.dwconv.bias, stride=self.stride, padding=self.kernel_size // 2,
                     groups=x.size(1))
        h = self.norm(h, w["in_mask"], w["norm"])  # (B, C_in, H/s, W/s)
        h = _every(w["act_layers"], self.act_layers, h, act)
        h = self.pwconv1(h.permute(0, 2, 3, 1))  # (B, H/s, W/s, E*C)
        if self.hidden_norm is not None:
            h = _every(w["norm_layers"], self.norm_layers, h, norm_last(self.hidden_norm, w["hidden"]))
        h = self.pwconv2(act(h) * w["hidden"])  # (B, H/s, W/s, C)
        if self.out_norm is not None:
            h = _every(w["norm_layers"], self.norm_layers, h, norm_last(self.out_norm, mask))
        if self.gamma is not None:
            h = h * self.gamma
        shortcut = (
            x if self.stride == 1
            else self.shortcut_norm(self.shortcut_conv(self.subsample(x)), mask, w["norm"])
        )
        out = shortcut + h.permute(0, 3, 1, 2) * mask[:, None, None]
        return _every(w["act_layers"], self.act_layers, out, act)


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

        def block(channels: int, in_channels: int | None = None) -> ElasticBlock:
            return ElasticBlock(
                channels=channels, kernel_size=k_max, expansion=e_max, activations=c.activation_choices,
                norms=norms, act_layers=c.act_layer_choices, norm_layers=c.norm_layer_choices,
                layer_scale_init=c.layer_scale_init, in_channels=in_channels,
            )

        self.stages = nn.ModuleList(
            nn.ModuleList(block(w) for _ in range(max(depths)))
            for w, depths in zip(self.widths, c.depth_choices, strict=True)
        )
        # the strided first block of stages 2, 3, ...: its own weights (the separate layer's
        # path shares the stages' blocks 2, 3, ... with it)
        self.strided = nn.ModuleList(
            block(b, a) for a, b in zip(self.widths[:-1], self.widths[1:], strict=True)
        ) if "strided" in c.downsample_choices else nn.ModuleList()
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
        c = self.space.config
        n = len(self.widths)
        depth_w, width_w = p[0 : 2 * n : 2], p[1 : 2 * n : 2]
        kernel_w, expansion_w, act_w, norm_w, stem_w, act_layers_w, norm_layers_w, down_w = p[2 * n :]
        kernel = torch.einsum("k,kij->ij", kernel_w, self.kernel_masks)  # (K, K)
        masks = [width_w[i] @ getattr(self, f"width_masks_{i}") for i in range(n)]  # each (W_i,)

        def separate(layer: Callable[[], torch.Tensor], without: Callable[[], torch.Tensor]) -> torch.Tensor:
            """``layer`` with separate downsampling layers, ``without`` with strided blocks."""
            return _mix(down_w, [layer if d == "separate" else without for d in c.downsample_choices])

        def stem(kind: str) -> torch.Tensor:
            h = self.stem_convs[kind](x)
            if kind == "resnet":
                return self.stem_pool(self.stem_act(self.stem_norms[kind](h, masks[0], norm_w), act_w))
            return separate(
                lambda: self.stem_norms[kind](h, masks[0], norm_w), lambda: h * masks[0][:, None, None]
            )

        def first_block(i: int, f: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
            """Stage ``i``'s (> 0) feature after its first block, from the previous stage's ``f``."""

            def downsampled() -> torch.Tensor:
                h = self.down_norms[i - 1](f, masks[i - 1], norm_w)
                return self.stages[i][0](self.down_convs[i - 1](h) * masks[i][:, None, None], w)

            return separate(downsampled, lambda: self.strided[i - 1](f, {**w, "in_mask": masks[i - 1]}))

        feature = _mix(stem_w, [lambda k=k: stem(k) for k in c.stem_choices])  # (B, W_0, H/s, W/s)
        for i, blocks in enumerate(self.stages):
            hidden = torch.einsum("j,l,jlc->c", width_w[i], expansion_w, getattr(self, f"hidden_masks_{i}"))
            w = {
                "mask": masks[i], "in_mask": masks[i], "hidden": hidden, "kernel": kernel, "norm": norm_w,
                "activation": act_w, "act_layers": act_layers_w, "norm_layers": norm_layers_w,
            }
            depths = c.depth_choices[i]
            last = max(d for d, q in zip(depths, depth_w[i], strict=True) if q.requires_grad or float(q) != 0)
            outputs = [feature]  # after 0, 1, ... blocks
            if i:
                outputs.append(first_block(i, feature, w))
            for j in range(len(outputs) - 1, last):
                outputs.append(blocks[j](outputs[-1], w))
            feature = _mix(depth_w[i], [lambda d=d, o=outputs: o[min(d, len(o) - 1)] for d in depths])
        pooled = feature.mean((2, 3))  # (B, W_last)
        pooled = separate(lambda: self.head_norm(pooled, masks[-1], norm_w), lambda: pooled)
        return self.classifier(pooled)

    def extract(self, arch: ConvNextArch) -> ConvNeXt:
        """The stand-alone network of ``arch`` with the weights it inherits: the leading slices of
        the supernet's (central ones of the depthwise kernels), BatchNorm statistics included."""
        a = self.space.check(arch)
        c = self.space.config
        net = ConvNeXt(arch=a, num_classes=self.classifier.out_features, in_channels=self.in_channels,
                       stem_stride=c.stem_stride, layer_scale_init=c.layer_scale_init)
        w = a.widths
        lo = (self.stages[0][0].kernel_size - a.kernel_size) // 2
        k = slice(lo, lo + a.kernel_size)
        separate = a.downsample == "separate"
        with torch.no_grad():
            _copy(net.stem[0], self.stem_convs[a.stem], (w[0],))
            if len(net.stem) > 1:  # no norm after a patchify stem without separate downsampling
                _copy(net.stem[1], self.stem_norms[a.stem].norms[a.norm], (w[0],))
            for i, stage in enumerate(net.stages):
                blocks = list(stage)
                sources = list(self.stages[i])
                if i and separate:
                    down = blocks.pop(0)
                    _copy(down[0], self.down_norms[i - 1].norms[a.norm], (w[i - 1],))
                    _copy(down[1], self.down_convs[i - 1], (w[i], w[i - 1]))
                elif i:
                    sources[0] = self.strided[i - 1]
                for j, (dst, src) in enumerate(zip(blocks, sources, strict=False)):
                    w_in = w[i - 1] if i and not separate and not j else w[i]
                    _copy_block(dst, src, (w_in, w[i], a.expansion * w[i]), k, a.norm)
            if separate:
                _copy(net.norm, self.head_norm.norms[a.norm], (w[-1],))
            _copy(net.classifier, self.classifier, (self.classifier.out_features, w[-1]))
        return net


def _copy_block(
    dst: ConvNeXtStageBlock, src: ElasticBlock, widths: tuple[int, int, int], k: slice, norm: str
) -> None:
    """Copy into ``dst`` the slices of ``src`` for ``widths`` (in, out, hidden) and kernel slice ``k``."""
    c_in, c_out, hidden = widths
    dst.dwconv.weight.copy_(src.dwconv.weight[:c_in, :, k, k])
    dst.dwconv.bias.copy_(src.dwconv.bias[:c_in])
    _copy(dst.norm, src.norm.norms[norm], (c_in,))
    _copy(dst.pwconv1, src.pwconv1, (hidden, c_in))
    _copy(dst.pwconv2, src.pwconv2, (c_out, hidden))
    for mine, theirs, size in (
        (dst.hidden_norm, src.hidden_norm, hidden), (dst.out_norm, src.out_norm, c_out)
    ):
        if mine is not None:
            _copy(mine, theirs.norms[norm], (size,))
    if dst.gamma is not None:
        dst.gamma.copy_(src.gamma[:c_out])
    if isinstance(dst.shortcut, nn.Sequential):
        _copy(dst.shortcut[1], src.shortcut_conv, (c_out, c_in))
        _copy(dst.shortcut[2], src.shortcut_norm.norms[norm], (c_out,))


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
