"""The fused form of the supernets' cells (edges leaving one state computed together,
channels-last activations, custom autograd Functions: :func:`raynas.ops.mixed.forward_edges`)
against the plain form (each mixed op's own forward, one edge at a time, contiguous activations),
differentiated by autograd on its own: the same outputs, gradients of the weights and the
architecture parameters, second-order gradients and running BatchNorm statistics, to 1e-5, for
every mixed op on the DARTS CNN and NAS-Bench-201 supernets."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from raynas.ops import PRIMITIVES
from raynas.spaces.darts_genotype import DartsGenotype
from raynas.spaces.nb201 import Nb201Arch
from raynas.supernet.darts import DartsSupernet
from raynas.supernet.nb201 import Nb201Supernet
from raynas.train.distributed import GlobalBatchNorm2d, convert_batchnorm

TOL = {"rtol": 1e-5, "atol": 1e-5}
CLASSES = 5

# A single path that takes every kind of candidate, ``none`` too, on normal and reduction edges.
PATH = DartsGenotype(
    normal=(("sep_conv_5x5", 0), ("dil_conv_3x3", 1), ("max_pool_3x3", 0), ("none", 2)),
    normal_concat=(2, 3),
    reduce=(("dil_conv_5x5", 0), ("skip_connect", 1), ("avg_pool_3x3", 2), ("sep_conv_3x3", 0)),
    reduce_concat=(2, 3),
)
NB201_PATH = Nb201Arch.parse(
    "|nor_conv_3x3~0|+|avg_pool_3x3~0|none~1|+|skip_connect~0|nor_conv_1x1~1|nor_conv_3x3~2|"
)


def darts(mixed_op: str = "weighted", **overrides: object) -> DartsSupernet:
    """Three cells (normal, reduction, reduction: FactorizedReduce before the last), 2 nodes."""
    kwargs: dict = dict(
        channels=4, layers=3, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
        mixed_op=mixed_op, num_classes=CLASSES, in_channels=3,
    )
    if mixed_op in ("partial", "attention"):
        kwargs["partial_k"] = 2
    return DartsSupernet(**{**kwargs, **overrides})


def nb201(mixed_op: str = "weighted", **overrides: object) -> Nb201Supernet:
    kwargs: dict = dict(channels=4, cells_per_stage=1, mixed_op=mixed_op, num_classes=CLASSES)
    if mixed_op in ("partial", "attention"):
        kwargs["partial_k"] = 2
    return Nb201Supernet(**{**kwargs, **overrides})


def gdas(model: nn.Module) -> nn.Module:
    model.gumbel_tau = 1.0  # type: ignore[assignment]
    return model


def single_path(model: nn.Module) -> nn.Module:
    model.set_path(PATH if isinstance(model, DartsSupernet) else NB201_PATH)  # type: ignore[operator]
    return model


# name -> the supernet (built under torch.manual_seed(0)), each mixed op of the registry
SUPERNETS: dict[str, Callable[[], nn.Module]] = {
    "darts-weighted": lambda: darts(),
    "darts-weighted-affine": lambda: darts(bn_affine=True),  # RF-DARTS
    "darts-partial": lambda: darts("partial", edge_normalization=True),  # PC-DARTS
    "darts-attention": lambda: darts("attention"),
    "darts-sampled": lambda: gdas(darts("sampled")),  # GDAS
    "darts-single-path": lambda: single_path(darts()),  # SPOS, ENAS, random_ws
    "darts-odd-size": lambda: darts(nodes=3),  # 12x12 inputs: 3x3 states in the last cell
    "nb201-weighted": lambda: nb201(),
    "nb201-partial": lambda: nb201("partial", edge_normalization=True),
    "nb201-attention": lambda: nb201("attention"),
    "nb201-sampled": lambda: gdas(nb201("sampled")),
    "nb201-single-path": lambda: single_path(nb201()),
}
SIZE = {"darts-odd-size": 12}


def set_form(model: nn.Module, *, fused: bool) -> nn.Module:
    model.channels_last = fused  # type: ignore[assignment]
    for module in model.modules():
        if hasattr(module, "fused"):
            module.fused = fused
    return model


def pair(name: str) -> tuple[nn.Module, nn.Module]:
    """(plain, fused) copies of the same supernet."""
    torch.manual_seed(0)
    model = SUPERNETS[name]()
    return set_form(copy.deepcopy(model), fused=False), set_form(model, fused=True)


def batch(name: str, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    size = SIZE.get(name, 8)
    x = torch.randn(6, 3, size, size, generator=generator)  # (B, C, H, W)
    return x, torch.randint(0, CLASSES, (6,), generator=generator)


def differentiable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def run(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, create_graph: bool = False
) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
    """Logits and the gradient of the loss for every parameter (None where it has none). The
    Gumbel sample is drawn from the same seed for both forms."""
    torch.manual_seed(7)
    logits = model(x)  # (B, classes)
    loss = F.cross_entropy(logits, y)
    grads = torch.autograd.grad(
        loss, differentiable(model), create_graph=create_graph, allow_unused=True
    )
    return logits, list(grads)


def assert_grads_equal(got: list[torch.Tensor | None], want: list[torch.Tensor | None]) -> None:
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g is None or w is None:  # unused in one form: no gradient, or zeros, in the other
            other = w if g is None else g
            assert other is None or not other.any(), f"parameter {i}"
        else:
            torch.testing.assert_close(g, w, **TOL, msg=lambda m, i=i: f"parameter {i}: {m}")


def assert_buffers_equal(got: nn.Module, want: nn.Module) -> None:
    mine, theirs = dict(got.named_buffers()), dict(want.named_buffers())
    assert mine.keys() == theirs.keys()
    for key, value in theirs.items():
        torch.testing.assert_close(mine[key], value, **TOL, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("name", SUPERNETS)
def test_fused_training_step_matches_the_plain_form(name: str) -> None:
    plain, fused = pair(name)
    x, y = batch(name)
    want_logits, want = run(plain, x, y)
    got_logits, got = run(fused, x, y)
    torch.testing.assert_close(got_logits, want_logits, **TOL)
    assert_grads_equal(got, want)
    # Architecture parameters get gradients (not None everywhere, as a detached sum would).
    arch = {id(p) for p in fused.arch_parameters()}  # type: ignore[operator]
    arch_grads = [g for p, g in zip(differentiable(fused), got, strict=True) if id(p) in arch]
    if fused.path is None:  # type: ignore[union-attr]
        assert any(g is not None and g.any() for g in arch_grads)
    assert_buffers_equal(fused, plain)  # running statistics, num_batches_tracked


def parameter_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The two kinds of parameters a gradient search steps apart: alpha (and beta), the weights."""
    arch = {id(p) for p in model.arch_parameters()}  # type: ignore[operator]
    return {
        "arch": [p for p in differentiable(model) if id(p) in arch],
        "weights": [p for p in differentiable(model) if id(p) not in arch],
    }


