"""XD-operations (Roberts et al., NeurIPS 2021): butterflies initialised as torch's FFT, a single
XD-operation equal to torch's Conv2d, converted backbones (a torchvision ResNet, a DARTS network)
computing what the originals compute, the K, L and M matrices as the search's architecture
parameters, and the multiply-adds ``raynas.profile.count_macs`` counts: those of the convolutions the
XD-operations generalise."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from raynas.cli import main
from raynas.data import dataset_info
from raynas.errors import ArchitectureError, ConfigError
from raynas.ops.xd import Butterfly, XDConv2d, convert_to_xd, xd_arch_parameters, xd_from_conv, xd_modules
from raynas.profile import count_macs, count_params
from raynas.spaces import SPACES
from raynas.spaces.xd import XdSpaceConfig, backbone_network
from raynas.supernet import build_supernet
from raynas.types import DatasetInfo


@pytest.mark.parametrize("n", [1, 2, 8, 32])
def test_butterflies_start_as_torchs_fft(n: int) -> None:
    x = torch.randn(3, n, dtype=torch.complex128)
    fft = Butterfly(n, init="fft", dtype=torch.float64)
    ifft = Butterfly(n, init="ifft", scale=n**-0.5, dtype=torch.float64)
    identity = Butterfly(n, init="identity", dtype=torch.float64)
    torch.testing.assert_close(fft(x), torch.fft.fft(x))
    torch.testing.assert_close(ifft(x), torch.fft.ifft(x, norm="ortho"))
    torch.testing.assert_close(identity(x), x)


@pytest.mark.parametrize(
    ("kernel", "dilation", "stride", "padding", "groups", "size"),
    [
        (3, 1, 1, 1, 1, (8, 8)),  # DARTS / ResNet 3x3
        (5, 1, 2, 2, 1, (9, 7)),  # strided, odd and unequal sizes
        (3, 2, 1, 2, 1, (8, 8)),  # dilated (DARTS dil_conv_3x3)
        (7, 1, 2, 3, 1, (16, 16)),  # ResNet's stem
        (1, 1, 2, 0, 1, (8, 8)),  # ResNet's downsampling shortcut
        (3, 1, 1, 0, 1, (5, 5)),  # no padding
        (3, 1, 1, 1, 4, (6, 6)),  # depthwise
        (5, 2, 2, 4, 4, (11, 10)),  # depthwise, dilated and strided (DARTS dil_conv_5x5)
        ((1, 7), 1, 1, (0, 3), 1, (8, 8)),  # DARTS conv_7x1_1x7's halves
    ],
)
def test_an_xd_operation_starts_as_the_convolution_it_replaces(
    kernel: int | tuple[int, int],
    dilation: int,
    stride: int,
    padding: int | tuple[int, int],
    groups: int,
    size: tuple[int, int],
) -> None:
    torch.manual_seed(0)
    c_out = 4 if groups > 1 else 6
    conv = nn.Conv2d(
        4, c_out, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups
    ).double()
    xd = xd_from_conv(conv, size)
    x = torch.randn(2, 4, *size, dtype=torch.float64)
    torch.testing.assert_close(xd(x), conv(x), atol=1e-10, rtol=1e-10)
    conv = conv.float()  # single precision: the FFT's rounding only
    torch.testing.assert_close(xd_from_conv(conv, size)(x.float()), conv(x.float()), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("depth", [2, 3])
def test_a_deeper_xd_operation_also_starts_as_the_convolution_it_replaces(depth: int) -> None:
    """The ``depth - 1`` butterfly products added to each of K, L and M start as the identity."""
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1).double()
    xd = xd_from_conv(conv, (9, 8), depth=depth)
    shallow = xd_from_conv(conv, (9, 8))
    assert len(xd_arch_parameters(xd)) > len(xd_arch_parameters(shallow))  # more factors to learn
    x = torch.randn(2, 4, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(xd(x), conv(x), atol=1e-10, rtol=1e-10)


def _random_norm_statistics(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None and m.running_var is not None:
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 1.5)


def test_a_converted_resnet_computes_what_the_original_computes() -> None:
    """torchvision's ResNet-18, every one of its 20 convolutions an XD-operation: the same logits
    before any training (double precision: the comparison sees the algebra, not float32 rounding)."""
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(num_classes=10).double().eval()
    _random_norm_statistics(resnet)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    converted = convert_to_xd(resnet, x).eval()
    assert len(list(xd_modules(converted))) == 20
    assert not any(type(m) is nn.Conv2d for m in converted.modules())
    torch.testing.assert_close(converted(x), resnet(x), atol=1e-5, rtol=0)
    assert any(type(m) is nn.Conv2d for m in resnet.modules())  # the backbone itself is left as it was


def _cifar_resnet_params(n: int, classes: int = 10) -> int:
    """He et al.'s CIFAR ResNet of n blocks a stage, counted layer by layer: 3x3 convolutions
    without bias, BatchNorm's two vectors, the option A shortcuts without parameters."""
    conv = lambda a, b: 9 * a * b  # noqa: E731
    total = conv(3, 16) + 2 * 16
    planes = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += conv(planes, width) + conv(width, width) + 4 * width
            planes = width
    return total + 64 * classes + classes


