"""TEG-NAS's training-free indicators of a supernet under an operation mask (Chen, Gong, Wei, Shi,
Yan, Yang and Wang, "Understanding and Accelerating Neural Architecture Search with Training-Free
and Theory-Grounded Metrics"; code: VITA-Group/TEGNAS, its predecessor TE-NAS VITA-Group/TENAS).

Three indicators, each of a network at initialisation (BatchNorm on batch statistics):

- **Trainability**: the condition number of the empirical NTK on one batch,
  ``kappa = lambda_max / lambda_min`` of ``Theta = J J^T``, ``J[i] = d (sum_k f_k(x_i)) / d theta``
  over every parameter whose name holds ``weight`` (``lib/procedures/ntk.py``, ``get_ntk_n``).
  Lower trains better.
- **Expressivity**: the number of linear regions, ``R``: the distinct ReLU activation patterns
  among the inputs, each input adding ``1 / (inputs sharing its pattern)``
  (``lib/procedures/linear_region_counter.py``, ``calc_LR``). Higher is better.
- **Generalization**: the error of NTK kernel regression from a training batch to a validation
  batch with the cells' gradients only, ``PY = Theta_yx Theta_xx^-1 Y_x`` and
  ``mse = mean_i sum_k (PY - Y_y)^2`` with one-hot labels minus their batch mean
  (``get_ntk_n`` with ``loader_val``). Lower is better.

The networks are the code's, not the search network's: a tiny supernet for the NTK and the
regression (NAS-Bench-201: 3 channels, one cell per stage; DARTS: 1 channel, a normal and a
reduction cell), and a "thin" one for the regions (no stem, one channel, counted on
single-channel crops of training images: 3x3 for NAS-Bench-201, 1,000 per batch, three batches,
``te_reward_generator.py``). Operations are switched off by an architecture mask: ``-INF`` (the
code's ``INF = 1000``) in the alpha of a removed operation, 0 elsewhere, the supernet's softmax
then weighting it exactly 0. A single architecture is the mask with one operation per edge
(``arch_str2mask_201``, ``genotype2mask_darts``).

Departures, where raynas's modules differ: the DARTS thin network is counted on 4x4 crops (its
``FactorizedReduce`` needs an even size; the code uses 3x3), and both tiny DARTS networks end in
BatchNorm + ReLU before pooling, as the code's NASNet supernet. Every network keeps PyTorch's
default initialisation, as the code does in effect (its ``init_model`` knows ``kaiming_norm_fanin``
and ``kaiming_norm_fanout`` only, and the launch scripts ask for ``kaiming_normal`` / ``kaiming_norm``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.errors import ConfigError
from raynas.spaces.nb201 import EDGES, NB201_OPS
from raynas.supernet.darts import DartsSupernet, num_edges
from raynas.supernet.nb201 import Nb201Supernet
from raynas.types import Architecture, DatasetInfo

INF = 1000.0  # the code's mark of a removed operation (an alpha of -INF weighs exp(-1000) = 0)
INDICATORS: tuple[str, ...] = ("ntk", "region", "mse")
# +1: higher is better; -1: lower is better (te_reward_generator.py's _reward_sign).
SIGN = {"ntk": -1, "region": 1, "mse": -1}
TEG_SPACES = ("nb201", "darts")
# A network attribute :func:`ntk_rows` reads: False runs its passes on PyTorch's own CPU kernels.
# oneDNN's convolution backward on the one-channel maps of the DARTS NTK network took 0.2-1 ms a
# call (a 14x1x32x32 batch, torch 2.14 on 2 cores), PyTorch's own ~0.1 ms: its NTK rows 2.3 s -> 0.9 s.
# On wider networks oneDNN is the faster (NAS-Bench-201's 3 channels: even; 16: 1.5x), so only
# that network is marked.
ONEDNN = "onednn"


# -- the indicators, on any network ------------------------------------------------------------


def ntk_rows(model: nn.Module, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The NTK's gradient rows of every input: one forward pass of the batch, one backward pass per
    input of the sum of its logits (``get_ntk_n``).

    Args:
        model: The network in train mode; its output is the logits (B, K).
        inputs: The batch, (B, ...).

    Returns:
        ``J`` (B, P) over every parameter whose name holds ``weight``, and ``J_cell`` (B, P_c) over
        those among them whose name also holds ``cell`` (the regression's kernel; a column of
        zeros where there is none, as the code).
    """
    named = [(n, p) for n, p in model.named_parameters() if "weight" in n and p.requires_grad]
    params = [p for _, p in named]
    in_cell = ["cell" in n for n, _ in named]
    with _onednn(getattr(model, ONEDNN, True)):
        logits = model(inputs)  # (B, K)
        rows, cell_rows = [], []
        for i in range(logits.shape[0]):
            grads = torch.autograd.grad(logits[i].sum(), params, retain_graph=True, allow_unused=True)
            used = [(g, c) for g, c in zip(grads, in_cell, strict=True) if g is not None]
            rows.append(torch.cat([g.reshape(-1) for g, _ in used]))  # (P,)
            cell = [g.reshape(-1) for g, c in used if c]
            cell_rows.append(torch.cat(cell) if cell else logits.new_zeros(1))  # (P_c,)
    return torch.stack(rows).detach(), torch.stack(cell_rows).detach()