@pytest.mark.parametrize("group", ["arch", "weights"])
@pytest.mark.parametrize("name", SUPERNETS)
def test_a_backward_pass_to_one_kind_of_parameter_matches_the_plain_form(name: str, group: str) -> None:
    """``loss.backward(inputs=...)`` as the strategies' architecture and weight steps call it:
    the fused Functions then skip the gradients nobody asked for (``_needed``); the ones asked
    for equal the plain form's, and the others are left without one."""
    plain, fused = pair(name)
    x, y = batch(name)
    for model in (plain, fused):
        torch.manual_seed(7)
        F.cross_entropy(model(x), y).backward(inputs=parameter_groups(model)[group])
    for kind, params in parameter_groups(fused).items():
        got = [p.grad for p in params]
        if kind == group:
            assert_grads_equal(got, [p.grad for p in parameter_groups(plain)[kind]])
        else:
            assert all(g is None for g in got)


class _ConvolutionGradients(TorchDispatchMode):
    """Counts the convolution weight gradients (``convolution_backward`` asked for one) run."""

    def __init__(self) -> None:
        super().__init__()
        self.weight_grads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.convolution_backward.default and args[-1][1]:
            self.weight_grads += 1
        return func(*args, **(kwargs or {}))


def test_an_architecture_step_computes_no_convolution_weight_gradient() -> None:
    """The first-order architecture step (``backward(inputs=alpha)``) through the fused cells
    computes no weight gradient of any convolution, where a full backward pass computes each
    convolution's once."""
    _, fused = pair("darts-weighted")
    x, y = batch("darts-weighted")
    counts = []
    for inputs in (parameter_groups(fused)["arch"], None):
        loss = F.cross_entropy(fused(x), y)
        with _ConvolutionGradients() as mode:
            loss.backward(inputs=inputs)
        counts.append(mode.weight_grads)
    convolutions = sum(p.dim() == 4 for p in fused.weights())
    assert convolutions > 0 and counts == [0, convolutions]


