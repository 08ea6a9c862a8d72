"""The math of the DARTS strategy (Liu et al., ICLR 2019, Eq. 6-8; quark0/darts cnn/architect.py),
checked against independent autograd computations on a tiny supernet in float64.

Second order: the architecture gradient is d/d alpha of L_val(w'(alpha), alpha) with the
one-step unrolled weights w'(alpha) = w - xi * (momentum * buf + grad_w L_train(w, alpha) + wd * w).
The strategy approximates its Hessian-vector product by central finite differences with
eps = r / ||v||; here the exact value is computed with double backpropagation instead.
BatchNorm runs in training mode (batch statistics), so every forward pass is deterministic.

With the paper's r = 0.01 the finite difference is far from the exact gradient on a supernet this
small: its architecture gradient of L_train is only piecewise smooth in w (ReLU and max-pool
switches), with jumps of about 1% every ~5e-4 along a unit direction, so a step of 0.01 crosses
many of them. So the real supernet is checked exactly with r = 1e-5 (no switch crossed) and, with
the default r, against an independent implementation of the paper's Eq. 8; the default r is
checked against the exact gradient within a looser tolerance on a smooth supernet (SiLU for ReLU,
no max-pool), where the finite-difference error is O(r^2).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.func import functional_call

from raynas.config import TrainConfig
from raynas.ops import PRIMITIVES
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient import GradientConfig, GradientStrategy
from raynas.strategies.gradient.darts import Darts, DartsConfig
from raynas.supernet import DartsSupernet

Batch = tuple[torch.Tensor, torch.Tensor]



# Clipping off (grad_clip huge) so that the update equation is the plain SGD one.
TRAIN = TrainConfig(epochs=4, learning_rate=0.1, momentum=0.9, weight_decay=3e-4, grad_clip=1e6)


def tiny_supernet() -> DartsSupernet:
    torch.manual_seed(0)
    model = DartsSupernet(
        channels=4, layers=3, nodes=2, stem_multiplier=3, primitives=PRIMITIVES,
        mixed_op="weighted", num_classes=3, in_channels=1,
    ).double()
    with torch.no_grad():  # alphas away from uniform so that every op matters
        for alpha in model.arch_parameters():
            alpha.normal_(0.0, 0.5)
    return model.train()


def batches(n: int, seed: int = 1) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(4, 1, 8, 8, generator=gen, dtype=torch.float64)  # (B, C, H, W)
        out.append((x, torch.randint(0, 3, (4,), generator=gen)))
    return out


def smooth_supernet() -> DartsSupernet:
    """The tiny supernet made twice differentiable: SiLU for every ReLU, no max-pool candidate."""
    torch.manual_seed(0)
    model = DartsSupernet(
        channels=4, layers=3, nodes=2, stem_multiplier=3,
        primitives=("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
        mixed_op="weighted", num_classes=3, in_channels=1,
    )
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(module, name, nn.SiLU())
    model = model.double()
    with torch.no_grad():
        for alpha in model.arch_parameters():
            alpha.normal_(0.0, 0.5)
    return model.train()


def make_strategy(
    order: int, hessian_r: float = 0.01, train: TrainConfig = TRAIN, smooth: bool = False
) -> Darts:
    config = DartsConfig(order=order, hessian_r=hessian_r)  # type: ignore[arg-type]
    model = smooth_supernet() if smooth else tiny_supernet()
    return Darts(supernet=model, config=config, train=train)


def relative_error(got: list[torch.Tensor], expected: list[torch.Tensor]) -> float:
    diff = torch.cat([(g - e).flatten() for g, e in zip(got, expected, strict=True)])
    return float(diff.norm() / torch.cat([e.flatten() for e in expected]).norm())


def state_snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer (BN running statistics and counters), cloned."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def loss_fn(model: nn.Module) -> Callable[[dict[str, torch.Tensor], Batch], torch.Tensor]:
    """L(params, batch) with the module's code but the given tensors as parameters.

    Buffers are passed as clones so that the BN running statistics of ``model`` stay untouched.
    """
    buffers = {k: b.clone() for k, b in model.named_buffers()}

    def loss(params: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
        logits = functional_call(model, {**params, **buffers}, (batch[0],))
        return nn.functional.cross_entropy(logits, batch[1])

    return loss


def arch_names(model: DartsSupernet) -> list[str]:
    """Names of the alphas, in the order of ``model.arch_parameters()``."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(a)] for a in model.arch_parameters()]


