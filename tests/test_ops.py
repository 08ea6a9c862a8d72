"""The DARTS operation table and the weighted mixed op (Liu et al., DARTS, ICLR 2019)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raynas.ops import MIXED_OPS, OPS, PRIMITIVES, FactorizedReduce, WeightedMixedOp, Zero


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.mark.parametrize("channels", [4, 6])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", OPS.names())
def test_op_keeps_channels_and_divides_resolution_by_stride(name: str, stride: int, channels: int) -> None:
    op = OPS.get(name)(channels, stride, True)
    x = torch.randn(2, channels, 8, 8, requires_grad=True)  # (B, C, H, W)

    out = op(x)

    assert out.shape == (2, channels, 8 // stride, 8 // stride)
    out.square().sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    assert torch.isfinite(x.grad).all()
    for param in op.parameters():
        assert param.grad is not None, f"{name}: a parameter got no gradient"


@pytest.mark.parametrize("affine", [True, False])
def test_op_factories_respect_affine(affine: bool) -> None:
    # The search uses non-affine BatchNorm everywhere (DARTS model_search.py), the eval nets affine.
    for name in OPS.names():
        for module in OPS.get(name)(4, 1, affine).modules():
            if isinstance(module, nn.BatchNorm2d):
                assert module.affine is affine, name


def test_primitives_are_the_papers_eight_in_order() -> None:
    assert PRIMITIVES == (
        "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
        "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
    )
    assert set(PRIMITIVES) <= set(OPS.names())


def test_skip_connect_is_the_identity_at_stride_one() -> None:
    x = torch.randn(2, 4, 8, 8)
    assert torch.equal(OPS.get("skip_connect")(4, 1, True)(x), x)
    assert isinstance(OPS.get("skip_connect")(4, 2, True), FactorizedReduce)


@pytest.mark.parametrize("c_out", [3, 5])
def test_factorized_reduce_rejects_odd_out_channels(c_out: int) -> None:
    with pytest.raises(ValueError, match=rf"even number of output channels, got {c_out}"):
        FactorizedReduce(4, c_out)


def test_factorized_reduce_maps_channels_and_halves_resolution() -> None:
    op = FactorizedReduce(4, 6)
    assert op(torch.randn(2, 4, 8, 8)).shape == (2, 6, 4, 4)


@pytest.mark.parametrize("stride", [1, 2])
def test_zero_returns_zeros_of_the_output_shape(stride: int) -> None:
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = Zero(stride)(x)
    assert out.shape == (2, 4, 8 // stride, 8 // stride)
    assert torch.count_nonzero(out) == 0
    assert out.dtype == x.dtype
    out.sum().backward()
    assert torch.count_nonzero(x.grad) == 0


def test_weighted_mixed_op_is_registered() -> None:
    assert MIXED_OPS.get("weighted") is WeightedMixedOp


@pytest.mark.parametrize("stride", [1, 2])
def test_weighted_mixed_op_is_the_weighted_sum_of_its_ops(stride: int) -> None:
    mixed = WeightedMixedOp(channels=4, stride=stride, primitives=PRIMITIVES)
    x = torch.randn(3, 4, 8, 8)
    weights = torch.softmax(torch.randn(len(PRIMITIVES)), dim=0)  # (num_ops,)

    out = mixed(x, weights)

    assert len(mixed.ops) == len(PRIMITIVES)
    manual = torch.zeros(3, 4, 8 // stride, 8 // stride)
    for w, op in zip(weights, mixed.ops, strict=True):
        manual = manual + w * op(x)
    torch.testing.assert_close(out, manual)


def test_weighted_mixed_op_with_one_hot_weights_is_that_op() -> None:
    mixed = WeightedMixedOp(channels=4, stride=1, primitives=("skip_connect", "sep_conv_3x3"))
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(mixed(x, torch.tensor([1.0, 0.0])), x)


def test_weighted_mixed_op_puts_non_affine_batchnorm_after_pooling() -> None:
    # DARTS model_search.py MixedOp: pooling is followed by BatchNorm2d(C, affine=False).
    mixed = WeightedMixedOp(channels=4, stride=1, primitives=("max_pool_3x3", "avg_pool_3x3"))
    for op in mixed.ops:
        assert isinstance(op, nn.Sequential)
        assert isinstance(op[1], nn.BatchNorm2d) and not op[1].affine
    x = torch.randn(2, 4, 8, 8)
    pooled = nn.functional.max_pool2d(x, 3, stride=1, padding=1)
    expected = nn.functional.batch_norm(pooled, None, None, training=True)
    torch.testing.assert_close(mixed(x, torch.tensor([1.0, 0.0])), expected)


def test_weighted_mixed_op_gradient_reaches_the_weights() -> None:
    mixed = WeightedMixedOp(channels=4, stride=1, primitives=PRIMITIVES)
    alpha = torch.zeros(len(PRIMITIVES), requires_grad=True)
    mixed(torch.randn(2, 4, 8, 8), torch.softmax(alpha, 0)).square().sum().backward()
    assert alpha.grad is not None and torch.count_nonzero(alpha.grad) > 0


@pytest.mark.parametrize("channels", [4, 16])
def test_factorized_reduce_is_darts_two_offset_strided_convolutions(channels: int) -> None:
    """DARTS's FactorizedReduce (operations.py): relu, conv_1 (1x1, stride 2) of x and conv_2 of
    x[:, :, 1:, 1:], concatenated, BatchNorm; computed here on subsampled inputs, which must give
    the same outputs and gradients, channels-last included (where torch 2.14's strided 1x1
    backward aborts the process below 8 input channels)."""
    torch.manual_seed(0)
    op = FactorizedReduce(channels, channels).double().to(memory_format=torch.channels_last)
    x = torch.randn(4, channels, 8, 8, dtype=torch.float64)
    x = x.to(memory_format=torch.channels_last).requires_grad_()
    op(x).square().sum().backward()
    x_ref = x.detach().contiguous().requires_grad_()
    # Copies with the default strides (a 1x1 kernel's channels-last strides also count as contiguous).
    w1, w2 = (torch.empty(c.weight.shape, dtype=torch.float64).copy_(c.weight.detach()).requires_grad_()
              for c in (op.conv_1, op.conv_2))
    r = torch.relu(x_ref)
    out = torch.cat([F.conv2d(r, w1, stride=2), F.conv2d(r[:, :, 1:, 1:], w2, stride=2)], dim=1)
    ref = F.batch_norm(out, None, None, op.bn.weight.detach(), op.bn.bias.detach(), training=True)
    ref.square().sum().backward()
    torch.testing.assert_close(op(x.detach()), ref.detach(), rtol=1e-10, atol=1e-10)  # float64
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.conv_1.weight.grad, w1.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(op.conv_2.weight.grad, w2.grad, rtol=1e-10, atol=1e-10)
