"""The ConvNeXt macro space (Liu et al., CVPR 2022): published networks against torchvision's, the
compact form, Section 2.6's micro-design choices against hand-written layers and counts, the
supernet's single paths against the stand-alone networks they stand for, ``raynas describe``, and
a sampling strategy searching the space through the registries."""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models.convnext import CNBlockConfig
from torchvision.models.convnext import ConvNeXt as TorchvisionConvNeXt

from raynas.cli import main
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.convnext_net import ConvNeXtStageBlock
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
    assert str(tiny) == "3-3-9-3/96-192-384-768/k7/e4/gelu/ln/patchify/one-act/one-norm/separate"
    assert space.parse(
        "3-3-27-3/128-256-512-1024/k7/e4/gelu/ln/patchify/one-act/one-norm/separate"
    ) == space.parse("convnext_base")
    resnet_like = space.parse("3-4-6-3/96-192-384-768/k3/e4/relu/bn/resnet/every-act/every-norm/strided")
    assert (resnet_like.act_layers, resnet_like.norm_layers, resnet_like.downsample) == (
        "every", "every", "strided"
    )
    assert ConvNextArch.from_json(resnet_like.to_json()) == resnet_like
    assert space.decode(space.encode(tiny)) == tiny
    with pytest.raises(ArchitectureError, match=r"published convnext model"):
        space.parse("convnext_huge")
    with pytest.raises(ArchitectureError, match=r"activation: unknown 'swish'"):
        space.parse("3-3/96-192/k7/e4/swish/ln/patchify/one-act/one-norm/separate")
    with pytest.raises(ArchitectureError, match=r"kernel_size must be an odd"):
        space.parse("3-3/96-192/k4/e4/gelu/ln/patchify/one-act/one-norm/separate")
    with pytest.raises(ArchitectureError, match=r"act_layers: unknown 'two'; choose one of: one, every"):
        space.parse("3-3/96-192/k7/e4/gelu/ln/patchify/two-act/one-norm/separate")
    with pytest.raises(ArchitectureError, match=r"downsample: unknown 'pooled'"):
        space.parse("3-3/96-192/k7/e4/gelu/ln/patchify/one-act/one-norm/pooled")
    with pytest.raises(ArchitectureError, match=r"not a convnext architecture"):
        space.parse("3-3/96-192/k7/e4/gelu/ln")
    with pytest.raises(ArchitectureError, match=r"not a convnext architecture"):
        space.parse("3-3/96-192/k7/e4/gelu/ln/patchify/one-act")


def test_records_from_before_the_micro_design_choices_read_as_convnexts() -> None:
    # The compact form and the JSON record had no micro-design parts before them (MLflow runs and
    # journals of earlier searches hold those): they read as ConvNeXt's choices.
    space = SPACES.create("convnext")
    assert space.parse("3-3-9-3/96-192-384-768/k7/e4/gelu/ln/patchify") == space.parse("convnext_tiny")
    old = {k: v for k, v in json.loads(space.parse("convnext_tiny").to_json()).items()
           if k not in ("act_layers", "norm_layers", "downsample")}
    assert ConvNextArch.from_json(json.dumps(old)) == space.parse("convnext_tiny")
    with pytest.raises(ArchitectureError, match=r"unknown: blocks"):
        ConvNextArch.from_json(json.dumps({**old, "blocks": 3}))


def test_config_errors_say_what_is_allowed() -> None:
    with pytest.raises(ConfigError, match=r"one entry per stage"):
        ConvNextSpaceConfig(depth_choices=((1,), (2,)), width_choices=((8,),))
    with pytest.raises(ConfigError, match=r"space.norm_choices must list some of ln, bn"):
        ConvNextSpaceConfig(norm_choices=("gn",))
    with pytest.raises(ConfigError, match=r"space.stem_stride must be one of 1, 2, 4"):
        ConvNextSpaceConfig(stem_stride=3)
    with pytest.raises(ConfigError, match=r"space.act_layer_choices must list some of one, every"):
        ConvNextSpaceConfig(act_layer_choices=("two",))
    with pytest.raises(ConfigError, match=r"space.norm_layer_choices must list some of one, every"):
        ConvNextSpaceConfig(norm_layer_choices=("one", "one"))
    with pytest.raises(ConfigError, match=r"space.downsample_choices must list some of separate, strided"):
        ConvNextSpaceConfig(downsample_choices=())


