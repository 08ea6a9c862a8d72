"""Mixed operations: how a supernet edge combines its candidate operations.

The ``weighted`` op is DARTS's continuous relaxation (Liu, Simonyan and Yang, "DARTS:
Differentiable Architecture Search", ICLR 2019): the output is the sum of every candidate's
output weighted by the softmax of the edge's architecture parameters. Variants (partial-channel,
sampled) register here under their own names.

A mixed op's ``forward`` is the plain form, one edge at a time. :func:`forward_edges` computes
the edges that leave one state together and gives the same outputs and gradients: what depends on
the state alone is computed once (the leading ReLU of the convolutions, pooling and, in training,
the affine-free BatchNorm after it, the skip connection), the ``none`` candidate is never
computed (its weight times zeros adds nothing; the softmax couples the weights upstream), and
affine-free BatchNorm in training keeps its output rather than its input for the backward pass
(:class:`_TrainNorm`), which the weighted sum keeps anyway. The supernets' cells use it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import Check
from raynas.ops.darts import OPS, FactorizedReduce, Identity, Zero
from raynas.registry import Registry

MIXED_OPS: Registry[type[nn.Module]] = Registry("mixed op")

# One computed candidate of an edge: (index in the edge's ops, its weight: a tensor, or a
# fixed host number on a single path).
Term = tuple[int, torch.Tensor | float]


def takes_partial_k(mixed_op: str) -> bool:
    """Whether the mixed op registered as ``mixed_op`` sends 1/k of the channels (takes ``k``)."""
    return "k" in inspect.signature(MIXED_OPS.get(mixed_op)).parameters


def partial_k_mixed_ops() -> tuple[str, ...]:
    """The registered mixed ops that take ``k`` (:func:`takes_partial_k`)."""
    return tuple(name for name in MIXED_OPS.names() if takes_partial_k(name))


MIXED_OP_CHECKS: tuple[Check, ...] = (
    Check(
        "mixed_op in mixed_ops",
        "space.mixed_op: unknown mixed op {mixed_op!r}; choose from: {join(mixed_ops)}",
        tables={"mixed_ops": MIXED_OPS},
    ),
    Check(
        "mixed_op not in partial_k_ops or (partial_k >= 1 and channels % partial_k == 0)",
        "space.partial_k must divide space.channels ({channels}), got {partial_k}",
        tables={"partial_k_ops": partial_k_mixed_ops},
    ),
)
"""The checks of a space's ``mixed_op`` and ``partial_k`` settings (:class:`raynas.config.Check`)."""


def mixed_op_factory(
    mixed_op: str, *, primitives: Sequence[str], partial_k: int, affine: bool
) -> Callable[[int, int], nn.Module]:
    """``(channels, stride) -> mixed op`` for the op registered as ``mixed_op``, given the
    options it takes (``k`` for partial-channel ops), read from its signature so that mixed ops
    registered later plug in."""
    cls = MIXED_OPS.get(mixed_op)
    options = {"k": partial_k} if takes_partial_k(mixed_op) else {}

    def edge(channels: int, stride: int) -> nn.Module:
        return cls(channels=channels, stride=stride, primitives=primitives, affine=affine, **options)

    return edge


def fixed_choices(weights: torch.Tensor) -> list[tuple[int, float]] | None:
    """The candidates a fixed set of weights uses, as ``(index, weight)`` pairs, or None to mix all.

    Weights are fixed when they live on the host and need no gradient: a one-shot supernet's
    single path (the supernets' ``set_path`` keeps it on the CPU, so reading it costs no device
    sync). Candidates weighted exactly zero are then skipped; any other weights mix every candidate.
    """
    if weights.requires_grad or weights.device.type != "cpu":
        return None
    return [(i, w) for i, w in enumerate(weights.tolist()) if w != 0.0]


