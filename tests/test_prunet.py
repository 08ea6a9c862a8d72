"""PruNet: Prunodes, block and layer pruning and the latency-aware loss, each against a computation
of its own (modules built by hand from the Prunode's sliced weights, the latency table's entries
summed in Python, a supernet pruned by hand)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raynas.config import TrainConfig
from raynas.errors import ConfigError
from raynas.ops.fbnet import make_block
from raynas.spaces.fbnet import FbnetArch, FbnetSpace, FbnetSpaceConfig, block_key
from raynas.strategies.gradient.prunet import Prunet, PrunetConfig
from raynas.supernet import build_supernet
from raynas.supernet.prunet import PRUNET_CANDIDATES, SKIP, PrunetSupernet, Prunode
from raynas.types import DatasetInfo

ROOT = Path(__file__).resolve().parents[1]
DIGITS = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)
# Two searchable layers, both timed in latency_tables/cpu.json: 8->8 stride 1, 8->16 stride 2.
SMALL = {
    "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16), "stage_depths": (1, 1),
    "stage_strides": (1, 2), "head_channels": 16,
}
K3, K5, K3G2, K5G2 = 0, 1, 2, 3


def strategy(seed: int = 0, **settings: object) -> Prunet:
    config = PrunetConfig(**{  # type: ignore[arg-type]
        "latency_table": "cpu", "latency_dir": str(ROOT / "latency_tables"), "latency_unit": "us",
        "arch_start_epoch": 0, **settings,
    })
    space = FbnetSpace(FbnetSpaceConfig(**{**SMALL, **Prunet.space_overrides(config)}))  # type: ignore[arg-type]
    torch.manual_seed(seed)
    supernet = build_supernet(space, DIGITS)
    return Prunet(supernet=supernet, config=config, train=TrainConfig(epochs=2, learning_rate=0.05))


def randomise_batchnorm(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)  # type: ignore[union-attr]
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)  # type: ignore[union-attr]
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def bn_slice(bn: nn.BatchNorm2d, width: int) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(width, eps=bn.eps)
    out.weight.data.copy_(bn.weight.data[:width])
    out.bias.data.copy_(bn.bias.data[:width])
    out.running_mean.copy_(bn.running_mean[:width])  # type: ignore[index]
    out.running_var.copy_(bn.running_var[:width])  # type: ignore[index]
    return out


def block_at_width(node: Prunode, width: int) -> nn.Module:
    """The inverted-residual block of ``node``'s first ``width`` hidden channels, as plain modules."""
    c_in, c_out = node.expand.in_channels, node.project.out_channels
    expand = nn.Conv2d(c_in, width, 1, bias=False)
    expand.weight.data.copy_(node.expand.weight.data[:width])
    depthwise = nn.Conv2d(width, width, node.kernel, stride=node.stride, padding=node.kernel // 2,
                          groups=width, bias=False)
    depthwise.weight.data.copy_(node.depthwise.weight.data[:width])
    project = nn.Conv2d(width, c_out, 1, bias=False)
    project.weight.data.copy_(node.project.weight.data[:, :width])
    body = nn.Sequential(
        expand, bn_slice(node.expand_bn, width), nn.ReLU(),
        depthwise, bn_slice(node.depthwise_bn, width), nn.ReLU(),
        project, bn_slice(node.project_bn, c_out),
    ).eval()

    class Block(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + body(x) if node.residual else body(x)

    return Block()


# --- Prunodes --------------------------------------------------------------------------------


@pytest.mark.parametrize(("stride", "c_out"), [(1, 4), (2, 6)])
def test_prunodes_one_masked_pass_equals_its_two_paths_mixed(stride: int, c_out: int) -> None:
    torch.manual_seed(0)
    node = Prunode(c_in=4, c_out=c_out, stride=stride, kernel=3)  # widths 4, 12, 24
    randomise_batchnorm(node, 1)
    node.eval()
    x = torch.randn(2, 4, 6, 6)  # (B, C, H, W)
    q = torch.tensor([0.3, 0.7])
    for level in (2, 1):
        small, wide = node.widths[level - 1], node.widths[level]
        expected = q[0] * block_at_width(node, small)(x) + q[1] * block_at_width(node, wide)(x)
        torch.testing.assert_close(node(x, level, q), expected, rtol=1e-5, atol=1e-5)
    # At level 0 a single block: the narrowest one.
    torch.testing.assert_close(node(x, 0, torch.tensor([0.0, 1.0])), block_at_width(node, 4)(x))


def test_a_prunode_neither_computes_nor_trains_the_channels_past_its_width() -> None:
    torch.manual_seed(0)
    node = Prunode(c_in=4, c_out=4, stride=1, kernel=5).train()
    running = node.expand_bn.running_mean.clone()  # type: ignore[union-attr]
    out = node(torch.randn(4, 4, 5, 5) + 1.0, 1, torch.tensor([0.4, 0.6]))  # width 12 of 24
    out.square().sum().backward()
    assert node.expand.weight.grad is not None
    assert node.expand.weight.grad[12:].abs().sum() == 0 and node.expand.weight.grad[:12].abs().sum() > 0
    assert node.project.weight.grad[:, 12:].abs().sum() == 0  # type: ignore[index]
    moved = node.expand_bn.running_mean != running  # type: ignore[operator]
    assert moved[:12].all() and not moved[12:].any()


# --- the latency-aware loss ------------------------------------------------------------------


def latency_by_hand(s: Prunet, blocks: torch.Tensor, paths: torch.Tensor) -> float:
    """sum_l sum_i m_li LAT_l(i), a Prunode's LAT its two paths' table entries mixed by q (microseconds)."""
    entries = json.loads((ROOT / "latency_tables" / "cpu.json").read_text())["entries"]
    expansions = (1, 3, 6)
    total = 0.0
    for layer, spec in enumerate(s.model.layer_shapes()):
        for i, name in enumerate(PRUNET_CANDIDATES):
            if i in (K3, K5):
                level = int(s.model.levels[layer, i])
                wide = entries[block_key(f"{name}_e{expansions[level]}", spec)]
                small = entries[block_key(f"{name}_e{expansions[max(level - 1, 0)]}", spec)]
                lat = float(paths[layer, i, 0]) * small + float(paths[layer, i, 1]) * wide
            else:
                lat = entries[block_key(name, spec)]
            total += float(blocks[layer, i]) * lat * 1000.0
    return total


def test_expected_latency_is_the_tables_entries_summed_by_hand() -> None:
    s = strategy()
    s.model.levels.copy_(torch.tensor([[2, 1], [0, 2]]))
    g = torch.Generator().manual_seed(3)
    blocks = torch.softmax(torch.randn(2, 5, generator=g), -1)
    paths = torch.softmax(torch.randn(2, 2, 2, generator=g), -1)
    paths[1, 0] = torch.tensor([0.0, 1.0])  # a single-path Prunode (level 0)
    expected = latency_by_hand(s, blocks, paths)
    assert float(s.expected_latency((blocks, paths))) == pytest.approx(expected, rel=1e-5)


def test_the_loss_is_cross_entropy_times_alpha_log_latency_to_the_beta() -> None:
    s = strategy(alpha=0.3, beta=0.7)
    s.model.eval()  # the softmaxes, not a Gumbel sample
    g = torch.Generator().manual_seed(4)
    x, y = torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g)
    loss, logits = s.loss((x, y))
    blocks, paths = s.model.edge_weights(), s.model.path_weights()
    ce = F.cross_entropy(s.model(x, (blocks, paths)), y)
    lat = latency_by_hand(s, blocks.detach(), paths.detach())
    assert float(loss.detach()) == pytest.approx(float(ce.detach()) * 0.3 * math.log(lat) ** 0.7, rel=1e-5)
    assert logits.shape == (4, 10)