@contextmanager
def _onednn(enabled: bool) -> Iterator[None]:
    """The block with PyTorch's oneDNN (MKL-DNN) CPU kernels on or off (GPUs do not use them)."""
    before = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = enabled
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = before


def condition_number(jacobian: torch.Tensor) -> float:
    """``lambda_max / lambda_min`` of ``J J^T`` (float64); ``inf`` where the code's ratio is NaN or
    ``lambda_min <= 0`` (a kernel that gradient descent cannot condition; the code marks it bad)."""
    jac = jacobian.double().cpu()
    eig = torch.linalg.eigvalsh(jac @ jac.T)  # (B,), ascending
    if not bool(torch.isfinite(eig).all()) or eig[0] <= 0:
        return math.inf
    return float(eig[-1] / eig[0])


def centred_onehot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """One-hot labels minus their batch mean, (B, K) float64 (the regression's targets)."""
    onehot = F.one_hot(labels.long().cpu(), num_classes).double()
    return onehot - onehot.mean(0)


def regression_mse(
    cell_x: torch.Tensor, cell_y: torch.Tensor, targets_x: torch.Tensor, targets_y: torch.Tensor
) -> float:
    """The NTK kernel regression's error from a training batch to a validation batch:
    ``PY = (J_y J_x^T) (J_x J_x^T)^-1 Y_x``, ``mean_i sum_k (PY - Y_y)^2``; ``inf`` where
    ``J_x J_x^T`` is singular (the code marks it bad).

    Args:
        cell_x: The training batch's cell gradient rows, (B, P_c).
        cell_y: The validation batch's, (B', P_c).
        targets_x: :func:`centred_onehot` of the training labels, (B, K).
        targets_y: Of the validation labels, (B', K).
    """
    jx, jy = cell_x.double().cpu(), cell_y.double().cpu()
    try:
        kernel_inverse = torch.linalg.inv(jx @ jx.T)  # (B, B)
    except RuntimeError:  # torch.linalg.LinAlgError: singular
        return math.inf
    predicted = (jy @ jx.T) @ kernel_inverse @ targets_x  # (B', K)
    mse = float(((predicted - targets_y) ** 2).sum(1).mean(0))
    return mse if math.isfinite(mse) else math.inf


@contextmanager
def relu_outputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the outputs of every ``nn.ReLU`` whose input is a 4-D feature map, in call order,
    over the forward passes run inside the ``with`` block (the code's ``hook_in_forward``)."""
    found: list[torch.Tensor] = []

    def hook(module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if isinstance(inputs, tuple) and inputs[0].dim() == 4:
            found.append(output.detach())

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, nn.ReLU)]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def activation_codes(model: nn.Module, batches: torch.Tensor) -> torch.Tensor:
    """Every input's activation pattern: the signs of all its ReLU outputs, (N, U) in {0, 1}.

    Args:
        model: The network, in train mode (each batch is normalised on its own statistics).
        batches: (batches, n, C, H, W): run batch by batch (the code's ``sample_batch``).
    """
    codes = []
    with torch.no_grad():
        for batch in batches:
            with relu_outputs(model) as outs:
                model(batch)
            codes.append(torch.cat([o.reshape(batch.shape[0], -1) for o in outs], 1).sign())  # (n, U)
    return torch.cat(codes)  # (N, U)


def count_linear_regions(codes: torch.Tensor) -> float:
    """``calc_LR``: with ``A`` the (N, U) 0/1 codes, inputs ``i`` and ``j`` differ where
    ``A (1 - A)^T + (A (1 - A)^T)^T`` is non-zero; each input counts one over the number of inputs
    whose pattern is its own, and ``R`` is the sum: the number of distinct patterns, counted here
    as such (the code's N x N product took 0.7 s on a DARTS mask's 3,000 x 3,184 codes, this 0.04 s)."""
    return float(torch.unique(codes, dim=0).shape[0])


# -- the networks and their masks --------------------------------------------------------------