def test_channels_and_layers_shrink_a_network_for_quick_trials() -> None:
    space = SPACES.create("convnext")
    small = space.build(space.parse("convnext_tiny"), IMAGENET, channels=24, layers=2)
    stages = [list(stage) for stage in small.stages]
    assert [len(s) - (i > 0) for i, s in enumerate(stages)] == [2, 2, 2, 2]  # blocks (not downsampling)
    assert [s[-1].dwconv.out_channels for s in stages] == [24, 48, 96, 192]


def _params_by_hand(arch: ConvNextArch, classes: int, stem_stride: int = 4) -> int:
    """The parameters of a LayerNorm ConvNeXt network with a patchify stem on RGB images, layer
    by layer from Section 2.6's description (each LayerNorm: 2 C; each convolution: weights plus C
    biases, the projection shortcut's 1x1 convolution without)."""
    e, k2 = arch.expansion, arch.kernel_size ** 2
    separate = arch.downsample == "separate"
    w = arch.widths
    total = 3 * stem_stride ** 2 * w[0] + w[0] + (2 * w[0] if separate else 0)  # stem (and its LN)
    for i, (depth, c) in enumerate(zip(arch.depths, w, strict=True)):
        for j in range(depth):
            strided = i > 0 and j == 0 and not separate  # ResNet's first block of a stage
            c_in = w[i - 1] if strided else c
            total += k2 * c_in + c_in + 2 * c_in  # depthwise KxK and its norm
            total += c_in * e * c + e * c + e * c * c + c + c  # 1x1 expand, 1x1 back, layer scale
            if arch.norm_layers == "every":
                total += 2 * e * c + 2 * c  # norms after the two 1x1 layers
            if strided:
                total += c_in * c + 2 * c  # ResNet's projection shortcut: 1x1 stride-2 conv, norm
        if i and separate:
            total += 2 * w[i - 1] + 4 * w[i - 1] * c + c  # LN, 2x2 stride-2 convolution
    return total + (2 * w[-1] if separate else 0) + w[-1] * classes + classes  # head


@pytest.mark.parametrize(("act_layers", "norm_layers", "downsample"), itertools.product(
    ("one", "every"), ("one", "every"), ("separate", "strided")
))
def test_micro_design_choices_have_their_layers_parameter_counts(
    act_layers: str, norm_layers: str, downsample: str
) -> None:
    space = SPACES.create("convnext")
    tiny = space.parse("convnext_tiny")
    assert _params_by_hand(tiny, 1000) == 28_589_128  # the count by hand is torchvision's
    arch = ConvNextArch(tiny.depths, tiny.widths, act_layers=act_layers, norm_layers=norm_layers,
                        downsample=downsample)
    with torch.device("meta"):
        net = space.build(arch, IMAGENET)
    assert count_params(net) == _params_by_hand(arch, 1000)
    assert space.contains(arch)
    blocks = [b for stage in net.stages for b in stage if isinstance(b, ConvNeXtStageBlock)]
    assert len(blocks) == sum(tiny.depths)
    assert sum(b.dwconv.stride == (2, 2) for b in blocks) == (3 if downsample == "strided" else 0)