# --- pruning ---------------------------------------------------------------------------------


def test_a_hand_pruned_supernet_computes_what_its_survivors_compute() -> None:
    s = strategy(block_threshold=0.05, layer_threshold=0.5, prunode_threshold=0.6)
    model = s.model
    randomise_batchnorm(model, 2)
    with torch.no_grad():
        # Layer 0: skip at 0.6 of the probability: the layer is removed.
        model.theta[0] = torch.log(torch.tensor([0.1, 0.1, 0.1, 0.1, 0.6]))
        # Layer 1: k5_e1_g2 at 0.02 leaves; the kernel-3 Prunode's smaller path at 0.7 shrinks it.
        model.theta[1] = torch.log(torch.tensor([0.4, 0.3, 0.18, 0.02, 0.1]))
        model.phi[1, K3] = torch.log(torch.tensor([0.7, 0.3]))
        model.phi[1, K5] = torch.log(torch.tensor([0.45, 0.55]))
    s.a_optimizer.state[model.phi] = {"exp_avg": torch.ones(2, 2, 2), "exp_avg_sq": torch.ones(2, 2, 2)}
    assert s.prune() == {"layers": 1, "blocks": 1, "prunodes": 1}
    assert model.alive.tolist() == [[False, False, False, False, True], [True, True, True, False, True]]
    assert model.levels.tolist() == [[2, 2], [1, 2]]
    assert model.phi[1, K3].tolist() == [0.0, 0.0]
    assert s.a_optimizer.state[model.phi]["exp_avg"][1, K3].tolist() == [0.0, 0.0]
    assert s.a_optimizer.state[model.phi]["exp_avg"][1, K5].tolist() == [1.0, 1.0]

    # The network the survivors make, built by hand: layer 0 is skip; layer 1 mixes its four
    # candidates with the softmax of their theta (the pruned one's probability spread over them).
    model.eval()
    x = torch.randn(3, 1, 8, 8)
    layer1 = model.layers[1].candidates
    p = torch.softmax(torch.log(torch.tensor([0.4, 0.3, 0.18, 0.1])), 0)
    q5 = torch.tensor([0.45, 0.55])
    k3, k5 = layer1[K3], layer1[K5]
    with torch.no_grad():
        h = model.layers[0].candidates[SKIP](model.stem(x))
        h = (
            p[0] * (0.5 * block_at_width(k3, 8)(h) + 0.5 * block_at_width(k3, 24)(h))  # widths 1x, 3x of 8
            + p[1] * (q5[0] * block_at_width(k5, 24)(h) + q5[1] * block_at_width(k5, 48)(h))
            + p[2] * layer1[K3G2](h) + p[3] * layer1[SKIP](h)
        )
        expected = model.classifier(model.global_pooling(model.head(h)).flatten(1))
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)
    # The answer: skip, then the likeliest survivor (the kernel-3 Prunode, its wider width on a tie).
    assert model.genotype() == FbnetArch(("skip", "k3_e3"))
    blocks, paths = model.edge_weights().detach(), model.path_weights().detach()  # values alone here
    assert blocks[0].tolist() == [0.0, 0.0, 0.0, 0.0, 1.0] and float(blocks[1, K5G2]) == 0.0
    by_hand = latency_by_hand(s, blocks, paths)
    assert float(s.expected_latency((blocks, paths))) == pytest.approx(by_hand, rel=1e-5)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step")  # no optimiser step here