def split_params(model: DartsSupernet) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(weights, alphas) as fresh leaf tensors requiring grad, by parameter name."""
    arch = {id(p) for p in model.arch_parameters()}
    weights, alphas = {}, {}
    for name, p in model.named_parameters():
        (alphas if id(p) in arch else weights)[name] = p.detach().clone().requires_grad_(True)
    return weights, alphas


def exact_unrolled_arch_grad(strategy: Darts, train: Batch, valid: Batch) -> list[torch.Tensor]:
    """d/d alpha L_val(w'(alpha), alpha), by double backpropagation through one SGD step."""
    model = strategy.model
    loss = loss_fn(model)
    weights, alphas = split_params(model)
    xi = strategy.lr
    momentum, decay = strategy.train.momentum, strategy.train.weight_decay
    by_name = dict(model.named_parameters())

    g_train = torch.autograd.grad(loss({**weights, **alphas}, train), list(weights.values()),
                                  create_graph=True)
    unrolled = {}
    for (name, w), g in zip(weights.items(), g_train, strict=True):
        buf = strategy.w_optimizer.state[by_name[name]]["momentum_buffer"]
        unrolled[name] = w - xi * (momentum * buf + g + decay * w)
    l_val = loss({**unrolled, **alphas}, valid)
    named = dict(zip(alphas, torch.autograd.grad(l_val, list(alphas.values())), strict=True))
    return [named[n] for n in arch_names(model)]


def first_order_arch_grad(model: DartsSupernet, valid: Batch) -> list[torch.Tensor]:
    weights, alphas = split_params(model)
    l_val = loss_fn(model)({**weights, **alphas}, valid)
    named = dict(zip(alphas, torch.autograd.grad(l_val, list(alphas.values())), strict=True))
    return [named[n] for n in arch_names(model)]


def paper_finite_difference_arch_grad(strategy: Darts, train: Batch, valid: Batch) -> list[torch.Tensor]:
    """DARTS Eq. 7-8 written out: grad_a L_val(w', a) - xi * (grad_a L_tr(w+) - grad_a L_tr(w-)) / 2eps."""
    model = strategy.model
    loss = loss_fn(model)
    weights, alphas = split_params(model)
    xi = strategy.lr
    momentum, decay = strategy.train.momentum, strategy.train.weight_decay
    by_name = dict(model.named_parameters())

    def grads(params: dict[str, torch.Tensor], batch: Batch, wrt: list[str]) -> dict[str, torch.Tensor]:
        leaves = {k: v.detach().requires_grad_(k in wrt) for k, v in params.items()}
        out = torch.autograd.grad(loss(leaves, batch), [leaves[k] for k in wrt])
        return dict(zip(wrt, out, strict=True))

    g_train = grads({**weights, **alphas}, train, list(weights))
    unrolled = {}
    for name, w in weights.items():
        buf = strategy.w_optimizer.state[by_name[name]]["momentum_buffer"]
        unrolled[name] = w - xi * (momentum * buf + g_train[name] + decay * w)
    g_val = grads({**unrolled, **alphas}, valid, [*alphas, *weights])
    v = {k: g_val[k] for k in weights}  # grad_w' L_val(w', a)
    eps = strategy.config.hessian_r / torch.cat([x.flatten() for x in v.values()]).norm()
    plus = grads({**{k: w + eps * v[k] for k, w in weights.items()}, **alphas}, train, list(alphas))
    minus = grads({**{k: w - eps * v[k] for k, w in weights.items()}, **alphas}, train, list(alphas))
    return [g_val[n] - xi * (plus[n] - minus[n]) / (2 * eps) for n in arch_names(model)]


def warm_up(strategy: GradientStrategy, steps: int = 2) -> None:
    """Ordinary weight steps, so that SGD's momentum buffers exist."""
    for batch in batches(steps, seed=9):
        strategy.weight_step(batch)
    for w in strategy.weight_params:
        assert "momentum_buffer" in strategy.w_optimizer.state[w]


def arch_backward_keeping_state(strategy: Darts, train: Batch, valid: Batch) -> list[torch.Tensor]:
    """Run ``arch_backward``; check it leaves weights, alphas and BN buffers exactly as they were."""
    before = state_snapshot(strategy.model)
    strategy.a_optimizer.zero_grad(set_to_none=True)
    strategy.w_optimizer.zero_grad(set_to_none=True)
    strategy.arch_backward(train, valid)
    after = state_snapshot(strategy.model)
    for key, value in before.items():
        assert torch.equal(after[key], value), f"arch_backward changed {key}"
    for w in strategy.weight_params:
        assert w.grad is None, "arch_backward must not leave gradients on the weights"
    grads = [a.grad for a in strategy.arch_params]
    assert all(g is not None and g.dtype == torch.float64 for g in grads)
    return grads  # type: ignore[return-value]


def test_second_order_arch_gradient_matches_the_exact_unrolled_gradient() -> None:
    strategy = make_strategy(order=2, hessian_r=1e-5)
    warm_up(strategy)
    train, valid = batches(2)

    grads = arch_backward_keeping_state(strategy, train, valid)

    exact = exact_unrolled_arch_grad(strategy, train, valid)
    for grad, expected in zip(grads, exact, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)
    # The unrolled term matters here: the check above is not just the first-order gradient.
    first = first_order_arch_grad(strategy.model, valid)
    assert max(float((g - f).abs().max()) for g, f in zip(grads, first, strict=True)) > 1e-3


def test_second_order_with_the_papers_r_is_the_papers_finite_difference() -> None:
    strategy = make_strategy(order=2)
    assert strategy.config.hessian_r == 0.01
    warm_up(strategy)
    train, valid = batches(2)

    grads = arch_backward_keeping_state(strategy, train, valid)

    expected = paper_finite_difference_arch_grad(strategy, train, valid)
    for grad, e in zip(grads, expected, strict=True):
        torch.testing.assert_close(grad, e, rtol=1e-7, atol=1e-10)


def test_second_order_with_the_papers_r_is_close_to_exact_on_a_smooth_supernet() -> None:
    errors = {}
    for r in (1e-2, 1e-3):
        strategy = make_strategy(order=2, hessian_r=r, smooth=True)
        warm_up(strategy)
        train, valid = batches(2)
        grads = arch_backward_keeping_state(strategy, train, valid)
        exact = exact_unrolled_arch_grad(strategy, train, valid)
        errors[r] = relative_error(grads, exact)
        first = first_order_arch_grad(strategy.model, valid)
        assert relative_error(first, exact) > 0.1  # the unrolled term is large here
    assert errors[1e-2] < 5e-3  # observed 7e-4
    # Central differences: the error shrinks with r^2 (100x for 10x smaller r).
    assert 30 < errors[1e-2] / errors[1e-3] < 300


def test_second_order_without_momentum_buffer_unrolls_a_plain_gradient_step() -> None:
    # Before the first weight step SGD has no momentum buffer: w' = w - xi * (g + wd * w).
    strategy = make_strategy(order=2, hessian_r=1e-5)
    train, valid = batches(2)
    grads = arch_backward_keeping_state(strategy, train, valid)
    assert not strategy.w_optimizer.state
    for w in strategy.weight_params:
        strategy.w_optimizer.state[w]["momentum_buffer"] = torch.zeros_like(w)
    exact = exact_unrolled_arch_grad(strategy, train, valid)
    for grad, expected in zip(grads, exact, strict=True):
        torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-9)