def test_every_layer_places_resnets_activations_norms_and_strided_shortcut() -> None:
    """A strided block with an activation and a norm after every layer computes, by hand:
    ``act(norm(conv1x1_s2(x)) + gamma * norm(pw2(act(norm(pw1(act(norm(dw_s2(x))))))))``."""
    torch.manual_seed(0)
    block = ConvNeXtStageBlock(
        channels=6, in_channels=4, stride=2, kernel_size=3, expansion=2, activation="gelu", norm="ln",
        act_layers="every", norm_layers="every", layer_scale_init=0.5,
    )
    for p in block.parameters():
        p.data.normal_(0, 0.5)
    x = torch.randn(2, 4, 9, 9)

    def ln(t: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:  # over channels, (B, C, H, W)
        n = norm.norm
        return F.layer_norm(t.permute(0, 2, 3, 1), (t.size(1),), n.weight, n.bias, 1e-6).permute(0, 3, 1, 2)

    def pointwise(t: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:  # a 1x1 convolution
        return F.conv2d(t, linear.weight[:, :, None, None], linear.bias)

    h = F.conv2d(x, block.dwconv.weight, block.dwconv.bias, stride=2, padding=1, groups=4)  # (2, 4, 5, 5)
    h = F.gelu(ln(h, block.norm))
    h = F.gelu(ln(pointwise(h, block.pwconv1), block.hidden_norm))  # (2, 12, 5, 5)
    h = ln(pointwise(h, block.pwconv2), block.out_norm) * block.gamma[:, None, None]  # (2, 6, 5, 5)
    shortcut = ln(F.conv2d(x, block.shortcut[1].weight, stride=2), block.shortcut[2])  # 1x1, stride 2
    torch.testing.assert_close(block(x), F.gelu(shortcut + h), atol=1e-5, rtol=1e-5)


def test_a_strided_block_trains_channels_last_on_cpu_without_corrupting_memory() -> None:
    """torch 2.14's CPU backward of a 1x1 stride-2 convolution from 4 to 8 channels-last channels,
    on one thread, corrupts the heap (seen as aborts in the ImageNet job's shrunk run; this script
    with such a convolution as the shortcut aborts); the block's shortcut subsamples and then
    convolves. Run apart, with glibc's heap checks on, so a corruption fails this test rather
    than crashing the session."""
    script = (
        "import torch\n"
        "torch.set_num_threads(1)\n"  # as the tests run (conftest.py); one thread shows it
        "from raynas.ops.convnext_net import ConvNeXtStageBlock\n"
        "block = ConvNeXtStageBlock(channels=8, in_channels=4, stride=2, kernel_size=3, expansion=1,"
        " activation='gelu', norm='bn').to(memory_format=torch.channels_last)\n"
        "x = torch.randn(16, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_()\n"
        "for _ in range(20):\n"
        "    block(x).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "MALLOC_CHECK_": "3"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


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


@pytest.mark.parametrize(("act_layers", "norm_layers", "downsample"), itertools.product(
    ("one", "every"), ("one", "every"), ("separate", "strided")
))
@pytest.mark.parametrize(("norm", "stem", "widths"), [
    ("ln", "patchify", (4, 8)), ("bn", "resnet", (8, 8)), ("bn", "patchify", (4, 8)),
    ("ln", "resnet", (8, 12)),
])
def test_a_supernet_path_computes_its_network_for_every_micro_design_choice(
    act_layers: str, norm_layers: str, downsample: str, norm: str, stem: str, widths: tuple[int, int]
) -> None:
    """Each of Section 2.6's choices on a single path: the supernet computes exactly (1e-5) the
    stand-alone network it extracts, in evaluation and training mode, at narrower widths (or two
    stages of one width), smaller kernels and expansions than its own (so every slice and mask
    matters)."""
    torch.manual_seed(1)
    space = SPACES.create("convnext", SMALL)
    supernet = build_supernet(space, DatasetInfo("x", 3, 5, 16))
    for p in supernet.weights():
        p.data.normal_(0, 0.5)
    arch = ConvNextArch((2, 3), widths, 5, 2, "gelu", norm, stem, act_layers, norm_layers, downsample)
    supernet.set_path(arch)
    net = supernet.extract(arch)
    assert count_params(net) == count_params(space.build(arch, DatasetInfo("x", 3, 5, 16)))
    x = torch.randn(4, 3, 16, 16)
    for train in (False, True):
        supernet.train(train)
        net.train(train)
        torch.testing.assert_close(supernet(x), net(x), atol=1e-5, rtol=1e-5)


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


def test_describe_prints_convnext_tinys_parameters_and_multiply_adds(
    capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's ``raynas describe --space convnext --arch convnext_tiny --dataset imagenet``:
    torchvision's parameter count (28,589,128) and its metadata's 4.456 G multiply-adds."""
    args = ["describe", "--space", "convnext", "--arch", "convnext_tiny", "--dataset", "imagenet"]
    assert main([*args, "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["params"] == 28_589_128
    assert round(stats["macs"] / 1e9, 3) == 4.456
    assert main(args) == 0
    assert "28,589,128" in capsys.readouterr().out