def test_pruning_waits_for_the_warm_up_and_survives_a_checkpoint() -> None:
    s = strategy(arch_start_epoch=1, block_threshold=0.3)  # 0.3 > 1/5: every block but the best goes
    s.end_epoch()  # the warm-up epoch: nothing pruned
    assert bool(s.model.alive.all())
    s.end_epoch()
    alive = s.model.alive.clone()
    assert alive.sum(dim=1).tolist() == [1, 1]
    buffer = io.BytesIO()
    torch.save(s.state_dict(), buffer)
    buffer.seek(0)
    fresh = strategy(seed=5, arch_start_epoch=1, block_threshold=0.3)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert torch.equal(fresh.model.alive, alive) and torch.equal(fresh.model.levels, s.model.levels)
    assert fresh.model.genotype() == s.model.genotype()
    # Gumbel samples over a pruned supernet: the removed candidates stay at zero, nothing turns NaN.
    g = torch.Generator().manual_seed(6)
    batch = (torch.randn(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))
    result = fresh.step(batch, batch)
    assert torch.isfinite(result.loss_sum)
    assert all(torch.isfinite(p).all() for p in fresh.model.parameters())
    blocks, _ = fresh.model.forward_weights()
    assert bool((blocks[~fresh.model.alive] == 0).all())


def test_prunet_refuses_a_supernet_without_prunodes() -> None:
    space = FbnetSpace(FbnetSpaceConfig(**SMALL))  # type: ignore[arg-type]
    supernet = build_supernet(space, DIGITS)
    assert not isinstance(supernet, PrunetSupernet)
    config = PrunetConfig(latency_table="cpu", latency_dir=str(ROOT / "latency_tables"), latency_unit="us")
    with pytest.raises(ConfigError, match="Prunode supernet"):
        Prunet(supernet=supernet, config=config, train=TrainConfig(epochs=1))


def test_a_sampled_architecture_is_one_of_the_fbnet_space() -> None:
    s = strategy()
    arches = s.sample_architectures(4, generator=torch.Generator().manual_seed(0))
    space = FbnetSpace(FbnetSpaceConfig(**SMALL))  # type: ignore[arg-type]
    assert len(arches) == 4 and all(space.contains(a) for a in arches)
    assert make_block(arches[0].blocks[1], c_in=8, c_out=16, stride=2) is not None