def test_first_order_arch_gradient_is_the_validation_loss_gradient() -> None:
    strategy = make_strategy(order=1)
    warm_up(strategy)
    train, valid = batches(2)
    expected = first_order_arch_grad(strategy.model, valid)
    weights_before = [w.detach().clone() for w in strategy.weight_params]
    strategy.w_optimizer.zero_grad(set_to_none=True)

    strategy.arch_backward(train, valid)

    for alpha, exact in zip(strategy.arch_params, expected, strict=True):
        torch.testing.assert_close(alpha.grad, exact, rtol=1e-10, atol=1e-12)
    for w, b in zip(strategy.weight_params, weights_before, strict=True):
        assert w.grad is None  # only the alphas receive a gradient
        assert torch.equal(w, b)


def test_weight_step_follows_the_sgd_update_equation() -> None:
    strategy = make_strategy(order=1)
    warm_up(strategy)  # momentum buffers exist and are non-zero
    (batch,) = batches(1, seed=5)
    model = strategy.model
    names = {id(p): n for n, p in model.named_parameters()}
    weights, alphas = split_params(model)
    loss = loss_fn(model)({**weights, **alphas}, batch)
    grads = dict(zip(weights, torch.autograd.grad(loss, list(weights.values())), strict=True))
    lr, momentum, decay = strategy.lr, TRAIN.momentum, TRAIN.weight_decay
    expected = {}
    for w in strategy.weight_params:
        buf = strategy.w_optimizer.state[w]["momentum_buffer"]
        assert torch.count_nonzero(buf) > 0
        g = grads[names[id(w)]]
        expected[names[id(w)]] = w.detach() - lr * (momentum * buf + g + decay * w.detach())
    alphas_before = [a.detach().clone() for a in strategy.arch_params]

    result = strategy.weight_step(batch)

    for w in strategy.weight_params:
        torch.testing.assert_close(w.detach(), expected[names[id(w)]], rtol=1e-10, atol=1e-12)
    for a, b in zip(strategy.arch_params, alphas_before, strict=True):
        assert torch.equal(a, b)
    assert result.count == 4
    torch.testing.assert_close(result.loss_sum, loss.detach() * 4)
    assert 0 <= int(result.correct) <= 4