class MixedBlocks(nn.Module):
    """One searchable layer of a layer-wise space (FBNet, RAN-e): candidate blocks of the same
    shapes, combined as ``sum_k w_k * block_k(x)``; fixed weights (:func:`fixed_choices`) run only
    the blocks they use.

    Args:
        candidates: The blocks, in the column order of the layer's weights.
        sampled: Compute only the candidate with the largest weight while training (GDAS); the
            weights of the others (zero in value under a hard sample) still receive gradients.
    """

    def __init__(self, candidates: Iterable[nn.Module], *, sampled: bool = False) -> None:
        super().__init__()
        self.sampled = sampled
        self.candidates = nn.ModuleList(candidates)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, c_in, H, W); weights: (candidates,) -> (B, c_out, H/stride, W/stride)
        if self.sampled:
            index = int(weights.argmax())
            out = self.candidates[index](x)
            return out if not self.training else weights[index] * out + (weights.sum() - weights[index])
        chosen = fixed_choices(weights)
        if chosen is not None:  # a fixed path: only its blocks run
            return sum(  # type: ignore[return-value]
                w * self.candidates[i](x) if w != 1.0 else self.candidates[i](x) for i, w in chosen
            )
        return sum(w * block(x) for w, block in zip(weights, self.candidates, strict=True))  # type: ignore[return-value]


def forward_edges(
    x: torch.Tensor, edges: Sequence[nn.Module], weights: Sequence[torch.Tensor]
) -> list[torch.Tensor]:
    """``[edge(x, w) for edge, w in zip(edges, weights)]`` for mixed ops that read the same
    input, computed together by their class's ``forward_shared`` where it has one."""
    kind = type(edges[0])
    shared = getattr(kind, "forward_shared", None)
    if shared is None or any(type(e) is not kind for e in edges):
        return [edge(x, w) for edge, w in zip(edges, weights, strict=True)]
    return shared(x, edges, weights)  # type: ignore[no-any-return]


@MIXED_OPS.register("weighted")
class WeightedMixedOp(nn.Module):
    """All candidates on one edge, combined as ``sum_k w_k * op_k(x)``.

    Args:
        channels: Channels in and out of the edge.
        stride: 2 on the edges of a reduction cell that leave the cell's inputs, else 1.
        primitives: Names in :data:`raynas.ops.OPS`.
        affine: Learnable BatchNorm scale and shift (off in DARTS's search; on for RF-DARTS).
    """

    def __init__(
        self, *, channels: int, stride: int, primitives: Sequence[str], affine: bool = False
    ) -> None:
        super().__init__()
        self.stride = stride
        ops = []
        for name in primitives:
            op = OPS.get(name)(channels, stride, affine)
            if "pool" in name:  # as in DARTS: a BatchNorm after pooling in the search
                op = nn.Sequential(op, nn.BatchNorm2d(channels, affine=affine))
            ops.append(op)
        self.ops = nn.ModuleList(ops)

    def forward(self, x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        # x: (B, C, H, W); weights: (num_ops,) already normalised
        chosen = fixed_choices(weights)
        if chosen is None:
            return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))  # type: ignore[return-value]
        if not chosen:  # an edge off the single path
            return x[:, :, :: self.stride, :: self.stride].mul(0.0)  # (B, C, H/s, W/s)
        return sum(w * self.ops[i](x) if w != 1.0 else self.ops[i](x) for i, w in chosen)  # type: ignore[return-value]

    def terms(self, weights: torch.Tensor) -> tuple[list[Term], torch.Tensor | None]:
        """The candidates ``forward`` computes with their weights, ``none`` left out, and a
        term added to every output (None here; see the sampled op)."""
        chosen: Sequence[Term] | None = fixed_choices(weights)
        if chosen is None:
            chosen = list(enumerate(weights.unbind()))
        return [(i, w) for i, w in chosen if not isinstance(self.ops[i], Zero)], None

    @staticmethod
    def forward_shared(
        x: torch.Tensor, edges: Sequence[WeightedMixedOp], weights: Sequence[torch.Tensor]
    ) -> list[torch.Tensor]:
        """``[edge(x, w) ...]`` for edges with one input ``x`` (B, C, H, W), sharing what they can."""
        plans = [edge.terms(w) for edge, w in zip(edges, weights, strict=True)]
        sums = [_Sum() for _ in edges]
        relu: list[torch.Tensor] = []  # relu(x), computed on first use

        def relu_x() -> torch.Tensor:
            if not relu:
                relu.append(torch.relu(x))  # (B, C, H, W), read by every ReLU-led candidate
            return relu[0]

        # Candidate by candidate, in the edges' order, so that each sum adds up as the plain one.
        uses: dict[int, list[tuple[nn.Module, torch.Tensor | float, _Sum]]] = {}
        for edge, (terms, _), total in zip(edges, plans, sums, strict=True):
            for i, w in terms:
                uses.setdefault(i, []).append((edge.ops[i], w, total))
        for candidate in uses.values():
            _add_candidate(x, candidate, relu_x)
        return [
            total.result(x, edge.stride, extra)
            for total, (_, extra), edge in zip(sums, plans, edges, strict=True)
        ]