@pytest.mark.parametrize(("name", "blocks", "published"), [
    ("resnet20", 3, 0.27e6), ("resnet32", 5, 0.46e6), ("resnet44", 7, 0.66e6), ("resnet56", 9, 0.85e6),
    ("resnet110", 18, 1.7e6),
])
def test_the_cifar_resnets_have_the_published_parameter_counts(
    name: str, blocks: int, published: float
) -> None:
    """relax's ResNet backbones (trainer.py's --backbone resnet20) as akamaster/pytorch_resnet_cifar10
    (resnet.py; its README: ResNet-20 0.27M ... ResNet-110 1.7M parameters): 6n + 2 layers,
    ResNet-20 269,722 parameters for 10 classes."""
    net = backbone_network(name, dataset_info("cifar10"))
    assert count_params(net) == _cifar_resnet_params(blocks)
    assert round(count_params(net) / 1e6, 2 if published < 1e6 else 1) == published / 1e6
    weighted = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 6 * blocks + 2  # the layers the name counts (no shortcut convolutions)
    if name == "resnet20":
        assert count_params(net) == 269_722
    out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_a_converted_cifar_resnet_computes_what_the_original_computes() -> None:
    """relax's default backbone, ResNet-20, every one of its 19 convolutions an XD-operation: the
    same logits before any training, through the option A shortcuts' subsampling and padding."""
    torch.manual_seed(0)
    resnet = backbone_network("resnet20", dataset_info("cifar10")).double().eval()
    _random_norm_statistics(resnet)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    converted = convert_to_xd(resnet, x).eval()
    assert len(list(xd_modules(converted))) == 19
    torch.testing.assert_close(converted(x), resnet(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize("train", [False, True])
def test_a_converted_darts_network_computes_what_the_original_computes(train: bool) -> None:
    torch.manual_seed(0)
    darts = SPACES.create("darts")
    net = darts.build(
        darts.parse("DARTS_V2"), DatasetInfo("cifar10", 3, 10, 16), channels=4, layers=3
    ).double()
    _random_norm_statistics(net)
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    converted = convert_to_xd(net, x)
    assert len(list(xd_modules(converted))) == sum(1 for m in net.modules() if isinstance(m, nn.Conv2d))
    net.train(train)
    converted.train(train)
    torch.testing.assert_close(converted(x), net(x), atol=1e-5, rtol=0)


def test_the_search_learns_k_l_m_with_the_architecture_optimiser() -> None:
    """The supernet's architecture parameters are exactly the XD-operations' twiddles; an Adam step
    on them changes the operations (no longer the convolutions) and leaves the weights alone."""
    torch.manual_seed(0)
    space = SPACES.create(
        "xd", XdSpaceConfig(backbones=("darts:DARTS_V2",), depth_choices=(2,), channels=4, layers=3)
    )
    supernet = build_supernet(space, DatasetInfo("cifar10", 3, 10, 8))
    arch = supernet.arch_parameters()
    assert {id(p) for p in arch} == {id(p) for p in xd_arch_parameters(supernet)}
    weights = list(supernet.weights())
    assert not {id(p) for p in arch} & {id(p) for p in weights}
    x = torch.randn(4, 3, 8, 8)
    supernet.eval()
    before = supernet(x).detach()
    weights_before = [w.detach().clone() for w in weights]
    optimizer = torch.optim.Adam(arch, lr=1e-3)
    supernet.train()
    nn.functional.cross_entropy(supernet(x), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    supernet.eval()
    assert not torch.allclose(supernet(x), before, atol=1e-4)
    assert all(torch.equal(w, b) for w, b in zip(weights, weights_before, strict=True))
    assert max(supernet.distances().values()) > 0
    assert supernet.genotype() == space.parse("darts:DARTS_V2/d2")


def test_bad_input_says_what_is_allowed() -> None:
    with pytest.raises(ValueError, match=r"groups 1 or depthwise"):
        XDConv2d(4, 8, (3, 3), in_size=(8, 8), groups=2)
    with pytest.raises(ArchitectureError, match=r"xd backbone: unknown 'vgg16'"):
        SPACES.create("xd").parse("vgg16/d1")
    with pytest.raises(ConfigError, match=r"space.backbones: xd backbone: unknown 'darts:NOPE'; .*DARTS_V2"):
        XdSpaceConfig(backbones=("darts:NOPE",))
    # A genotype's JSON that the darts space reads, once torch is loaded.
    with pytest.raises(ConfigError, match=r"space.backbones: darts genotype JSON: a DARTS genotype has"):
        XdSpaceConfig(backbones=('darts:{"normal": []}',))
    space = SPACES.create("xd")
    assert str(space.sample(random.Random(0))) in {
        f"{b}/d{d}" for b in ("resnet18", "darts:DARTS_V2") for d in (1, 2, 3)
    }


def test_an_xd_operation_counts_the_multiply_adds_of_its_convolution() -> None:
    """kH * kW * C_in / groups multiply-adds per output, as nn.Conv2d, before and after its K, L and
    M move away from the transforms they start as."""
    xd = XDConv2d(4, 6, (3, 5), in_size=(9, 7), stride=(2, 1), padding=(1, 2))
    # outputs: (9 + 2 - 3) / 2 + 1 = 5 rows, 7 + 4 - 5 + 1 = 7 columns; 6 channels, 3 * 5 * 4 taps
    assert count_macs(xd, (4, 9, 7)) == (3 * 5 * 4 * 6 * 5 * 7, 6 * 5 * 7)
    assert count_macs(xd, (4, 9, 7)) == count_macs(nn.Conv2d(4, 6, (3, 5), (2, 1), (1, 2)), (4, 9, 7))
    depthwise = XDConv2d(
        4, 4, (5, 5), in_size=(11, 10), stride=(2, 2), padding=(4, 4), dilation=(2, 2), groups=4, bias=False
    )
    # outputs: (11 + 8 - 9) / 2 + 1 = 6 rows, (10 + 8 - 9) // 2 + 1 = 5 columns; 5 * 5 taps of one channel
    assert count_macs(depthwise, (4, 11, 10)) == (5 * 5 * 1 * 4 * 6 * 5, 0)
    with torch.no_grad():
        for p in xd.arch_parameters():
            p.add_(torch.randn_like(p))
    assert count_macs(xd, (4, 9, 7)) == (3 * 5 * 4 * 6 * 5 * 7, 6 * 5 * 7)


@pytest.mark.parametrize("backbone", ["resnet18", "darts"])
def test_a_converted_network_counts_the_multiply_adds_of_the_original(backbone: str) -> None:
    torch.manual_seed(0)
    if backbone == "resnet18":
        net: nn.Module = torchvision.models.resnet18(num_classes=10)
    else:
        darts = SPACES.create("darts")
        net = darts.build(darts.parse("DARTS_V2"), DatasetInfo("cifar10", 3, 10, 16), channels=4, layers=3)
    converted = convert_to_xd(net, torch.zeros(1, 3, 16, 16))
    assert not any(type(m) is nn.Conv2d for m in converted.modules())
    macs, biases = count_macs(net, (3, 16, 16))
    assert count_macs(converted, (3, 16, 16)) == (macs, biases)
    classifier = next(m for m in reversed(list(net.modules())) if isinstance(m, nn.Linear))
    assert macs > 100 * classifier.in_features * classifier.out_features


def test_describe_counts_an_xd_network_as_its_backbone(capsys: pytest.CaptureFixture[str]) -> None:
    """The quick start's architecture (jobs/xd_quickstart.yaml: DARTS_V2 at 8 channels, 3 cells)
    on CIFAR-10: the backbone's multiply-adds, not the classifier's alone."""
    assert main(["describe", "--space", "xd", "--arch", "darts:DARTS_V2/d1", "--dataset", "cifar10",
                 "--channels", "8", "--layers", "3"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "multiply-adds" in line)
    printed = int(line.split()[1].replace(",", ""))
    backbone = backbone_network("darts:DARTS_V2", dataset_info("cifar10"), channels=8, layers=3)
    assert printed == count_macs(backbone, (3, 32, 32))[0]
    classifier = backbone.classifier
    assert isinstance(classifier, nn.Linear)
    assert printed > 100 * classifier.in_features * classifier.out_features


# --- the search with relax's trainer settings (examples/resnet/trainer.py) ------------------------


def _xd_strategy(**train: Any) -> Any:
    """A DARTS strategy in relax's same-batch mode on a tiny XD supernet (DARTS_V2, 4 channels, 3
    cells, 8x8 inputs), with relax's optimiser settings (permuted.sh: Adam 1e-3, no decay)."""
    from raynas.config import TrainConfig
    from raynas.strategies import STRATEGIES
    from raynas.strategies.gradient.darts import DartsConfig

    torch.manual_seed(0)
    space = SPACES.create(
        "xd", XdSpaceConfig(backbones=("darts:DARTS_V2",), depth_choices=(1,), channels=4, layers=3)
    )
    supernet = build_supernet(space, DatasetInfo("cifar10", 3, 10, 8))
    config = DartsConfig(arch_learning_rate=1e-3, arch_weight_decay=0.0, arch_betas=(0.9, 0.999),
                         arch_follows_schedule=True, same_batch=True)
    settings = {"learning_rate": 0.1, "momentum": 0.9, "weight_decay": 1e-4, **train}
    return STRATEGIES.create("darts", supernet=supernet, config=config, train=TrainConfig(**settings))


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimiser step here
@pytest.mark.parametrize(
    ("epochs", "factors"),
    [
        # relax's sched: 0.1 ** (e >= int(0.5 E)) * 0.1 ** (e >= int(0.75 E)); E = 8: 4 and 6.
        (8, [1, 1, 1, 1, 0.1, 0.1, 0.01, 0.01]),
        # E = 7: int(3.5) = 3 and int(5.25) = 5, truncated as relax's int().
        (7, [1, 1, 1, 0.1, 0.1, 0.01, 0.01]),
    ],
)
def test_the_step_schedule_divides_both_rates_by_ten_at_relaxs_milestones(
    epochs: int, factors: list[float]
) -> None:
    """Every epoch's weight rate is 0.1 times relax's factor, and with ``arch_follows_schedule``
    the K, L, M Adam's rate is 1e-3 times the same factor (one LambdaLR over both optimisers)."""
    strategy = _xd_strategy(epochs=epochs, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    rates = []
    for _ in range(epochs):
        rates.append((strategy.lr, strategy.a_optimizer.param_groups[0]["lr"]))
        strategy.end_epoch()
    assert [w for w, _ in rates] == pytest.approx([0.1 * f for f in factors], rel=1e-12)
    assert [a for _, a in rates] == pytest.approx([1e-3 * f for f in factors], rel=1e-12)
    # A resumed search goes on at the same rates.
    again = _xd_strategy(epochs=epochs, schedule="step", milestones=(0.5, 0.75), gamma=0.1)
    again.load_state_dict(strategy.state_dict())
    assert again.a_optimizer.param_groups[0]["lr"] == strategy.a_optimizer.param_groups[0]["lr"]
    assert again.lr == strategy.lr


def test_a_same_batch_step_is_one_backward_pass_then_sgd_and_adam_steps() -> None:
    """relax's step (trainer.py's ``train`` with nas.py's ``MixedOptimizer``): one forward and one
    backward pass of the training batch's loss, then SGD (momentum 0.9, weight decay 1e-4, after
    raynas's clip to norm 5) on the weights and Adam on the twiddles, checked against the first
    step of each written out by hand: ``w - lr (c g + wd w)``, ``c = min(1, 5 / (||g|| + 1e-6))``,
    and ``a - lr g / (|g| + 1e-8)`` (Adam's bias-corrected first step)."""
    import copy

    strategy = _xd_strategy(epochs=2)
    reference = copy.deepcopy(strategy.model)
    x, y = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 5])
    passes = []
    strategy.model.register_forward_hook(lambda *_: passes.append(1))
    strategy.step((x, y), None)
    assert len(passes) == 1

    reference.train()
    weights, twiddles = list(reference.weights()), list(reference.arch_parameters())
    loss = nn.functional.cross_entropy(reference(x), y)
    grads = torch.autograd.grad(loss, [*weights, *twiddles])
    g_w, g_a = grads[: len(weights)], grads[len(weights):]
    norm = torch.sqrt(sum((g**2).sum() for g in g_w))
    clip = min(1.0, 5.0 / (float(norm) + 1e-6))
    for new, w, g in zip(strategy.model.weights(), weights, g_w, strict=True):
        torch.testing.assert_close(new.detach(), w.detach() - 0.1 * (clip * g + 1e-4 * w.detach()),
                                   atol=1e-6, rtol=0)
    moved = 0
    for new, a, g in zip(strategy.model.arch_parameters(), twiddles, g_a, strict=True):
        torch.testing.assert_close(new.detach(), a.detach() - 1e-3 * g / (g.abs() + 1e-8), atol=1e-6, rtol=0)
        moved += int(not torch.equal(new, a))
    assert moved == len(twiddles)  # every K, L and M stepped


def test_a_same_batch_epoch_draws_no_validation_batch() -> None:
    """The search loop gives a same-batch strategy only training batches: the validation loader
    is not touched (its data would be loaded for nothing)."""
    from raynas.train.loop import search_epoch

    class Untouched:
        def __iter__(self) -> Any:
            raise AssertionError("a validation batch was drawn")

    strategy = _xd_strategy(epochs=2)
    batches = [(torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3]))] * 2
    metrics = search_epoch(strategy, batches, Untouched(), torch.device("cpu"))
    assert metrics["train_acc"] >= 0 and strategy.epoch == 1


def test_the_resnet_job_has_relaxs_trainer_settings() -> None:
    """jobs/xd_resnet_cifar10.yaml against trainer.py's defaults and permuted.sh's XD line
    (``--xd --arch-adam --arch-lr 1E-3 --kmatrix-depth 3``): batch 128, 200 epochs, SGD 0.1,
    momentum 0.9, weight decay 1e-4, both rates x0.1 at int(0.5 E) and int(0.75 E), Adam 1e-3
    without decay (torch's betas), both optimisers on the same batch of all the training images,
    K, L, M learnt from the first epoch (--warmup-epochs 0), ResNet-20."""
    from raynas.runs import load_job

    config = load_job(Path(__file__).parents[1] / "jobs" / "xd_resnet_cifar10.yaml")
    train, strategy, data = config.train, config.strategy.config, config.data.config
    assert (config.space.name, config.strategy.name, config.data.name) == ("xd", "darts", "cifar10")
    assert (data.batch_size, data.train_portion) == (128, 1.0)
    assert (train.epochs, train.learning_rate, train.momentum, train.weight_decay) == (200, 0.1, 0.9, 1e-4)
    assert (train.schedule, train.milestones, train.gamma) == ("step", (0.5, 0.75), 0.1)
    assert train.warmup_epochs == 0
    assert (strategy.order, strategy.same_batch, strategy.arch_follows_schedule) == (1, True, True)
    assert (strategy.arch_learning_rate, strategy.arch_weight_decay) == (1e-3, 0.0)
    assert tuple(strategy.arch_betas) == (0.9, 0.999) and strategy.arch_start_epoch == 0
    assert config.space.config.depth_choices == (3,)
    assert config.space.config.backbones == ("resnet20",)  # --backbone resnet20, trainer.py's default


@pytest.mark.parametrize(
    ("job", "setting", "says"),
    [
        ("xd_resnet_cifar10", "train.schedule=linear",
         "'train.schedule' is str 'linear'; allowed: 'cosine', 'step'"),
        ("xd_resnet_cifar10", "train.milestones=[0.75,0.5]", "'train.milestones' must be fractions"),
        ("xd_resnet_cifar10", "train.milestones=[0.5,1.0]", "'train.milestones' must be fractions"),
        ("xd_resnet_cifar10", "train.milestones=[0,0.5]", "'train.milestones' must be fractions"),
        ("xd_resnet_cifar10", "strategy.order=2", "strategy.same_batch is a first-order step"),
        ("xd_resnet_cifar10", "strategy.same_batch=false", "'data.train_portion' 1 trains on every"),
        ("gdas_cifar10", "strategy.same_batch=true", "unknown config key 'strategy.same_batch'"),
        ("gdas_cifar10", "data.train_portion=1", "'data.train_portion' 1 trains on every"),
    ],
)
def test_bad_relax_settings_get_one_line_and_exit_status_2(
    job: str, setting: str, says: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = Path(__file__).parents[1] / "jobs" / f"{job}.yaml"
    assert main(["search", str(path), "--set", setting, "--set", f"data.path={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("raynas: error: ") and len(err.strip().splitlines()) == 1
    assert says in err


def test_train_portion_one_trains_on_every_image_and_validates_on_the_test_batch(
    tmp_path: Path,
) -> None:
    """relax's loaders: the search's training batches cover the whole training set (24 images of
    the fixture) and its validation batches are CIFAR's test_batch (tests/fixtures.py: images
    20-22); a dataset with no test split (the digits) refuses ``train_portion: 1``."""
    from fixtures import CIFAR_TEST, write_cifar10

    from raynas.data import DATASETS, search_loaders

    def make(root: Path) -> Any:
        return DATASETS.create("cifar10", DATASETS.entry("cifar10").config(
            path=str(root), batch_size=4, train_portion=1.0))

    train, valid = search_loaders(make(write_cifar10(tmp_path / "with")), seed=0)
    assert len(train.dataset) == len(train.dataset.dataset) and len(valid.dataset) == len(CIFAR_TEST)
    assert valid.dataset.dataset is not train.dataset.dataset  # the test batch, not the training set
    assert sorted(train.dataset.indices) == list(range(len(train.dataset.dataset)))
    digits = DATASETS.create("digits", DATASETS.entry("digits").config(train_portion=1.0))  # no test split
    with pytest.raises(ConfigError, match=r"^data.train_portion 1 holds out nothing .* no official test"):
        search_loaders(digits, seed=0)
