"""The growing space of Auto-Keras (Jin, Song and Hu, "Auto-Keras: An Efficient Neural
Architecture Search System", KDD 2019; code: keras-team/autokeras 0.2-0.3, ported to
microsoft/nni as ``networkmorphism_tuner``): networks grown from a seed by network morphisms that
keep the function a network computes.

A network is a chain of blocks, each a convolution, BatchNorm and ReLU, with skip connections
between blocks, then global average pooling and a linear classifier. Block ``b`` computes::

    pre = BN_b(conv_b(h_{b-1}))                                   # (B, w_b, H_b, W_b)
    for each skip (a -> b), in the record's order:
        add:    pre = pre + proj(pool(h_a))                       # 1x1 conv, w_a -> w_b
        concat: pre = proj(cat[pre, pool(h_a)])                   # 1x1 conv, w_b + w_a -> w_b
    h_b = ReLU(pre)

(``pool`` averages ``h_a`` down to block ``b``'s resolution where a strided block lies between,
as the official code's ``_insert_pooling_layer_chain`` does.) Skips join a block before its ReLU,
so every block's output is non-negative and all four morphisms keep the function exactly (in
evaluation mode, without the official code's noise):

- ``deepen``: a new conv-BN-ReLU block after block ``i``: its convolution the identity (the
  centre tap), its BatchNorm the identity (the official code's ``deeper_conv_block``), and ReLU
  is the identity on the non-negative ``h_i``;
- ``widen``: block ``i``'s width doubled (the official ``to_wider_graph`` adds as many filters as
  the layer has) Net2Net-style (Chen et al., ICLR 2016): each new unit a copy of a random one, and
  every consumer's weights on a unit and its copies divided by their number;
- ``add_skip`` / ``concat_skip``: a new skip ``a -> b``, its projection zero (add) or the identity
  on ``pre`` and zero on ``h_a`` (concat), as the official ``to_add_skip_model`` /
  ``to_concat_skip_model`` initialise theirs.

Morphisms act on records (:func:`morph`) and on weights (:func:`morph_state`), so a candidate
starts from its parent's trained weights: an architecture records its ``parent`` (the key of the
network it was grown from) and the ``morphs`` that grow it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Annotated, Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Check, Rule, check_rules
from raynas.errors import ArchitectureError
from raynas.spaces.base import expect_arch
from raynas.spaces.registry import SPACES
from raynas.types import Architecture, DatasetInfo

if TYPE_CHECKING:  # matplotlib loads only where a picture is drawn
    from matplotlib.figure import Figure

MORPHS = ("deepen", "widen", "add_skip", "concat_skip")
SKIP_KINDS = ("add", "concat")
DEEPEN_KERNELS = (1, 3, 5)  # the official create_new_layer's choice of kernel sizes
BN_EPS = 1e-5
# Noise added to morphed weights, relative to the range of the weights it joins: the official
# layer_transformer.py's NOISE_RATIO (it breaks the symmetry of copied units).
NOISE_RATIO = 1e-4


@dataclass(frozen=True)
class Block:
    """A conv-BN-ReLU block: ``width`` output channels, a ``kernel`` x ``kernel`` convolution
    (padding ``kernel // 2``) with ``stride``."""

    width: int
    kernel: int
    stride: int = 1

    def __str__(self) -> str:
        return f"c{self.width}k{self.kernel}s{self.stride}"


@dataclass(frozen=True)
class Skip:
    """A skip connection from block ``start``'s output into block ``end`` (``start < end``),
    merged by ``kind`` (``add`` or ``concat``)."""

    start: int
    end: int
    kind: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.start}>{self.end}"


@dataclass(frozen=True)
class Morph:
    """One network morphism.

    Attributes:
        op: ``deepen``, ``widen``, ``add_skip`` or ``concat_skip``.
        layer: The block after which ``deepen`` inserts, which ``widen`` widens, or a skip's start.
        end: A skip's end block (0 otherwise).
        kernel: ``deepen``'s kernel size (0 otherwise).
        seed: Seeds ``widen``'s choice of units to copy and the noise of the weights it adds.
    """

    op: str
    layer: int
    end: int = 0
    kernel: int = 0
    seed: int = 0

    def __str__(self) -> str:
        if self.op == "deepen":
            return f"deepen {self.layer} k{self.kernel}"
        if self.op == "widen":
            return f"widen {self.layer}"
        return f"{self.op} {self.layer}>{self.end}"