def backward_nodes(out: torch.Tensor) -> set[str]:
    """The names of the autograd nodes ``out`` was computed through."""
    seen, names, todo = set(), set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_fused_form_runs_the_fused_functions() -> None:
    """The equality above is not that of a fallback to the plain form: the fused DARTS step runs
    through the custom Functions, and the plain one through none of them."""
    plain, fused = pair("darts-weighted")
    x, _ = batch("darts-weighted")
    fast = {"_DwPwBackward", "_NormAddBackward", "_TrainNormBackward", "_MaxPoolBackward"}
    assert fast <= backward_nodes(fused(x))
    assert not fast & backward_nodes(plain(x))


@pytest.mark.parametrize("name", SUPERNETS)
def test_fused_evaluation_matches_the_plain_form(name: str) -> None:
    plain, fused = pair(name)
    for model in (plain, fused):  # running statistics of a training pass first
        torch.manual_seed(5)  # the same Gumbel sample
        with torch.no_grad():
            model(batch(name, seed=2)[0])
        model.eval()
    x, y = batch(name)
    want_logits, want = run(plain, x, y)
    got_logits, got = run(fused, x, y)
    torch.testing.assert_close(got_logits, want_logits, **TOL)
    assert_grads_equal(got, want)
    assert_buffers_equal(fused, plain)


@pytest.mark.parametrize(
    "name", ["darts-weighted", "darts-weighted-affine", "darts-partial", "darts-attention",
             "darts-sampled", "darts-single-path", "nb201-weighted", "nb201-partial"]
)
def test_fused_second_order_gradients_match_the_plain_form(name: str) -> None:
    """Double backward (create_graph=True, as the unrolled second-order DARTS step and Hessian
    terms need): the gradient of a projection of the weight gradients, for every parameter.

    In float64: these values reach ~40, and float32's different summation orders alone move them
    by a few 1e-5 (float64 agrees to ~1e-13, so the two forms compute the same function).
    """
    plain, fused = (model.double() for model in pair(name))
    x, y = batch(name)
    x = x.double()
    results = []
    for model in (plain, fused):
        _, grads = run(model, x, y, create_graph=True)
        generator = torch.Generator().manual_seed(3)
        projection = sum(
            (g * torch.randn(g.shape, generator=generator, dtype=g.dtype)).sum()
            for g in grads if g is not None
        )
        results.append(
            torch.autograd.grad(projection, differentiable(model), allow_unused=True)  # type: ignore[arg-type]
        )
    assert_grads_equal(list(results[1]), list(results[0]))


def test_fused_form_leaves_batchnorm_subclasses_to_their_own_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    """The data-parallel GlobalBatchNorm2d overrides forward (statistics over every worker's
    batch): the fused form must call it, not the native BatchNorm (issue 13's first helper ran
    the native one, and two workers no longer matched one)."""
    _, fused = pair("darts-weighted")
    convert_batchnorm(fused)
    calls = []
    original = GlobalBatchNorm2d.forward

    def counted(self: GlobalBatchNorm2d, x: torch.Tensor) -> torch.Tensor:
        calls.append(self)
        return original(self, x)

    monkeypatch.setattr(GlobalBatchNorm2d, "forward", counted)
    x, y = batch("darts-weighted")
    run(fused, x, y)
    norms = [m for m in fused.modules() if isinstance(m, GlobalBatchNorm2d)]
    # Every BatchNorm of the step's candidates runs (the pooling ones once per edge).
    assert {id(m) for m in norms} == {id(m) for m in calls}