@dataclass(frozen=True)
class CellShape:
    """What TEG-NAS's networks are built from: the kind of cell and the data's classes and channels.

    Attributes:
        kind: ``nb201`` or ``darts``.
        num_classes: Output classes.
        in_channels: Image channels.
        nodes: Intermediate nodes of a DARTS cell.
        primitives: The candidate operations, in the alphas' column order.
    """

    kind: str
    num_classes: int
    in_channels: int
    nodes: int = 4
    primitives: tuple[str, ...] = NB201_OPS

    @classmethod
    def of_space(cls, space: Any, info: DatasetInfo) -> CellShape:
        """The shape of ``space``'s cells for a dataset; a ConfigError for other spaces."""
        kind = getattr(getattr(space, "architecture_type", None), "space", None)
        if kind not in TEG_SPACES:
            raise ConfigError(
                f"TEG-NAS's indicators are defined on the {' and '.join(TEG_SPACES)} supernets; "
                f"the space is {kind!r}"
            )
        if kind == "nb201":
            return cls("nb201", info.num_classes, info.in_channels)
        cfg = space.config
        return cls("darts", info.num_classes, info.in_channels, cfg.nodes, tuple(cfg.primitives))

    @classmethod
    def of_supernet(cls, supernet: nn.Module) -> CellShape:
        """The shape of a search supernet's cells; a ConfigError for other supernets."""
        classes = int(supernet.classifier.out_features)  # type: ignore[union-attr]
        channels = int(supernet.stem[0].in_channels)  # type: ignore[index]
        if isinstance(supernet, Nb201Supernet):
            return cls("nb201", classes, channels)
        if isinstance(supernet, DartsSupernet):
            return cls("darts", classes, channels, supernet.nodes, tuple(supernet.primitives))
        raise ConfigError(
            f"TEG-NAS prunes the {' and '.join(TEG_SPACES)} supernets; got {type(supernet).__name__}"
        )

    @property
    def cell_types(self) -> int:
        """Alphas of the supernet: one (NAS-Bench-201), normal and reduction (DARTS)."""
        return 1 if self.kind == "nb201" else 2

    @property
    def crop(self) -> int:
        """The side of the thin network's input crops: the code's 3 (4 for DARTS: see the module)."""
        return 3 if self.kind == "nb201" else 4


def _darts_net(shape: CellShape, *, thin: bool) -> DartsSupernet:
    net = DartsSupernet(
        channels=1, layers=3, nodes=shape.nodes, stem_multiplier=1, primitives=shape.primitives,
        mixed_op="weighted", num_classes=shape.num_classes, in_channels=1 if thin else shape.in_channels,
    )
    net.cells = net.cells[:2]  # the code's depth 2 of the NASNet supernet: normal, reduction
    width = shape.nodes * 2  # the reduction cell's output: nodes x (2 x 1 channel)
    net.global_pooling = nn.Sequential(  # type: ignore[assignment]
        nn.BatchNorm2d(width), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1)
    )
    net.classifier = nn.Linear(width, shape.num_classes)
    if thin:
        net.stem = nn.Identity()  # type: ignore[assignment]
    return net


def build_networks(shape: CellShape) -> tuple[nn.Module, nn.Module]:
    """The NTK network and the thin region network, freshly initialised (from torch's global
    stream), in train mode, every cell run edge by edge (so every ReLU is a module the region
    count sees).

    NAS-Bench-201: the code's ``C=3, N=1`` supernet with its stem; the thin one a single ``C=1``
    cell without stem, then BatchNorm + ReLU. DARTS: ``C=1`` normal and reduction cells (stem
    multiplier 1), with and without the stem.
    """
    if shape.kind == "nb201":
        ntk: nn.Module = Nb201Supernet(
            channels=3, cells_per_stage=1, mixed_op="weighted", num_classes=shape.num_classes,
            in_channels=shape.in_channels,
        )
        thin: nn.Module = Nb201Supernet(
            channels=1, cells_per_stage=1, mixed_op="weighted", num_classes=shape.num_classes, in_channels=1
        )
        thin.stem = nn.Identity()  # type: ignore[assignment]
        thin.cells = thin.cells[:1]  # type: ignore[index]
        thin.lastact = nn.Sequential(nn.BatchNorm2d(1), nn.ReLU(inplace=True))
        thin.classifier = nn.Linear(1, shape.num_classes)
    else:
        ntk, thin = _darts_net(shape, thin=False), _darts_net(shape, thin=True)
        setattr(ntk, ONEDNN, False)  # the thin network only runs forward, where oneDNN is faster
    for net in (ntk, thin):
        net.channels_last = False  # type: ignore[assignment]
        for cell in net.cells:  # type: ignore[union-attr]
            if hasattr(cell, "fused"):
                cell.fused = False
    return ntk.train(), thin.train()


