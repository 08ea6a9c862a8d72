"""The ConvNeXt macro space (Liu et al., CVPR 2022): published networks against torchvision's, the
compact form, the supernet's single paths against the stand-alone networks they stand for, and a
sampling strategy searching the space through the registries."""

from __future__ import annotations

import random

import pytest
import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.convnext import ConvNeXt as TorchvisionConvNeXt

from raynas.errors import ArchitectureError, ConfigError
from raynas.profile import count_params
from raynas.spaces import SPACES
from raynas.spaces.convnext import ConvNextArch, ConvNextSpaceConfig
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.evolution import EvolutionConfig
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo, EvalResult

IMAGENET = DatasetInfo("imagenet", 3, 1000, 224)
SMALL = ConvNextSpaceConfig(
    depth_choices=((1, 2), (1, 3)), width_choices=((4, 8), (8, 12)), kernel_choices=(3, 5, 7),
    expansion_choices=(1, 2, 4), stem_stride=2, layer_scale_init=0.5,
)


@pytest.mark.parametrize(("name", "torchvision_name", "params"), [
    # torchvision 0.29.1, convnext_tiny/_small/_base(weights=None): the parameter counts of its docs
    ("convnext_tiny", "convnext_tiny", 28_589_128),
    ("convnext_small", "convnext_small", 50_223_688),
    ("convnext_base", "convnext_base", 88_591_464),
])
def test_published_convnexts_have_torchvisions_parameter_counts(
    name: str, torchvision_name: str, params: int
) -> None:
    space = SPACES.create("convnext")
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = space.build(space.parse(name), IMAGENET)
        theirs = getattr(torchvision.models, torchvision_name)(weights=None)
    assert count_params(ours) == count_params(theirs) == params
    assert space.contains(space.parse(name))


def test_the_network_computes_what_torchvisions_convnext_computes() -> None:
    """A small ConvNeXt of both codes with the same weights gives the same logits (so the layers,
    their order, norms and layer scale are torchvision's, not only their parameter count)."""
    torch.manual_seed(0)
    arch = ConvNextArch((1, 2), (8, 16))
    theirs = TorchvisionConvNeXt(
        [CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 2)], num_classes=5, layer_scale=0.5
    ).eval()
    space = SPACES.create("convnext", ConvNextSpaceConfig(layer_scale_init=0.5))
    ours = space.build(arch, DatasetInfo("x", 3, 5, 32)).eval()
    their_params = list(theirs.parameters())  # the same order: a module's own parameters first
    our_params = list(ours.parameters())
    assert len(their_params) == len(our_params)
    with torch.no_grad():
        for mine, src in zip(our_params, their_params, strict=True):
            mine.copy_(src.reshape(mine.shape))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


def test_names_and_the_compact_form() -> None:
    space = SPACES.create("convnext")
    tiny = space.parse("ConvNeXt-T")
    assert tiny == space.parse("convnext_tiny") == space.parse(str(tiny))
    assert str(tiny) == "3-3-9-3/96-192-384-768/k7/e4/gelu/ln/patchify"
    assert space.parse("3-3-27-3/128-256-512-1024/k7/e4/gelu/ln/patchify") == space.parse("convnext_base")
    with pytest.raises(ArchitectureError, match=r"published convnext model"):
        space.parse("convnext_huge")
    with pytest.raises(ArchitectureError, match=r"activation: unknown 'swish'"):
        space.parse("3-3/96-192/k7/e4/swish/ln/patchify")
    with pytest.raises(ArchitectureError, match=r"kernel_size must be an odd"):
        space.parse("3-3/96-192/k4/e4/gelu/ln/patchify")


def test_config_errors_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"one entry per stage"):
        ConvNextSpaceConfig(depth_choices=((1,), (2,)), width_choices=((8,),))
    with pytest.raises(ConfigError, match=r"space.norm_choices must list some of ln, bn"):
        ConvNextSpaceConfig(norm_choices=("gn",))
    with pytest.raises(ConfigError, match=r"space.stem_stride must be one of 1, 2, 4"):
        ConvNextSpaceConfig(stem_stride=3)


def test_channels_and_layers_shrink_a_network_for_quick_trials() -> None:
    space = SPACES.create("convnext")
    small = space.build(space.parse("convnext_tiny"), IMAGENET, channels=24, layers=2)
    stages = [list(stage) for stage in small.stages]
    assert [len(s) - (i > 0) for i, s in enumerate(stages)] == [2, 2, 2, 2]  # blocks (not downsampling)
    assert [s[-1].dwconv.out_channels for s in stages] == [24, 48, 96, 192]


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("train", [False, True])
def test_a_supernet_path_computes_its_stand_alone_network(seed: int, train: bool) -> None:
    """With one-hot weights the supernet is exactly the network it extracts (weights sliced),
    in evaluation and in training mode (BatchNorm and LayerNorm over the kept channels only)."""
    torch.manual_seed(seed)
    space = SPACES.create("convnext", SMALL)
    supernet = build_supernet(space, DatasetInfo("x", 3, 5, 16))
    for p in supernet.weights():  # random norms and layer scales, so every slice matters
        p.data.normal_(0, 0.5)
    arch = space.sample(random.Random(seed))
    supernet.set_path(arch)
    net = supernet.extract(arch)
    supernet.train(train)
    net.train(train)
    x = torch.randn(4, 3, 16, 16)
    torch.testing.assert_close(supernet(x), net(x), atol=1e-5, rtol=1e-4)
    assert count_params(net) == count_params(space.build(arch, DatasetInfo("x", 3, 5, 16)))


def test_the_supernet_mixes_every_choice_and_derives_the_strongest() -> None:
    space = SPACES.create("convnext", SMALL)
    supernet = build_supernet(space, DatasetInfo("x", 3, 5, 16))
    supernet(torch.randn(2, 3, 16, 16)).sum().backward()
    assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in supernet.arch_parameters())
    target = space.sample(random.Random(7))
    with torch.no_grad():
        for alpha, value in zip(supernet.arch_parameters(), space.encode(target), strict=True):
            alpha.zero_()
            alpha[value] = 1.0
    assert supernet.genotype() == target


def test_evolution_searches_the_space_through_the_registries() -> None:
    """Regularized evolution over the space's decisions finds a known optimum of an analytic
    score (ConvNeXt's micro design at the smallest sizes)."""
    space = SPACES.create("convnext", SMALL)
    best = ConvNextArch((1, 1), (4, 8), 7, 4, "gelu", "ln", "patchify")
    target = space.encode(best)
    strategy = STRATEGIES.create(
        "evolution", EvolutionConfig(population_size=20, sample_size=5, evaluations=600), space=space, seed=0
    )
    while not strategy.done:
        arch = strategy.ask()
        score = sum(a == b for a, b in zip(space.encode(arch), target, strict=True))
        strategy.tell(EvalResult(arch, {"valid_acc": float(score)}))
    found = strategy.best()
    assert found is not None and found.architecture == best


def test_convnext_tiny_multiply_adds_match_torchvisions_published_ops() -> None:
    """torchvision's weights metadata gives ConvNeXt-T 4.456 GFLOPS (multiply-adds) at 224x224."""
    from raynas.profile import count_macs

    space = SPACES.create("convnext")
    macs, _ = count_macs(space.build(space.parse("convnext_tiny"), IMAGENET), (3, 224, 224))
    published = torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.meta["_ops"]
    assert round(macs / 1e9, 3) == published == 4.456