class _Sum:
    """One edge's weighted sum, accumulated in place in a tensor of its own (never in a
    candidate's output, which may be the input itself or saved for the backward pass)."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.owned = False

    def add(self, y: torch.Tensor, w: torch.Tensor | float) -> None:
        """Add ``w * y``."""
        if self.out is None:
            self.out = y if isinstance(w, float) and w == 1.0 else y * w
            self.owned = self.out is not y
        elif not self.owned:
            self.out, self.owned = self.out + y * w, True
        elif isinstance(w, float):
            self.out.add_(y, alpha=w)
        else:
            self.out.addcmul_(y, w)

    def add_normalised(
        self, z: torch.Tensor, w: torch.Tensor | float, norm: nn.BatchNorm2d | None
    ) -> None:
        """Add ``w * norm(z)`` (``w * z`` without a norm)."""
        if norm is None:
            self.add(z, w)
        elif isinstance(w, float) or not _train_norm_applies(norm):
            self.add(_run_steps([norm], z), w)
        elif self.out is None or self.owned:
            self.out, self.owned = _NormAdd.apply(self.out, z, w, norm)[0], True
        else:
            self.out, self.owned = self.out + _NormAdd.apply(None, z, w, norm)[0], True

    def result(self, x: torch.Tensor, stride: int, extra: torch.Tensor | None) -> torch.Tensor:
        out = self.out
        if out is None:  # nothing but ``none`` (or an edge off the single path)
            out = x[:, :, ::stride, ::stride].mul(0.0)  # (B, C, H/s, W/s)
        return out if extra is None else out + extra


def _add_candidate(
    x: torch.Tensor, uses: list[tuple[nn.Module, torch.Tensor | float, _Sum]],
    relu_x: Callable[[], torch.Tensor],
) -> None:
    """Add ``w * op(x)`` to each edge's sum for one candidate of several edges (``op`` the
    edge's copy of the candidate: the same operation with its own parameters)."""
    op = uses[0][0]
    if isinstance(op, Identity | nn.Identity):
        for _, w, total in uses:
            total.add(x, w)
    elif _is_pool_norm(op):  # the pooling is a function of x alone: once for every edge
        pooled = _pool(op[0], x)  # (B, C, H/s, W/s)
        norms = [o[1] for o, _, _ in uses]
        if all(_train_norm_applies(n) for n in norms) and len({(n.eps, n.momentum) for n in norms}) == 1:
            # Affine-free batch statistics: the same output for every edge, whose running
            # statistics are updated as if each had normalised the pooling itself.
            y = _train_norm(pooled, tuple(norms))
            for _, w, total in uses:
                total.add(y, w)
        else:  # evaluation (each edge's own statistics) or affine BatchNorm
            for o, w, total in uses:
                total.add(o[1](pooled), w)
    elif _starts_with_relu(op):
        for o, w, total in uses:
            z, norm = _until_last_norm(o, relu_x())  # op(x) = norm(z) (norm None: z)
            total.add_normalised(z, w, norm)
    else:
        for o, w, total in uses:
            total.add(o(x), w)


def _is_pool_norm(op: nn.Module) -> bool:
    return (
        isinstance(op, nn.Sequential) and len(op) == 2
        and isinstance(op[0], nn.MaxPool2d | nn.AvgPool2d) and isinstance(op[1], nn.BatchNorm2d)
    )


