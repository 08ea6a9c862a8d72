"""PC-DARTS's ImageNet search (yuhuixu1993/PC-DARTS: ``model_search_imagenet.py``,
``train_search_imagenet.py``): the three stride-2 stems of its search network, the warm-up of its
large batches, alpha's clipped gradient, and the job that carries its settings. The per-class
ImageNet subsets are tested in tests/test_data.py; the job runs shrunk on an ImageNet folder in
tests/test_jobs.py."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from raynas.config import TrainConfig
from raynas.ops import PRIMITIVES
from raynas.ops.darts import FactorizedReduce
from raynas.strategies.gradient.pc_darts import PcDarts, PcDartsConfig
from raynas.supernet import DartsSupernet


def imagenet_supernet(channels: int = 16, layers: int = 8) -> DartsSupernet:
    torch.manual_seed(0)
    return DartsSupernet(
        channels=channels, layers=layers, nodes=4, stem_multiplier=3, primitives=PRIMITIVES,
        mixed_op="partial", partial_k=2, edge_normalization=True, num_classes=10, imagenet_stem=True,
    )


def test_the_imagenet_stems_are_the_codes_and_bring_224_pixels_to_28() -> None:
    """``stem0``: conv 3x3/2 to 3C/2 channels, BN, ReLU, conv 3x3/2 to 3C, BN; ``stem1``: ReLU,
    conv 3x3/2, BN; the first cell reads stem0's output (reduced, as after a reduction cell) and
    stem1's. Counted by hand for C = 16: 3*24*9 + 2*24 + 24*48*9 + 2*48 + 48*48*9 + 2*48 = 31,992
    parameters."""
    net = imagenet_supernet()
    stems = [*net.stem.parameters(), *net.stem1.parameters()]  # type: ignore[union-attr]
    assert sum(p.numel() for p in stems) == 31_992
    assert isinstance(net.cells[0].preprocess0, FactorizedReduce)
    x = torch.randn(2, 3, 224, 224)
    s0 = net.stem(x)
    s1 = net.stem1(s0)  # type: ignore[misc]
    assert s0.shape == (2, 48, 56, 56) and s1.shape == (2, 48, 28, 28)
    assert net.cells[0](s0, s1, net.edge_weights(False), net.edge_scale(False)).shape == (2, 64, 28, 28)


def test_the_imagenet_supernet_searches_on_small_images() -> None:
    net = imagenet_supernet(channels=4, layers=3)
    logits = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    logits.sum().backward()
    assert all(p.grad is not None for p in net.arch_parameters())


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimiser step here
def test_the_warm_up_scales_the_cosine_as_train_search_imagenet_py() -> None:
    """``lr = cosine(epoch)``, then ``lr * (epoch + 1) / 5.0`` for the first 5 epochs (the code
    steps its scheduler at the start of an epoch, PyTorch before 1.1: epoch e runs at cosine(e))."""
    train = TrainConfig(epochs=50, learning_rate=0.5, learning_rate_min=0.0, warmup_epochs=5)
    net = imagenet_supernet(channels=4, layers=3)
    strategy = PcDarts(supernet=net, config=PcDartsConfig(k=2), train=train)
    rates = []
    for _ in range(50):
        rates.append(strategy.lr)
        strategy.end_epoch()
    expected = [0.5 * (1 + math.cos(math.pi * e / 50)) / 2 * (min(e + 1, 5) / 5) for e in range(50)]
    assert rates == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert rates[0] == pytest.approx(0.1)
    assert rates[5] == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)) / 2)


@pytest.mark.parametrize("clip", [0.0, 1e-4])
def test_alphas_gradient_is_clipped_before_its_step_when_asked(clip: float) -> None:
    """``nn.utils.clip_grad_norm_(model.module.arch_parameters(), args.grad_clip)`` before
    ``optimizer_a.step()``; DARTS's architect steps alpha unclipped (``arch_grad_clip: 0``)."""
    strategy = PcDarts(supernet=imagenet_supernet(channels=4, layers=3),
                       config=PcDartsConfig(k=2, arch_start_epoch=0, arch_grad_clip=clip),
                       train=TrainConfig(epochs=1))
    norms: list[float] = []
    step = strategy.a_optimizer.step

    def recording_step(*args: object, **kwargs: object) -> object:
        norms.append(float(torch.cat([p.grad.flatten() for p in strategy.arch_params]).norm()))
        return step(*args, **kwargs)

    strategy.a_optimizer.step = recording_step  # type: ignore[method-assign]
    gen = torch.Generator().manual_seed(0)
    batch = (torch.randn(4, 3, 32, 32, generator=gen), torch.tensor([0, 1, 2, 3]))
    strategy.step(batch, batch)
    assert len(norms) == 1
    if clip:
        assert norms[0] == pytest.approx(clip, rel=1e-4)
    else:
        assert norms[0] > 1e-3  # the raw gradient, far above the clip the other case sets


def test_the_pc_darts_imagenet_job_takes_the_authors_search_settings() -> None:
    """jobs/pc_darts_imagenet.yaml against train_search_imagenet.py's defaults: batch 1024, lr 0.5
    to 0, momentum 0.9, weight decay 3e-4, 50 epochs, 16 channels, 8 layers, grad clip 5, arch lr
    6e-3, arch weight decay 1e-3, begin 35, the 5-epoch warm-up of batches over 256; 10% and 2.5%
    of the training set; and model_search_imagenet.py's K = 2 (``C//2`` channels in MixedOp)."""
    from raynas.runs import load_job

    config = load_job(Path(__file__).parents[1] / "jobs" / "pc_darts_imagenet.yaml")
    space, strategy, train, data = (config.space.config, config.strategy.config, config.train,
                                    config.data.config)
    assert (space.channels, space.layers, space.nodes, space.stem) == (16, 8, 4, "imagenet")
    assert config.strategy.name == "pc_darts" and (strategy.k, strategy.edge_normalization) == (2, True)
    assert (strategy.arch_learning_rate, strategy.arch_weight_decay) == (6e-3, 1e-3)
    assert (strategy.arch_start_epoch, strategy.arch_grad_clip) == (35, 5.0)
    assert tuple(strategy.arch_betas) == (0.5, 0.999)
    assert (train.epochs, train.learning_rate, train.learning_rate_min) == (50, 0.5, 0.0)
    assert train.warmup_epochs == 5
    assert (train.momentum, train.weight_decay, train.grad_clip, train.nesterov) == (0.9, 3e-4, 5.0, False)
    assert data.batch_size == 1024 and data.image_size == 224
    imagenet_train = 1_281_167
    assert data.limit * data.train_portion / imagenet_train == pytest.approx(0.10, abs=1e-5)
    assert data.limit * (1 - data.train_portion) / imagenet_train == pytest.approx(0.025, abs=1e-5)