def test_weight_step_clips_the_gradient_norm_before_weight_decay() -> None:
    clip = 1e-3
    train = TrainConfig(epochs=4, learning_rate=0.1, momentum=0.9, weight_decay=3e-4, grad_clip=clip)
    strategy = make_strategy(order=1, train=train)
    (batch,) = batches(1, seed=5)
    weights, alphas = split_params(strategy.model)
    loss = loss_fn(strategy.model)({**weights, **alphas}, batch)
    grads = torch.autograd.grad(loss, list(weights.values()))
    norm = torch.cat([g.flatten() for g in grads]).norm()
    assert norm > clip
    scale = clip / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_
    # First step: SGD's momentum buffer starts as the (clipped, decayed) gradient itself.
    expected = [w.detach() - 0.1 * (scale * g + 3e-4 * w.detach())
                for w, g in zip(weights.values(), grads, strict=True)]

    strategy.weight_step(batch)

    for w, e in zip(strategy.weight_params, expected, strict=True):
        torch.testing.assert_close(w.detach(), e, rtol=1e-10, atol=1e-12)


def test_step_moves_alphas_by_adam_then_the_weights() -> None:
    strategy = make_strategy(order=1)
    train, valid = batches(2)
    alphas = [a.detach().clone() for a in strategy.arch_params]
    weights = [w.detach().clone() for w in strategy.weight_params]
    grads = first_order_arch_grad(strategy.model, valid)

    strategy.step(train, valid)

    # Adam's first step with L2 decay: g' = g + wd * a, a <- a - lr * g' / (|g'| + 1e-8).
    cfg = strategy.config
    for a, before, g in zip(strategy.arch_params, alphas, grads, strict=True):
        g_decayed = g + cfg.arch_weight_decay * before
        expected = before - cfg.arch_learning_rate * g_decayed / (g_decayed.abs() + 1e-8)
        torch.testing.assert_close(a.detach(), expected, rtol=1e-9, atol=1e-12)
    assert all(not torch.equal(w, b) for w, b in zip(strategy.weight_params, weights, strict=True))


@pytest.mark.parametrize(("order", "passes", "weight_grads"), [(1, 2, 1), (2, 5, 3)])
def test_a_second_order_step_makes_five_passes_three_with_weight_gradients_against_two_and_one(
    order: int, passes: int, weight_grads: int
) -> None:
    """The pass count behind the README's bound on the second-order step's time: a first-order step
    (architecture step and weight step) runs the supernet forward twice and computes the weights'
    gradients once; a second-order one runs it five times (L_train at w, L_val at w', the two sides
    of the finite difference, the weight step) and computes the weights' gradients three times."""
    strategy = make_strategy(order=order)
    warm_up(strategy)
    forwards, computed = [0], [0]
    strategy.model.register_forward_hook(lambda *_: forwards.__setitem__(0, forwards[0] + 1))
    watched = strategy.weight_params[0]  # the stem's convolution: every weight gradient reaches it
    watched.register_hook(lambda _: computed.__setitem__(0, computed[0] + 1))
    train, valid = batches(2)
    strategy.step(train, valid)
    assert (forwards[0], computed[0]) == (passes, weight_grads)


def test_darts_is_registered_with_its_config() -> None:
    entry = STRATEGIES.entry("darts")
    assert entry.target is Darts and entry.config is DartsConfig
    assert issubclass(DartsConfig, GradientConfig)
    assert DartsConfig().order == 1 and DartsConfig().hessian_r == 0.01