def _pool(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``pool(x)``; a max pooling through :class:`_MaxPool` (no indices kept)."""
    if isinstance(pool, nn.MaxPool2d) and not pool.return_indices:
        return _MaxPool.apply(x, pool)  # type: ignore[no-any-return]
    return pool(x)  # type: ignore[no-any-return]


def _steps(op: nn.Module) -> list[nn.Module]:
    """The modules ``op`` (a Sequential, possibly nested) applies in turn."""
    if isinstance(op, nn.Sequential):
        return [step for child in op for step in _steps(child)]
    return [op]


def _starts_with_relu(op: nn.Module) -> bool:
    """Whether ``op``'s first step is a plain ReLU (a Sequential's, or FactorizedReduce's);
    ops with other activations are not shared."""
    if isinstance(op, FactorizedReduce):
        return type(op.relu) is nn.ReLU
    steps = _steps(op)
    return len(steps) > 1 and type(steps[0]) is nn.ReLU


def _until_last_norm(op: nn.Module, r: torch.Tensor) -> tuple[torch.Tensor, nn.BatchNorm2d | None]:
    """``op`` (one that :func:`_starts_with_relu`) on ``r = relu(x)`` up to its last step if
    that is a BatchNorm: the BatchNorm's input and the BatchNorm (the weighted sum normalises
    and adds in one step, :class:`_NormAdd`); else ``op(x)`` and None."""
    if isinstance(op, FactorizedReduce):
        return _factorized_halves(op, r), op.bn
    steps = _steps(op)[1:]
    norm = steps.pop() if isinstance(steps[-1], nn.BatchNorm2d) else None
    return _run_steps(steps, r), norm


def _factorized_halves(op: FactorizedReduce, r: torch.Tensor) -> torch.Tensor:
    """FactorizedReduce's two halves before its BatchNorm, given ``r = relu(x)``: its 1x1
    convolutions of the even and of the odd rows and columns of ``r``."""
    halves = []
    for conv, start in ((op.conv_1, 0), (op.conv_2, 1)):
        sub = r[:, :, start::2, start::2]  # (B, C, H/2, W/2)
        if _is_pointwise_weights(conv):
            halves.append(F.conv2d(sub.contiguous(memory_format=_layout(r)), conv.weight))
        else:
            halves.append(conv(sub))
    return torch.cat(halves, dim=1)  # (B, C, H/2, W/2)


def run_steps(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``module(x)`` for a Sequential of the op tables' steps (ReLU, convolutions, BatchNorm) or a
    FactorizedReduce, keeping less for the backward pass: see :func:`_run_steps`."""
    if isinstance(module, FactorizedReduce) and type(module.relu) is nn.ReLU:
        return _run_steps([module.bn], _factorized_halves(module, torch.relu(x)))
    return _run_steps(_steps(module), x)