def full_masks(shape: CellShape) -> list[torch.Tensor]:
    """The supernet's mask with every operation on: zeros, one (edges, ops) tensor per cell type."""
    rows = len(EDGES) if shape.kind == "nb201" else num_edges(shape.nodes)
    return [torch.zeros(rows, len(shape.primitives)) for _ in range(shape.cell_types)]


def arch_masks(shape: CellShape, arch: Architecture) -> list[torch.Tensor]:
    """One architecture as a supernet mask: 0 at its operations, ``-INF`` everywhere else
    (``arch_str2mask_201``; ``genotype2mask_darts``: edge ``(op, j)`` of node ``i`` at row
    ``j + edges before node i``)."""
    masks = [torch.full_like(m, -INF) for m in full_masks(shape)]
    primitives = list(shape.primitives)
    if shape.kind == "nb201":
        for k, op in enumerate(arch.ops):  # type: ignore[attr-defined]
            masks[0][k, primitives.index(op)] = 0.0
        return masks
    for mask, edges in zip(masks, (arch.normal, arch.reduce), strict=True):  # type: ignore[attr-defined]
        for i, (op, j) in enumerate(edges):
            mask[num_edges(i // 2) + j, primitives.index(op)] = 0.0
    return masks


def set_masks(net: nn.Module, masks: Sequence[torch.Tensor]) -> None:
    """Copy ``masks`` into the network's alphas (``set_alphas``)."""
    alphas = net.arch_parameters()[: len(masks)]  # type: ignore[operator]
    with torch.no_grad():
        for alpha, mask in zip(alphas, masks, strict=True):
            alpha.copy_(mask)


@dataclass(frozen=True)
class TegBatch:
    """What the indicators are computed on.

    Attributes:
        x: The NTK's training batch, (B, C, H, W).
        y: Its labels, (B,).
        valid_x: The regression's validation batch, (B', C, H, W).
        valid_y: Its labels, (B',).
        crops: The thin network's inputs, (batches, n, 1, k, k).
        num_classes: Classes of the one-hot targets.
    """

    x: torch.Tensor
    y: torch.Tensor
    valid_x: torch.Tensor
    valid_y: torch.Tensor
    crops: torch.Tensor
    num_classes: int


def region_crops(
    images: torch.Tensor, *, size: int, batches: int, side: int, generator: torch.Generator
) -> torch.Tensor:
    """The thin network's inputs: ``batches`` x ``size`` crops of ``side`` x ``side`` pixels of
    one channel (the code's ``RandomCrop`` without padding and ``RandChannel(1)``), each of an
    image drawn at random.

    Args:
        images: Normalised training images, (N, C, H, W).
        size: Crops per batch (the code's 1,000).
        batches: Batches (the code's 3).
        side: Crop side.
        generator: The random stream of the draws.

    Returns:
        (batches, size, 1, side, side).
    """
    n, c, h, w = images.shape
    if h < side or w < side:
        raise ConfigError(f"images of {h}x{w} pixels are smaller than the {side}x{side} region crops")
    count = batches * size
    pick = torch.randint(n, (count,), generator=generator)
    channel = torch.randint(c, (count,), generator=generator)
    top = torch.randint(h - side + 1, (count,), generator=generator)
    left = torch.randint(w - side + 1, (count,), generator=generator)
    rows = top[:, None] + torch.arange(side)  # (count, side)
    cols = left[:, None] + torch.arange(side)
    planes = images[pick, channel]  # (count, H, W)
    index = torch.arange(count)[:, None, None]
    crops = planes[index, rows[:, :, None], cols[:, None, :]]  # (count, side, side)
    return crops.reshape(batches, size, 1, side, side)


def indicators(
    ntk_net: nn.Module, thin_net: nn.Module, masks: Sequence[torch.Tensor], batch: TegBatch,
    which: Sequence[str] = INDICATORS,
) -> dict[str, float]:
    """The indicators ``which`` (a subset of ``ntk``, ``region``, ``mse``) of the two networks
    under ``masks`` (their current weights).

    Returns:
        ``ntk`` (kappa), ``region`` (R) and ``mse``, those asked for.
    """
    out: dict[str, float] = {}
    if "ntk" in which or "mse" in which:
        set_masks(ntk_net, masks)
        rows, cell_x = ntk_rows(ntk_net, batch.x)
        if "ntk" in which:
            out["ntk"] = condition_number(rows)
        if "mse" in which:
            _, cell_y = ntk_rows(ntk_net, batch.valid_x)
            out["mse"] = regression_mse(
                cell_x, cell_y, centred_onehot(batch.y, batch.num_classes),
                centred_onehot(batch.valid_y, batch.num_classes),
            )
    if "region" in which:
        set_masks(thin_net, masks)
        out["region"] = count_linear_regions(activation_codes(thin_net, batch.crops))
    return out
