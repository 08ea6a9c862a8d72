"""Learnable grey-scale morphology (Hu et al., 2022) against scipy.ndimage's grey-scale
morphology, and as DARTS operations (``space.operations: morphological``)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from raynas.ops import OPS
from raynas.ops.morphological import MORPHOLOGICAL_PRIMITIVES, MORPHOLOGIES, Morphology, morphology
from raynas.runs.jobs import load_job
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo

INF = np.inf
# scipy's operator of each name; the outside of the image takes no part in a max (cval -inf) or a
# min (cval +inf), as in raynas's layers.
SCIPY = {
    "dilation": lambda f, s: ndi.grey_dilation(f, structure=s, mode="constant", cval=-INF),
    "erosion": lambda f, s: ndi.grey_erosion(f, structure=s, mode="constant", cval=INF),
}
SCIPY["opening"] = lambda f, s: SCIPY["dilation"](SCIPY["erosion"](f, s), s)
SCIPY["closing"] = lambda f, s: SCIPY["erosion"](SCIPY["dilation"](f, s), s)
SCIPY["gradient"] = lambda f, s: SCIPY["dilation"](f, s) - SCIPY["erosion"](f, s)
SCIPY["white_tophat"] = lambda f, s: f - SCIPY["opening"](f, s)
SCIPY["black_tophat"] = lambda f, s: SCIPY["closing"](f, s) - f
# scipy's own composite operators (its default border, mirrored): equal away from the border.
SCIPY_OWN = {
    "opening": ndi.grey_opening, "closing": ndi.grey_closing, "gradient": ndi.morphological_gradient,
    "white_tophat": ndi.white_tophat, "black_tophat": ndi.black_tophat,
}


@pytest.mark.parametrize("name", MORPHOLOGIES)
@pytest.mark.parametrize("k", [3, 5])
def test_each_operator_equals_scipys_grey_scale_morphology(name: str, k: int) -> None:
    rng = np.random.default_rng(k)
    image = rng.normal(size=(2, 3, 11, 13))  # (B, C, H, W): not square, to catch H/W swaps
    structure = rng.normal(scale=0.5, size=(3, k, k))  # a non-flat, asymmetric function per channel
    ours = morphology(name, torch.tensor(image), torch.tensor(structure)).numpy()
    for b in range(2):
        for c in range(3):
            expected = SCIPY[name](image[b, c], structure[c])
            np.testing.assert_allclose(ours[b, c], expected, atol=1e-12)
            if name in SCIPY_OWN:
                border = 2 * (k // 2)  # opening and closing reach twice the radius
                inner = (slice(border, -border),) * 2
                np.testing.assert_allclose(
                    ours[b, c][inner], SCIPY_OWN[name](image[b, c], structure=structure[c])[inner], atol=1e-12
                )


def test_a_flat_dilation_is_max_pooling_and_stride_2_keeps_every_other_pixel() -> None:
    x = torch.randn(2, 4, 8, 8)
    layer = Morphology("dilation", 4, 3, stride=2)
    torch.testing.assert_close(layer(x), torch.nn.functional.max_pool2d(x, 3, 2, 1))


def test_the_structuring_functions_learn() -> None:
    layer = Morphology("opening", 4, 3)
    layer(torch.randn(2, 4, 8, 8)).sum().backward()
    assert layer.structure.grad is not None and layer.structure.grad.abs().sum() > 0


@pytest.mark.parametrize("stride", [1, 2])
def test_morphological_darts_ops_map_c_channels_to_c(stride: int) -> None:
    x = torch.randn(2, 6, 8, 8)
    for name in MORPHOLOGICAL_PRIMITIVES:
        assert OPS.get(name)(6, stride, True)(x).shape == (2, 6, 8 // stride, 8 // stride), name


def test_the_morphological_cell_space_searches_and_builds() -> None:
    torch.manual_seed(0)
    config = DartsSpaceConfig(operations="morphological", channels=4, layers=3, nodes=2)
    space = SPACES.create("darts", config)
    supernet = build_supernet(space, DatasetInfo("cifar10", 3, 10, 16))
    supernet(torch.randn(2, 3, 16, 16)).logsumexp(1).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
    arch = space.sample(random.Random(0))
    assert space.contains(supernet.genotype()) and space.contains(arch)
    net = space.build(arch, DatasetInfo("cifar10", 3, 10, 16), channels=4, layers=3)
    assert net(torch.randn(2, 3, 16, 16)).shape == (2, 10)


def test_the_quick_start_job_selects_the_morphological_operations() -> None:
    """(tests/test_jobs.py runs it, shrunk, end to end.)"""
    config = load_job(Path(__file__).parents[1] / "jobs" / "morphological_quickstart.yaml")
    assert config.space.config.primitives == MORPHOLOGICAL_PRIMITIVES


@pytest.mark.parametrize("name", MORPHOLOGIES)
def test_gradients_are_those_of_the_max_and_min(name: str) -> None:
    """The backward pass (which keeps only each pixel's winning offset) gives what autograd gives
    through the max and min of unfolded windows, for the input and the structuring function."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, requires_grad=True)
    b = (0.5 * torch.randn(3, 3, 3, dtype=torch.float64)).requires_grad_()

    def reference(f: torch.Tensor, s: torch.Tensor, op: str) -> torch.Tensor:
        def windows(z: torch.Tensor, fill: float) -> torch.Tensor:  # (B, C, 9, H, W)
            return torch.nn.functional.unfold(torch.nn.functional.pad(z, (1, 1, 1, 1), value=fill), 3).view(
                2, 3, 9, 7, 9)

        if op == "dilation":
            return (windows(f, -np.inf) + s.flip(-1, -2).reshape(1, 3, 9, 1, 1)).amax(2)
        return (windows(f, np.inf) - s.reshape(1, 3, 9, 1, 1)).amin(2)

    composed = {
        "dilation": lambda f, s: reference(f, s, "dilation"),
        "erosion": lambda f, s: reference(f, s, "erosion"),
        "opening": lambda f, s: reference(reference(f, s, "erosion"), s, "dilation"),
        "closing": lambda f, s: reference(reference(f, s, "dilation"), s, "erosion"),
        "gradient": lambda f, s: reference(f, s, "dilation") - reference(f, s, "erosion"),
        "white_tophat": lambda f, s: f - reference(reference(f, s, "erosion"), s, "dilation"),
        "black_tophat": lambda f, s: reference(reference(f, s, "dilation"), s, "erosion") - f,
    }
    weights = torch.randn(2, 3, 7, 9, dtype=torch.float64)
    ours = torch.autograd.grad((morphology(name, x, b) * weights).sum(), (x, b))
    theirs = torch.autograd.grad((composed[name](x, b) * weights).sum(), (x, b))
    for a, e in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, e)


def test_a_kernel_with_more_than_256_offsets_has_the_gradients_of_the_max() -> None:
    """17 x 17 = 289 offsets do not fit in the byte that holds a pixel's winning offset up to
    15 x 15: the backward pass still gives autograd's gradients through the unfolded max."""
    torch.manual_seed(0)
    k, r = 17, 8
    x = torch.randn(1, 2, 17, 17, dtype=torch.float64, requires_grad=True)  # every offset inside
    b = torch.randn(2, k, k, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(1, 2, 17, 17, dtype=torch.float64)
    padded = torch.nn.functional.pad(x, (r, r, r, r), value=-np.inf)
    unfolded = torch.nn.functional.unfold(padded, k).view(1, 2, k * k, 17, 17)
    reference = (unfolded + b.flip(-1, -2).reshape(1, 2, k * k, 1, 1)).amax(2)
    ours = torch.autograd.grad((morphology("dilation", x, b) * weights).sum(), (x, b))
    theirs = torch.autograd.grad((reference * weights).sum(), (x, b))
    for a, e in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, e)