def _run_steps(steps: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Apply ``steps`` to ``x`` as they would run; a ReLU or depthwise convolution followed by a
    pointwise one as one :class:`_DwPw`, affine-free BatchNorm in training as :class:`_TrainNorm`."""
    i = 0
    while i < len(steps):
        relu = type(steps[i]) is nn.ReLU
        j = i + relu
        dw = steps[j] if j < len(steps) and _is_depthwise(steps[j]) else None
        k = j + (dw is not None)
        pw = steps[k] if k < len(steps) and _is_pointwise(steps[k]) else None
        if pw is not None and (relu or dw is not None):
            x = _dw_pw(x, dw, pw, relu=relu)  # type: ignore[arg-type]
            i = k + 1
            continue
        step = steps[i]
        if isinstance(step, nn.BatchNorm2d) and _train_norm_applies(step):
            x = _train_norm(x, (step,))
        else:
            x = step(x)
        i += 1
    return x


def _is_depthwise(conv: nn.Module) -> bool:
    """A bias-free depthwise convolution with "same" padding (``d * (k - 1) / 2``), stride 1 or 2."""
    return (
        isinstance(conv, nn.Conv2d) and conv.groups == conv.in_channels == conv.out_channels
        and conv.bias is None and conv.padding_mode == "zeros" and conv.stride in ((1, 1), (2, 2))
        and all(
            isinstance(p, int) and 2 * p == d * (k - 1)
            for p, d, k in zip(conv.padding, conv.dilation, conv.kernel_size, strict=True)
        )
    )


def _is_pointwise(conv: nn.Module) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.stride == (1, 1) and _is_pointwise_weights(conv)


def _is_pointwise_weights(conv: nn.Conv2d) -> bool:
    return (
        conv.kernel_size == (1, 1) and conv.padding == (0, 0) and conv.groups == 1
        and conv.bias is None and conv.padding_mode == "zeros"
    )


def _dw_pw(x: torch.Tensor, dw: nn.Conv2d | None, pw: nn.Conv2d, *, relu: bool) -> torch.Tensor:
    """``pw(dw(relu(x)))`` (ReLU and ``dw`` optional) through :class:`_DwPw`. With stride 2 and
    dilation 2 the depthwise convolution reads only the even rows and columns of its padded
    input, so it is the undilated stride-1 convolution of ``x[::2, ::2]`` with half the padding."""
    if dw is None:
        return _DwPw.apply(x, None, pw.weight, (1, 1), (0, 0), (1, 1), relu)  # type: ignore[no-any-return]
    stride, padding, dilation = dw.stride, dw.padding, dw.dilation
    if stride == (2, 2) and dilation == (2, 2):
        layout = _layout(x)  # the input's: a strided view of it is contiguous in neither
        x = (torch.relu(x) if relu else x)[:, :, ::2, ::2]
        x = x.contiguous(memory_format=layout)  # (B, C, H/2, W/2)
        relu, stride, padding, dilation = False, (1, 1), (padding[0] // 2, padding[1] // 2), (1, 1)
    return _DwPw.apply(x, dw.weight, pw.weight, stride, padding, dilation, relu)  # type: ignore[no-any-return]


def _layout(x: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if _is_channels_last(x) else torch.contiguous_format


class _DwPw(torch.autograd.Function):
    """``pw(dw(relu(x)))`` (ReLU and ``dw`` optional): a depthwise convolution ``dw`` (stride 1
    or 2) and a pointwise one, keeping only ``x`` for the backward pass. The depthwise output
    (and the ReLU's) is recomputed there from ``x``: the depthwise convolution is the cheapest
    step, and every tensor kept through the forward pass is memory the whole step holds.

    The gradients take the kernels that are fast on CPU (oneDNN, channels-last), where the native
    gradients of dilated depthwise kernels, and the input gradient of 5x5 ones, run 3-10x slower:
    the input gradient of a stride-1 depthwise convolution is the forward convolution of the
    gradient with the flipped kernel; the weight gradient of a dilation-2 kernel is that of the
    undilated kernel over the four (row, column) parity sub-grids of the input and the gradient,
    stacked in the batch (each parity class of outputs reads only its own class of inputs).
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, w_dw: torch.Tensor | None, w_pw: torch.Tensor,
        stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], relu: bool,
    ) -> torch.Tensor:
        device = x.device.type
        # Under autocast (bf16) the forward pass runs in its dtype; the backward pass, which
        # autocast does not cover, casts to it as the forward did.
        ctx.dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
        ctx.save_for_backward(x, w_dw, w_pw)
        ctx.conv = (stride, padding, dilation, relu)
        return _dw_pw_forward(x, w_dw, w_pw, stride, padding, dilation, relu)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        saved = ctx.saved_tensors
        stride, padding, dilation, relu = ctx.conv
        needed = _needed(ctx, (True, saved[1] is not None, True))
        needs_x, needs_dw, needs_pw = needed
        x, w_dw, w_pw = (t if t is None or ctx.dtype is None else t.to(ctx.dtype) for t in saved)
        if torch.is_grad_enabled():  # double backward: differentiate the recomputed forward
            z = _dw_pw_forward(x, w_dw, w_pw, stride, padding, dilation, relu)
            grads = _grad_of(z, list(saved), needed, grad)
            return (*grads, None, None, None, None)
        channels = x.shape[1]
        grad_r = grad_dw = grad_pw = grad_d = None
        # The depthwise output d (the ReLU's, or x, without dw) only for pw's weight gradient;
        # the input gradient of a 1x1 convolution is the 1x1 convolution of the output's
        # gradient with the transposed kernel.
        r = torch.relu(x) if relu and (needs_pw or needs_dw) else x  # (B, C, H, W)
        if needs_pw:
            d = r if w_dw is None else F.conv2d(r, w_dw, None, stride, padding, dilation, channels)
            grad_d, grad_pw, _ = torch.ops.aten.convolution_backward(
                grad, d, w_pw, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                [needs_x or needs_dw, True, False],
            )  # (B, C, H/s, W/s), (C', C, 1, 1)
            del d
        elif needs_x or needs_dw:
            grad_d = F.conv2d(grad, w_pw.transpose(0, 1))  # (B, C, H/s, W/s)
        if needs_x:
            if w_dw is None:
                grad_r = grad_d
            elif stride == (1, 1):
                grad_r = F.conv2d(grad_d, w_dw.flip(2, 3), None, 1, padding, dilation, channels)
            else:  # (the input's values are not read: x has r's shape and layout)
                grad_r = torch.ops.aten.convolution_backward(
                    grad_d, x, w_dw, None, list(stride), list(padding), list(dilation), False,
                    [0, 0], channels, [True, False, False],
                )[0]
            if relu:
                grad_r = torch.ops.aten.threshold_backward(grad_r, x, 0)
        if needs_dw:
            if stride == (1, 1) and dilation == (2, 2) and r.shape[2] % 2 == r.shape[3] % 2 == 0:
                r, grad_d = _parity_batch(r), _parity_batch(grad_d)  # (4B, C, H/2, W/2)
                padding, dilation = (padding[0] // 2, padding[1] // 2), (1, 1)
            grad_dw = torch.ops.aten.convolution_backward(
                grad_d, r, w_dw, None, list(stride), list(padding), list(dilation), False, [0, 0],
                channels, [False, True, False],
            )[1]
        return grad_r, grad_dw, grad_pw, None, None, None, None


def _needed(ctx: Any, tensors: Sequence[bool]) -> list[bool]:
    """Which of a Function's first inputs its backward pass must give a gradient (``tensors``:
    whether each of them was a tensor, not None): those that need one (``ctx.needs_input_grad``)
    and whose node in the graph the engine will run. ``loss.backward(inputs=alpha)`` (an
    architecture step) runs no weight's node, nor those of states that lead to no alpha;
    ``inputs=weights`` none of alpha's: the gradients they would get are not computed, as the
    native convolutions skip theirs. The engine will not say for a leaf that is one of
    ``torch.autograd.grad``'s inputs (it raises): that one is wanted."""
    needed = list(ctx.needs_input_grad[: len(tensors)])
    edges = iter(ctx.next_functions)  # one per tensor input, in order; None ones have none
    for i, tensor in enumerate(tensors):
        node = next(edges)[0] if tensor else None
        if needed[i] and node is not None:
            with contextlib.suppress(RuntimeError):
                needed[i] = torch._C._will_engine_execute_node(node)
    return needed


def _dw_pw_forward(
    x: torch.Tensor, w_dw: torch.Tensor | None, w_pw: torch.Tensor, stride: tuple[int, int],
    padding: tuple[int, int], dilation: tuple[int, int], relu: bool,
) -> torch.Tensor:
    r = torch.relu(x) if relu else x
    d = r if w_dw is None else F.conv2d(r, w_dw, None, stride, padding, dilation, x.shape[1])
    return F.conv2d(d, w_pw)  # (B, C', H/s, W/s)


def _grad_of(
    out: torch.Tensor, inputs: list[torch.Tensor], needed: Sequence[bool], grad: torch.Tensor
) -> list[torch.Tensor | None]:
    """The gradients of ``out`` (given ``grad``) for the needed inputs, differentiably: the
    backward pass of a Function that recomputes, under ``create_graph=True``."""
    wanted = [t for t, n in zip(inputs, needed, strict=True) if n]
    got = iter(torch.autograd.grad(out, wanted, grad, create_graph=True))
    return [next(got) if n else None for n in needed]


def _parity_batch(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (4B, C, H/2, W/2): the four (row, column) parity sub-grids, in the batch."""
    b, c, h, w = x.shape
    nhwc = x.permute(0, 2, 3, 1).reshape(b, h // 2, 2, w // 2, 2, c)
    stacked = nhwc.permute(2, 4, 0, 1, 3, 5).reshape(4 * b, h // 2, w // 2, c)  # one copy
    return stacked.permute(0, 3, 1, 2)  # channels-last


class _MaxPool(torch.autograd.Function):
    """Max pooling that keeps its input (kept anyway: it is a cell state) instead of the indices
    of the maxima (int64, twice the output's size) and recomputes them in the backward pass."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, pool: nn.MaxPool2d) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.pool = pool
        return pool(x)  # type: ignore[no-any-return]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        (x,) = ctx.saved_tensors
        pool = ctx.pool
        if torch.is_grad_enabled():  # double backward: differentiate the recomputed pooling
            return _grad_of(pool(x), [x], [True], grad)[0], None
        _, indices = F.max_pool2d(
            x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode, True
        )
        return torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode,
            indices,
        ), None


def _train_norm_applies(norm: nn.BatchNorm2d) -> bool:
    """Whether ``norm`` may run as :class:`_TrainNorm`: exactly a BatchNorm2d (a subclass, such as
    the data-parallel GlobalBatchNorm2d, overrides ``forward``: its own runs), affine-free, in
    training, with running statistics."""
    return (
        type(norm) is nn.BatchNorm2d and norm.training and not norm.affine and norm.track_running_stats
        and norm.momentum is not None and norm.running_mean is not None
    )


class _TrainNorm(torch.autograd.Function):
    """Affine-free BatchNorm2d in training mode that saves its output ``y`` (the normalised
    input) instead of its input for the backward pass: the weighted sum after it saves ``y``
    anyway, so the input is freed after the forward pass. Several BatchNorm modules may share one
    normalisation (the same pooled input on several edges): each module's running statistics are
    updated with the batch statistics, as its own forward would.

    The second output, the inverse standard deviation, makes double backward exact
    (create_graph=True differentiates the backward formula through both outputs).
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, norms: tuple[nn.BatchNorm2d, ...]) -> Any:
        first = norms[0]
        # (B, C, H, W), (C,), (C,); updates the first module's running statistics natively
        y, mean, invstd = torch.ops.aten.native_batch_norm(
            z, None, None, first.running_mean, first.running_var, True, first.momentum, first.eps
        )
        if len(norms) > 1:
            n = z.numel() // z.shape[1]
            var = (invstd.pow(-2) - first.eps) * (n / max(n - 1, 1))  # unbiased, as BatchNorm's
            for norm in norms[1:]:
                norm.running_mean.mul_(1 - norm.momentum).add_(mean, alpha=norm.momentum)
                norm.running_var.mul_(1 - norm.momentum).add_(var, alpha=norm.momentum)
        for norm in norms:
            norm.num_batches_tracked.add_(1)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, invstd)
        return y, invstd

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor | None, grad_invstd: torch.Tensor | None) -> Any:
        y, invstd = ctx.saved_tensors
        if grad_y is None:
            grad_y = torch.zeros_like(y)
        if grad_invstd is None and not torch.is_grad_enabled():
            # The native kernel with y as input, mean 0 and invstd 1 (so x_hat = y), and the real
            # invstd as the scale: dz = invstd * (dy - mean(dy) - y * mean(dy * y)).
            grad_z = torch.ops.aten.native_batch_norm_backward(
                grad_y, y, invstd, None, None, torch.zeros_like(invstd), torch.ones_like(invstd),
                True, 0.0, [True, False, False],
            )[0]
            return grad_z, None
        return _norm_input_grad(grad_y, y, invstd, grad_invstd), None


class _NormAdd(torch.autograd.Function):
    """``acc + w * BatchNorm(z)`` (affine-free, training), added in place into ``acc`` (or
    ``w * BatchNorm(z)`` when ``acc`` is None): the last BatchNorm of a candidate and its term of
    the weighted sum in one step. The backward pass is one native BatchNorm backward with the
    scale ``w * invstd``, whose weight gradient (``sum(grad * y)`` per channel) gives ``w``'s:
    no separate products for the sum's gradients. Saves ``y`` (not ``z``) as :class:`_TrainNorm`.

    The outputs after the first (``y`` and invstd) make double backward exact, as in
    :class:`_TrainNorm`.
    """

    @staticmethod
    def forward(
        ctx: Any, acc: torch.Tensor | None, z: torch.Tensor, w: torch.Tensor, norm: nn.BatchNorm2d
    ) -> Any:
        y, _, invstd = torch.ops.aten.native_batch_norm(
            z, None, None, norm.running_mean, norm.running_var, True, norm.momentum, norm.eps
        )  # (B, C, H, W), (C,)
        norm.num_batches_tracked.add_(1)
        ctx.has_acc = acc is not None
        if acc is None:
            out = y * w
        else:
            out = acc.addcmul_(y, w)
            ctx.mark_dirty(acc)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(y, invstd, w)
        return out, y, invstd

    @staticmethod
    def backward(
        ctx: Any, grad: torch.Tensor | None, grad_y: torch.Tensor | None,
        grad_invstd: torch.Tensor | None,
    ) -> Any:
        y, invstd, w = ctx.saved_tensors
        needs_acc, needs_z, needs_w = _needed(ctx, (ctx.has_acc, True, True))
        grad_acc = grad if needs_acc else None
        if grad is None:
            grad = torch.zeros_like(y)
        if grad_y is None and grad_invstd is None and not torch.is_grad_enabled():
            if not (needs_z or needs_w):
                return grad_acc, None, None, None
            grad_z, grad_scale, _ = torch.ops.aten.native_batch_norm_backward(
                grad, y, invstd * w, None, None, torch.zeros_like(invstd), torch.ones_like(invstd),
                True, 0.0, [needs_z, needs_w, False],
            )
            return grad_acc, grad_z, grad_scale.sum() if needs_w else None, None
        dy = grad * w if grad_y is None else grad * w + grad_y
        return grad_acc, _norm_input_grad(dy, y, invstd, grad_invstd), (grad * y).sum(), None


def _norm_input_grad(
    grad_y: torch.Tensor, y: torch.Tensor, invstd: torch.Tensor, grad_invstd: torch.Tensor | None
) -> torch.Tensor:
    """BatchNorm's input gradient in differentiable ops (for double backward)."""
    dims, shape = (0, 2, 3), (1, -1, 1, 1)  # per channel
    centred = grad_y - grad_y.mean(dims).view(shape) - y * (grad_y * y).mean(dims).view(shape)
    grad_z = centred * invstd.view(shape)
    if grad_invstd is not None:  # d invstd / dz = -invstd^2 * y / n
        n = y.numel() // y.shape[1]
        grad_z = grad_z - y * (invstd.square() * grad_invstd / n).view(shape)
    return grad_z


class _CatChannels(torch.autograd.Function):
    """``torch.cat(xs, dim=1)`` whose backward hands each input a dense gradient: a channel slice
    of a channels-last gradient is strided (C of every pixel, then a gap), and every op of the
    backward pass after it would run slowly over it; one copy is cheaper."""

    @staticmethod
    def forward(ctx: Any, *xs: torch.Tensor) -> torch.Tensor:
        ctx.sizes = [x.shape[1] for x in xs]
        return torch.cat(xs, dim=1)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        # Channels-last as the inputs (cat_channels sends no others), whatever the gradient's
        # layout: global pooling's backward, for one, hands the last cell a contiguous one.
        return tuple(
            g.contiguous(memory_format=torch.channels_last) for g in grad.split(ctx.sizes, dim=1)
        )


def cat_channels(xs: Sequence[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(xs, dim=1)`` of (B, C_i, H, W) tensors, with dense gradients for channels-last
    inputs (see :class:`_CatChannels`)."""
    if not torch.is_grad_enabled() or not _is_channels_last(xs[0]):
        return torch.cat(list(xs), dim=1)
    return _CatChannels.apply(*xs)  # type: ignore[no-any-return]


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=torch.channels_last)


def _train_norm(z: torch.Tensor, norms: tuple[nn.BatchNorm2d, ...]) -> torch.Tensor:
    """``norms[0](z)`` for affine-free BatchNorm in training, through :class:`_TrainNorm`."""
    return _TrainNorm.apply(z, norms)[0]  # type: ignore[no-any-return]