_BLOCK = re.compile(r"c(\d+)k(\d+)s(\d+)")
_SKIP = re.compile(r"(add|concat):(\d+)>(\d+)")
_FORM = "c16k3s1 c16k3s2 | add:0>1"


@dataclass(frozen=True)
class MorphArch(Architecture):
    """A network of the Auto-Keras space: its blocks and skips, and where it was grown from.

    ``str()`` is the text form ``c16k3s1 c32k3s2 | add:0>1 concat:0>1`` (blocks, then skips in
    the order they merge). ``parent`` and ``morphs`` say how it was grown (``""`` and ``()`` for a
    network trained from scratch); they are left out of :meth:`canonical`, so the key names the
    network whatever its lineage.
    """

    space = "autokeras"

    blocks: tuple[Block, ...]
    skips: tuple[Skip, ...] = ()
    parent: str = ""
    morphs: tuple[Morph, ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.blocks:
            raise ArchitectureError("an autokeras network needs at least one block")
        for i, b in enumerate(self.blocks):
            if b.width < 1 or b.kernel < 1 or b.kernel % 2 == 0 or b.stride not in (1, 2):
                raise ArchitectureError(
                    f"block {i} ({b}): width >= 1, an odd kernel and stride 1 or 2 are allowed"
                )
        for s in self.skips:
            if s.kind not in SKIP_KINDS or not 0 <= s.start < s.end < len(self.blocks):
                raise ArchitectureError(
                    f"skip {s}: kind add or concat from a block to a later one (0..{len(self.blocks) - 1})"
                )
        if len(set(self.skips)) != len(self.skips):
            raise ArchitectureError("a skip connection appears twice (the official legal_graph refuses it)")
        for m in self.morphs:
            if m.op not in MORPHS:
                raise ArchitectureError(f"unknown morph {m.op!r}; choose one of: {', '.join(MORPHS)}")

    def __str__(self) -> str:
        text = " ".join(str(b) for b in self.blocks)
        return f"{text} | {' '.join(str(s) for s in self.skips)}" if self.skips else text

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": str(self), "parent": self.parent,
            "morphs": [[m.op, m.layer, m.end, m.kernel, m.seed] for m in self.morphs],
        }

    def canonical(self) -> Any:
        return str(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MorphArch:
        if not isinstance(data, dict) or "arch" not in data:
            raise ArchitectureError(f'an autokeras network is {{"arch": "{_FORM}"}}')
        try:
            morphs = tuple(
                Morph(str(o), int(a), int(e), int(k), int(s)) for o, a, e, k, s in data.get("morphs", [])
            )
        except (TypeError, ValueError):
            raise ArchitectureError("morphs: a list of [op, layer, end, kernel, seed]") from None
        return replace(cls.parse(str(data["arch"])), parent=str(data.get("parent", "")), morphs=morphs)

    @classmethod
    def parse(cls, text: str) -> MorphArch:
        """The network written as ``c<width>k<kernel>s<stride> ... | <add|concat>:<a>><b> ...``."""
        head, _, tail = text.partition("|")
        blocks, skips = [], []
        for token in head.split():
            match = _BLOCK.fullmatch(token)
            if match is None:
                raise ArchitectureError(
                    f"block {token!r}: write blocks as c<width>k<kernel>s<stride>, e.g. {_FORM!r}"
                )
            blocks.append(Block(*(int(g) for g in match.groups())))
        for token in tail.split():
            match = _SKIP.fullmatch(token)
            if match is None:
                raise ArchitectureError(f"skip {token!r}: write skips as add:<a>><b> or concat:<a>><b>")
            skips.append(Skip(int(match[2]), int(match[3]), match[1]))
        return cls(tuple(blocks), tuple(skips))

    def graph(self) -> MorphArch:
        """The network alone, without its lineage (what :meth:`morph` grows further)."""
        return MorphArch(self.blocks, self.skips)


# --- morphisms on records ---------------------------------------------------------------------


def morph(arch: MorphArch, m: Morph) -> MorphArch:
    """The network ``m`` grows from ``arch`` (no lineage); an illegal morph is an ArchitectureError."""
    blocks, skips, n = list(arch.blocks), list(arch.skips), len(arch.blocks)
    if m.op == "deepen":
        if not 0 <= m.layer < n or m.kernel not in DEEPEN_KERNELS:
            raise ArchitectureError(f"{m}: deepen after a block 0..{n - 1} with a kernel in {DEEPEN_KERNELS}")
        blocks.insert(m.layer + 1, Block(blocks[m.layer].width, m.kernel, 1))
        shift = lambda i: i + 1 if i > m.layer else i  # noqa: E731
        skips = [Skip(shift(s.start), shift(s.end), s.kind) for s in skips]
    elif m.op == "widen":
        if not 0 <= m.layer < n:
            raise ArchitectureError(f"{m}: widen a block 0..{n - 1}")
        blocks[m.layer] = replace(blocks[m.layer], width=2 * blocks[m.layer].width)
    else:
        skips.append(Skip(m.layer, m.end, m.op.removesuffix("_skip")))
    return MorphArch(tuple(blocks), tuple(skips))


def grow(arch: MorphArch, morphs: tuple[Morph, ...]) -> MorphArch:
    """``arch``'s network with ``morphs`` applied in turn."""
    out = arch.graph()
    for m in morphs:
        out = morph(out, m)
    return out


# --- the network ------------------------------------------------------------------------------


class MorphNet(nn.Module):
    """The network of a :class:`MorphArch` (see the module docstring for its forward).

    Args:
        arch: The network's blocks and skips.
        in_channels: Image channels.
        num_classes: Classifier outputs.
    """

    def __init__(self, arch: MorphArch, *, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.arch = arch.graph()
        self.blocks = nn.ModuleList()
        previous = in_channels
        for b in arch.blocks:
            self.blocks.append(nn.ModuleDict({
                "conv": nn.Conv2d(previous, b.width, b.kernel, b.stride, b.kernel // 2, bias=False),
                "bn": nn.BatchNorm2d(b.width, eps=BN_EPS),
            }))
            previous = b.width
        self.skips = nn.ModuleList()
        for s in arch.skips:
            width_in = arch.blocks[s.start].width + (arch.blocks[s.end].width if s.kind == "concat" else 0)
            self.skips.append(nn.Conv2d(width_in, arch.blocks[s.end].width, 1, bias=False))
        self.head = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W)
        outputs: list[torch.Tensor] = []
        for b, block in enumerate(self.blocks):
            pre = block["bn"](block["conv"](outputs[-1] if outputs else x))  # (B, w_b, H_b, W_b)
            for skip, proj in zip(self.arch.skips, self.skips, strict=True):
                if skip.end != b:
                    continue
                source = outputs[skip.start]  # (B, w_a, H_a, W_a)
                if source.shape[-2:] != pre.shape[-2:]:
                    source = F.adaptive_avg_pool2d(source, pre.shape[-2:])
                pre = pre + proj(source) if skip.kind == "add" else proj(torch.cat([pre, source], 1))
            outputs.append(F.relu(pre))
        return self.head(outputs[-1].mean((2, 3)))  # (B, classes)


def _noise(like: torch.Tensor, reference: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    """Uniform noise of width ``ratio`` x the range of ``reference`` (the official add_noise)."""
    if ratio == 0:
        return torch.zeros_like(like)
    span = float(reference.max() - reference.min()) if reference.numel() else 0.0
    return (torch.rand(like.shape, generator=gen, dtype=like.dtype) - 0.5) * ratio * span


def _identity_conv(width: int, kernel: int) -> torch.Tensor:
    weight = torch.zeros(width, width, kernel, kernel)  # (out, in, k, k)
    weight[torch.arange(width), torch.arange(width), kernel // 2, kernel // 2] = 1.0
    return weight


def morph_state(
    arch: MorphArch, state: dict[str, torch.Tensor], m: Morph, *, noise: float = 0.0
) -> tuple[MorphArch, dict[str, torch.Tensor]]:
    """The network ``m`` grows from ``arch`` and its weights, from ``state`` (a
    :class:`MorphNet`'s ``state_dict`` for ``arch``), computing the same function in evaluation
    mode when ``noise`` is 0.

    Args:
        arch: The network ``state`` belongs to.
        state: Its weights (not changed).
        m: The morphism.
        noise: Noise added to the new weights, relative to their neighbours' range (the official
            code adds :data:`NOISE_RATIO`; 0 keeps the function exactly).
    """
    new = morph(arch, m)
    out = {k: v.detach().clone() for k, v in state.items()}
    gen = torch.Generator().manual_seed(m.seed)
    if m.op == "deepen":
        i, width = m.layer, arch.blocks[m.layer].width
        for b in range(len(arch.blocks) - 1, i, -1):  # blocks after i move up by one
            for key in [k for k in out if k.startswith(f"blocks.{b}.")]:
                out[key.replace(f"blocks.{b}.", f"blocks.{b + 1}.", 1)] = out.pop(key)
        conv = _identity_conv(width, m.kernel)
        out[f"blocks.{i + 1}.conv.weight"] = conv + _noise(conv, torch.tensor([0.0, 1.0]), noise, gen)
        # BatchNorm as the identity in evaluation mode: (x - 0) / sqrt(var + eps) with var + eps = 1
        # (the official deeper_conv_block sets var = 1, which scales by 1/sqrt(1 + eps)).
        out[f"blocks.{i + 1}.bn.weight"] = torch.ones(width)
        out[f"blocks.{i + 1}.bn.bias"] = torch.zeros(width)
        out[f"blocks.{i + 1}.bn.running_mean"] = torch.zeros(width)
        out[f"blocks.{i + 1}.bn.running_var"] = torch.full((width,), 1.0 - BN_EPS)
        out[f"blocks.{i + 1}.bn.num_batches_tracked"] = torch.tensor(0)
    elif m.op == "widen":
        _widen(arch, out, m.layer, gen, noise)
    else:
        a, b = arch.blocks[m.layer].width, arch.blocks[m.end].width
        weight = torch.zeros(b, a, 1, 1)  # (w_b, w_a, 1, 1): the skip adds nothing
        if m.op == "concat_skip":  # identity on pre, zero on the skip's channels
            weight = torch.cat([_identity_conv(b, 1), weight], 1)  # (w_b, w_b + w_a, 1, 1)
        out[f"skips.{len(arch.skips)}.weight"] = weight + _noise(weight, torch.tensor([0.0, 1.0]), noise, gen)
    return new, out


def _widen(arch: MorphArch, out: dict[str, torch.Tensor], i: int, gen: torch.Generator, noise: float) -> None:
    """Double block ``i``'s width in ``out``, Net2Net-style: new unit ``w + j`` copies unit
    ``copy[j]``; every weight that reads a unit and its copies is divided by their number.

    The official wider_pre_conv copies units the same way but gives the copies' BatchNorm the
    identity and their readers zero weights (plus noise); copying BatchNorm too and dividing the
    readers' weights is Net2Net's rule, which the paper cites.
    """
    width = arch.blocks[i].width
    copy = torch.randint(width, (width,), generator=gen)  # the official np.random.randint(n, size=n_add)
    index = torch.cat([torch.arange(width), copy])  # unit of the new layer -> unit of the old one
    counts = torch.bincount(copy, minlength=width).float() + 1.0
    share = 1.0 / counts[index]  # (2w,)

    def rows(key: str, *, noisy: bool = False) -> None:  # the producers of the block's units
        old = out[key]
        new = old[index].clone()
        if noisy:
            new[width:] += _noise(new[width:], old, noise, gen)
        out[key] = new

    def columns(key: str, offset: int) -> None:  # readers of the block's units, at channel offset
        old = out[key]
        part = old[:, offset:offset + width][:, index]
        part = part * share.view(1, -1, *([1] * (old.dim() - 2)))
        out[key] = torch.cat([old[:, :offset], part, old[:, offset + width:]], 1)

    rows(f"blocks.{i}.conv.weight", noisy=True)
    for name in ("weight", "bias", "running_mean", "running_var"):
        rows(f"blocks.{i}.bn.{name}")
    for k, s in enumerate(arch.skips):
        if s.end == i:  # produces block i's units; a concat merge also reads them (first channels)
            rows(f"skips.{k}.weight")
            if s.kind == "concat":
                columns(f"skips.{k}.weight", 0)
        if s.start == i:  # reads block i's output (after the end block's channels for a concat)
            columns(f"skips.{k}.weight", arch.blocks[s.end].width if s.kind == "concat" else 0)
    columns(f"blocks.{i + 1}.conv.weight" if i + 1 < len(arch.blocks) else "head.weight", 0)


def grow_state(
    arch: MorphArch, state: dict[str, torch.Tensor], morphs: tuple[Morph, ...], *, noise: float = 0.0
) -> tuple[MorphArch, dict[str, torch.Tensor]]:
    """``arch``'s weights carried through ``morphs`` in turn (see :func:`morph_state`)."""
    out = arch.graph()
    for m in morphs:
        out, state = morph_state(out, state, m, noise=noise)
    return out, state


# --- the space --------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutoKerasConfig:
    """The seed network and the limits of growth (the official Constant: MODEL_LEN 3,
    MODEL_WIDTH 64, MAX_LAYERS 200, MAX_LAYER_WIDTH 4096, MAX_MODEL_SIZE 2^25).

    Attributes:
        seed_width: Width of every block of the seed network.
        seed_strides: The seed's blocks, by their strides (a stride 2 halves the resolution, as
            the official generator's pooling does).
        seed_kernel: The seed's kernel size.
        max_blocks: The most blocks a network may have.
        max_width: The widest a block may be.
        max_params: The most parameters a network may have (counted for 10 classes, 3 channels).
        sample_morphs: ``sample`` draws networks this many random morphisms from the seed, at most.
    """

    seed_width: Annotated[int, Rule(ge=1)] = 64
    seed_strides: tuple[int, ...] = (1, 2, 2)
    seed_kernel: Annotated[int, Rule(ge=1, odd=True)] = 3
    max_blocks: Annotated[int, Rule(ge=1)] = 64
    max_width: Annotated[int, Rule(ge=1)] = 4096
    max_params: Annotated[int, Rule(ge=1)] = 1 << 25
    sample_morphs: Annotated[int, Rule(ge=1)] = 4

    checks: ClassVar[tuple[Check, ...]] = (
        Check(
            "seed_strides and all(s in (1, 2) for s in seed_strides)",
            "space.seed_strides must be a non-empty list of 1s and 2s, got {list(seed_strides)}",
        ),
        Check(
            "len(seed_strides) <= max_blocks and seed_width <= max_width",
            "space.max_blocks and space.max_width must admit the seed network",
        ),
    )

    def __post_init__(self) -> None:
        check_rules(self, "space")


def param_count(arch: MorphArch, *, in_channels: int = 3, num_classes: int = 10) -> int:
    """Parameters of ``arch``'s network (convolutions, BatchNorm, skips, classifier)."""
    total, previous = 0, in_channels
    for b in arch.blocks:
        total += previous * b.width * b.kernel**2 + 2 * b.width
        previous = b.width
    for s in arch.skips:
        w_in = arch.blocks[s.start].width + (arch.blocks[s.end].width if s.kind == "concat" else 0)
        total += w_in * arch.blocks[s.end].width
    return total + previous * num_classes + num_classes


@SPACES.register(
    "autokeras", config=AutoKerasConfig,
    traits={"morphisms": True},
)
class AutoKerasSpace:
    """Networks grown from a seed by function-preserving morphisms.

    Args:
        config: The seed network and the limits of growth.
    """

    architecture_type = MorphArch

    def __init__(self, config: AutoKerasConfig | None = None) -> None:
        self.config = config or AutoKerasConfig()

    def seed_architecture(self) -> MorphArch:
        """The network a search starts from."""
        cfg = self.config
        return MorphArch(tuple(Block(cfg.seed_width, cfg.seed_kernel, s) for s in cfg.seed_strides))

    def allowed(self, arch: MorphArch) -> bool:
        """Whether ``arch`` keeps within the limits of growth."""
        cfg = self.config
        return (
            len(arch.blocks) <= cfg.max_blocks and max(b.width for b in arch.blocks) <= cfg.max_width
            and param_count(arch) <= cfg.max_params
        )

    def random_morph(self, arch: MorphArch, rng: random.Random) -> Morph | None:
        """One random morphism of ``arch`` within the limits, as the official ``transform`` draws
        them (deepen, widen or a skip, equally likely), or None if the one drawn is not allowed."""
        n = len(arch.blocks)
        kind = rng.randrange(3)
        if kind == 0:
            m = Morph("deepen", rng.randrange(n), kernel=rng.choice(DEEPEN_KERNELS))
        elif kind == 1:
            m = Morph("widen", rng.randrange(n), seed=rng.randrange(2**31))
        else:
            pairs = [(a, b, k) for k in SKIP_KINDS for a in range(n) for b in range(a + 1, n)
                     if Skip(a, b, k) not in arch.skips]
            if not pairs:
                return None
            a, b, k = rng.choice(pairs)
            m = Morph(f"{k}_skip", a, end=b)
        return m if self.allowed(morph(arch, m)) else None

    def neighbours(self, arch: MorphArch, rng: random.Random, n: int) -> list[tuple[Morph, MorphArch]]:
        """Up to ``n`` morphisms of ``arch`` and the networks they grow, from ``2n`` draws (the
        official ``transform`` with N_NEIGHBOURS = ``n``)."""
        out: list[tuple[Morph, MorphArch]] = []
        for _ in range(2 * n):
            m = self.random_morph(arch, rng)
            if m is not None:
                out.append((m, morph(arch, m)))
            if len(out) >= n:
                break
        return out

    def sample(self, rng: random.Random) -> MorphArch:
        """The seed grown by 1 to ``sample_morphs`` random morphisms (a network trained from scratch)."""
        arch = self.seed_architecture()
        for _ in range(rng.randint(1, self.config.sample_morphs)):
            m = self.random_morph(arch, rng)
            if m is not None:
                arch = morph(arch, m)
        return arch

    def contains(self, arch: Architecture) -> bool:
        """Whether ``arch`` is a network of this space: the seed's input stages and within the limits."""
        if not isinstance(arch, MorphArch):
            return False
        strides = [b.stride for b in arch.blocks if b.stride != 1]
        return strides == [s for s in self.config.seed_strides if s != 1] and self.allowed(arch)

    def parse(self, text: str) -> MorphArch:
        """A network from its text form (``c16k3s1 c16k3s2 | add:0>1``), JSON text or a JSON file."""
        arch = MorphArch.read_json(text, form=f'{{"arch": "{_FORM}"}}', noun="network")
        return arch if arch is not None else MorphArch.parse(text.strip())

    def build(
        self, arch: Architecture, dataset: DatasetInfo, *, channels: int | None = None,
        layers: int | None = None, auxiliary: bool = False,
    ) -> nn.Module:
        """The network of ``arch``, freshly initialised.

        Args:
            arch: A :class:`MorphArch`.
            dataset: Input channels and classes (any image size: the network pools globally).
            channels: Ignored: the record holds every block's width.
            layers: Ignored: the record holds the depth.
            auxiliary: Ignored: the network has no auxiliary head.
        """
        arch = expect_arch(arch, MorphArch)
        return MorphNet(arch, in_channels=dataset.in_channels, num_classes=dataset.num_classes)

    def draw(self, arch: Architecture) -> Figure:
        """The chain of blocks (width by height), skips as arcs (add: green, concat: purple)."""
        from matplotlib.figure import Figure

        arch = expect_arch(arch, MorphArch, "draws")
        n = len(arch.blocks)
        fig = Figure(figsize=(max(4.0, 1.1 * n + 1.5), 3.2), layout="constrained")
        ax = fig.subplots()
        top = max(math.log2(b.width) for b in arch.blocks)
        for i, b in enumerate(arch.blocks):
            height = 0.3 + math.log2(b.width) / max(top, 1.0)
            ax.bar(i, height, width=0.7, color="#D55E00" if b.stride == 1 else "#0072B2", edgecolor="black")
            ax.text(i, height + 0.05, str(b), ha="center", va="bottom", fontsize=7, rotation=90)
        for s in arch.skips:
            xs = np.linspace(s.start, s.end, 30)
            ys = -0.1 - 0.15 * (s.end - s.start) * np.sin(np.pi * (xs - s.start) / (s.end - s.start))
            ax.plot(xs, ys, color="#009E73" if s.kind == "add" else "#CC79A7", linewidth=1.5)
        ax.set_xlim(-0.7, n - 0.3)
        ax.set_xticks(range(n))
        ax.set_xlabel("block")
        ax.set_yticks([])
        ax.set_title(f"{arch.key()}: {n} blocks, {len(arch.skips)} skips", fontsize=10)
        return fig


__all__ = [
    "AutoKerasConfig", "AutoKerasSpace", "Block", "Morph", "MorphArch", "MorphNet", "Skip",
    "grow", "grow_state", "morph", "morph_state", "param_count",
]
