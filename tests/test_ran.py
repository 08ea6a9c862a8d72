"""Restructurable Activation Networks: the RAN-e space, blocks and supernet, its block-replacement
search over latency tables, and RAN-i's networks and training-free scaling.

Sources of the published figures: the official code, ARM-software/ML-restructurable-activation-
networks. RAN-e: ``RAN_e/model/ran_e_model.py`` (ModelConfig_C, ModelConfig_GT) with the blocks of
``RAN_e/model/blocks/``; its Keras model is counted here by hand, layer by layer, as those files
define it (the repository states no parameter count). RAN-i: ``RAN_i/models/ran_i.py``, a
ConvNeXt of scaled depths and widths, counted here with torchvision's ConvNeXt of the same sizes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from torchvision.models.convnext import CNBlockConfig, ConvNeXt

from raynas.cli import main as cli_main
from raynas.errors import ArchitectureError, ConfigError
from raynas.latency import LatencyTable, predict_latency
from raynas.ops.ran import CollapsedBlock, IbnSpec, InvertedBottleneck
from raynas.profile import count_macs, count_params
from raynas.runs.jobs import load_job
from raynas.spaces import SPACES
from raynas.spaces.ran import (
    PUBLISHED_E,
    RanEArch,
    RanESpace,
    RanESpaceConfig,
    RanIArch,
    RanISpace,
    layer_specs,
)
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling.ran import RanE, RanEConfig
from raynas.types import DatasetInfo, EvalResult

ROOT = Path(__file__).parents[1]
IMAGENET = DatasetInfo("imagenet", 3, 1000, 224)
DIGITS = DatasetInfo("digits", 1, 10, 8)
# The quick start's layout (jobs/ran_quickstart.yaml): 8x8 digits, six layers, one halved.
SMALL = {
    "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16, 16, 24), "stage_depths": (1, 2, 2, 1),
    "stage_strides": (1, 2, 1, 2), "halved_layers": (4,), "head_channels": 64, "head_kernel": 3,
    "kernels": (3, 5), "expansions": (2, 4, 6), "dropout": 0.0,
}


def small_space(**overrides: object) -> RanESpace:
    return RanESpace(RanESpaceConfig(**{**SMALL, **overrides}))  # type: ignore[arg-type]


# --- RAN-e's published networks ------------------------------------------------------------------

# ran_e_model.py's block tables: (in, out, kernel(s), repeats, expansion, stride, collapse flags).
MODEL_CONFIG_C = [
    (16, 32, 3, 1, 6, 1, [1]), (32, 48, 3, 1, 6, 2, [1]), (48, 64, 3, 1, 6, 2, [0]),
    (64, 80, 3, 1, 6, 1, [1]), (80, 80, [5, 3], 2, 6, 2, [0, 1]), (80, 96, [5, 3], 2, 4, 1, [0, 1]),
    (96, 128, 3, 2, 6, 1, [0, 0]), (128, 160, 3, 1, 6, 2, [1]), (160, 176, [7, 3, 3], 3, 4, 1, [0, 0, 1]),
    (176, 224, [5, 5], 2, 6, 1, [0, 0]),
]
MODEL_CONFIG_GT = [
    (16, 32, 3, 1, 2, 1, [1]), (32, 48, 3, 1, 2, 2, [1]), (48, 64, 3, 1, 2, 2, [1]),
    (64, 80, 3, 1, 2, 1, [1]), (80, 80, 5, 2, 6, 2, [0, 0]), (80, 96, 3, 2, 4, 1, [0, 0]),
    (96, 128, 3, 2, 2, 1, [1, 1]), (128, 160, 7, 1, 6, 2, [0]), (160, 176, 3, 3, 4, 1, [0, 0, 0]),
    (176, 224, 5, 2, 6, 1, [0, 0]),
]


def keras_trainable_params(table: list[tuple], classes: int = 1000) -> int:
    """The trainable weights of ran_e_model.py's Keras model, counted from its layer definitions:
    convolutions without bias, BatchNorm's gamma and beta, the dense classifier."""

    def conv(c_in: int, c_out: int, k: int, depthwise: bool = False, bn: bool = True) -> int:
        return k * k * (c_in if depthwise else c_in * c_out) + (2 * c_out if bn else 0)

    total = conv(3, 16, 3, bn=False)  # stem: no BN
    for c_in, c_out, kernels, repeats, t, _, flags in table:
        kernels = kernels if isinstance(kernels, list) else [kernels] * repeats
        for r in range(repeats):
            i, k = (c_in if r == 0 else c_out), kernels[r]
            down = i == 128 and i == c_out  # downsample_ibn / the collapsed block's twin
            if flags[r]:  # collapsed_block.py: BN, act, 3x3 conv + BN (twice when down)
                total += 2 * i
                total += conv(i, c_out // 2, 3) + conv(c_out // 2, c_out, 3) if down else conv(i, c_out, 3)
                continue
            e = 6 if down else t  # mb_conv_block.py hard-wires block_exp = 6 for this layer
            steps = [(i, c_out // 2, i * e), (c_out // 2, c_out, c_out * e)] if down else [(i, c_out, i * e)]
            for a, b, hidden in steps:
                total += conv(a, hidden, 1) + conv(hidden, hidden, k, depthwise=True) + conv(hidden, b, 1)
    total += conv(224, 1344, 1) + conv(1344, 1344, 7, depthwise=True)  # top1x1, topDS
    return total + 1344 * classes + classes


@pytest.mark.parametrize(("name", "table"), [("ran_e_c", MODEL_CONFIG_C), ("ran_e_gt", MODEL_CONFIG_GT)])
def test_published_ran_e_networks_have_the_official_models_parameters(name: str, table: list) -> None:
    space = RanESpace()
    with torch.device("meta"):
        net = space.build(space.parse(name), IMAGENET)
    assert count_params(net) == keras_trainable_params(table)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)  # bn_epsilon, Keras momentum 0.99
    assert {"ran_e_c": 4_634_872, "ran_e_gt": 4_486_680}[name] == count_params(net)


def test_published_ran_e_blocks_follow_the_collapse_flags() -> None:
    for arch, table in ((PUBLISHED_E["ran_e_c"], MODEL_CONFIG_C), (PUBLISHED_E["ran_e_gt"], MODEL_CONFIG_GT)):
        flags = [f for row in table for f in row[6]]
        assert [b == "collapsed" for b in arch.blocks] == [bool(f) for f in flags]
    assert RanESpace().parse("RAN-e-GT") == PUBLISHED_E["ran_e_gt"]


def test_describe_reports_the_published_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """What the README's RANs line says ``raynas describe`` prints: RAN-e-C's 4,634,872 parameters
    (the Keras model's trainable weights) and 489.2M multiply-adds, RAN-i-T's 20,760,131 and
    3.28G, 0.74x ConvNeXt-T's."""
    figures = {}
    for space, arch in (("ran_e", "ran_e_c"), ("ran_i", "ran_i_tiny"), ("convnext", "convnext_tiny")):
        args = ["describe", "--space", space, "--arch", arch, "--dataset", "imagenet", "--json"]
        assert cli_main(args) == 0
        figures[arch] = json.loads(capsys.readouterr().out)
    ran_e, ran_i = figures["ran_e_c"], figures["ran_i_tiny"]
    assert ran_e["params"] == 4_634_872 and round(ran_e["macs"] / 1e6, 1) == 489.2
    assert ran_i["params"] == 20_760_131 and round(ran_i["macs"] / 1e9, 2) == 3.28
    assert round(ran_i["macs"] / figures["convnext_tiny"]["macs"], 2) == 0.74


def test_halved_layers_run_through_half_the_width() -> None:
    ibn = InvertedBottleneck(c_in=128, c_out=128, stride=1, spec=IbnSpec(3, 6), halved=True)
    widths = [m.weight.shape[:2] for m in ibn.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1]
    assert widths == [(768, 128), (64, 768), (768, 64), (128, 768)]  # mb_conv_block.py's two IBNs
    block = CollapsedBlock(c_in=16, c_out=16, stride=1, halved=True)
    x = torch.randn(2, 16, 4, 4)  # (B, C, H, W)
    assert block(x).shape == x.shape and ibn.residual and block.residual


def test_a_collapsible_linear_block_collapses_exactly() -> None:
    torch.manual_seed(0)
    space = small_space(linear_expansion=4)
    arch = RanEArch(("collapsed",) * 6)
    net = space.build(arch, DIGITS).eval()
    for m in net.modules():  # BatchNorm statistics that are not the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)  # (B, C, H, W)
    net = net.double()
    before = net(x)
    net.collapse()
    torch.testing.assert_close(net(x), before, rtol=1e-9, atol=1e-9)
    deployed = small_space().build(arch, DIGITS)
    assert count_params(net) == count_params(deployed)  # folded to the deployed network's size


# --- the space ----------------------------------------------------------------------------------


def test_layout_candidates_and_bad_configs() -> None:
    space = RanESpace()
    assert space.config.num_layers == 16 and len(space.config.candidates) == 10
    assert [s.halved for s in layer_specs(space.config, 224)].index(True) == 9
    with pytest.raises(ConfigError, match="halved_layers: layer 1 must"):
        small_space(halved_layers=(1,))  # 8 -> 16 at stride 2
    with pytest.raises(ArchitectureError, match="ran_e layer 0: 'ibn_k7_e6' is not a candidate"):
        small_space().parse(",".join(["ibn_k7_e6"] + ["collapsed"] * 5))
    with pytest.raises(ArchitectureError, match="has 6 layers"):
        small_space().parse("collapsed,collapsed")


def test_the_halved_layers_check_keeps_to_the_layers_shapes() -> None:
    """space.halved_layers is checked from the settings alone (a Check the command line makes
    before torch loads): it allows exactly the layers that layer_specs() gives one width at
    stride 1, in the default layout and in layouts whose stages start at stride 1, keep the
    stem's or the previous stage's width, or not."""
    layouts = [
        {},
        {"stem_channels": 8, "stage_channels": (8, 8, 16), "stage_depths": (2, 1, 3),
         "stage_strides": (1, 1, 1)},
        {"stem_channels": 8, "stage_channels": (16, 16), "stage_depths": (1, 2), "stage_strides": (2, 1)},
    ]
    for layout in layouts:
        specs = layer_specs(RanESpaceConfig(halved_layers=(), **layout), 1)
        for i in range(len(specs) + 2):
            allowed = i < len(specs) and specs[i].c_in == specs[i].c_out and specs[i].stride == 1
            if allowed:
                RanESpaceConfig(halved_layers=(i,), **layout)
            else:
                with pytest.raises(ConfigError, match=f"halved_layers: layer {i} must exist"):
                    RanESpaceConfig(halved_layers=(i,), **layout)


def test_build_shrinks_channels_and_layers() -> None:
    space = small_space()
    arch = space.sample(random.Random(3))
    net = space.build(arch, DIGITS, channels=4, layers=1)
    assert len(net.layers) == 4 and net.stem.out_channels == 4  # one layer per stage
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 10)


# --- latency tables and the block replacement -----------------------------------------------------


def test_quickstart_table_has_every_entry_the_quickstart_needs() -> None:
    job = load_job(ROOT / "jobs" / "ran_quickstart.yaml")
    space = SPACES.create("ran_e", job.space.config)
    table = LatencyTable.load(ROOT / "latency_tables" / "cpu.json")
    assert set(space.latency_items(DIGITS)) <= set(table.entries)
    assert RanE(job.strategy.config, space=space).latency_ms(space.sample(random.Random(0))) > 0


def test_block_replacement_prices_fbnet_layers_as_the_fbnet_table_does() -> None:
    job = load_job(ROOT / "jobs" / "fbnet_quickstart.yaml")  # its layout is timed in cpu.json
    space = SPACES.create("fbnet", job.space.config)
    config = RanEConfig(latency_table=str(ROOT / "latency_tables" / "cpu.json"), seed_block="k5_e6",
                        replacement="skip", dataset="digits")
    strategy = RanE(config, space=space)
    table = LatencyTable.load(ROOT / "latency_tables" / "cpu.json")
    for seed in range(3):
        arch = space.sample(random.Random(seed))
        assert strategy.latency_ms(arch) == pytest.approx(predict_latency(table, space, arch, DIGITS))


def synthetic_table(space: RanESpace, tmp_path: Path, slow: dict[int, float]) -> Path:
    """A table where ``collapsed`` costs 1 ms, every IBN 2 ms plus ``slow[layer]``."""
    entries = {}
    for i, keys in enumerate(space.layer_latency_keys(DIGITS)):
        for name, key in zip(space.config.candidates, keys, strict=True):
            entries[key] = 1.0 if name == "collapsed" else 2.0 + slow.get(i, 0.0)
    for key in space.fixed_latency_keys(DIGITS):
        entries[key] = 0.5
    path = tmp_path / "dev.json"
    LatencyTable("dev", "synthetic", entries, meta={"dataset": "digits"}).save(path)
    return path


def score(arch: RanEArch) -> float:
    """An analytic objective: 0.9, less 0.005 per collapsed block, less 0.1 when layer 4 is."""
    return 0.9 - 0.005 * arch.blocks.count("collapsed") - (0.1 if arch.blocks[4] == "collapsed" else 0.0)


def run(strategy: RanE, steps: int | None = None) -> list[RanEArch]:
    asked = []
    while not strategy.done and (steps is None or len(asked) < steps):
        arch = strategy.ask()
        assert arch is not None
        asked.append(arch)
        strategy.tell(EvalResult(arch, {"valid_acc": score(arch)}, trial_id=str(len(strategy.history))))
    return asked


def test_block_replacement_follows_the_savings_and_the_tolerance(tmp_path: Path) -> None:
    space = small_space()
    path = synthetic_table(space, tmp_path, slow={4: 3.0, 5: 2.0, 0: 1.0})  # layers of their own shapes
    strategy = RanE(RanEConfig(latency_table=str(path), tolerance=0.021, evaluations=20), space=space)
    replaced = []
    while not strategy.done:
        arch = strategy.ask()
        assert arch is not None
        replaced.append(strategy.pending)
        strategy.tell(EvalResult(arch, {"valid_acc": score(arch)}, trial_id=str(len(replaced))))
    # The seed, then the layers by saving: 4 (4 ms), 5 (3 ms), 0 (2 ms), then 1, 2, 3 (1 ms each).
    assert replaced == [None, 4, 5, 0, 1, 2, 3]
    assert strategy.history[0].architecture == RanEArch(("ibn_k3_e6",) * 6)
    best = strategy.final_results()[0]
    # Layer 4 costs 0.1 of accuracy and the fifth collapsed block passes the tolerance: both refused.
    assert best.architecture.blocks == (
        "collapsed", "collapsed", "collapsed", "ibn_k3_e6", "ibn_k3_e6", "collapsed"
    )
    assert strategy.latency_ms(best.architecture) == pytest.approx(2 * 0.5 + 4 * 1.0 + 2.0 + (2.0 + 3.0))
    assert strategy.ask() is None


def test_block_replacement_resumes_exactly(tmp_path: Path) -> None:
    space = small_space()
    path = synthetic_table(space, tmp_path, slow={4: 3.0, 5: 2.0})
    config = RanEConfig(latency_table=str(path), tolerance=0.02, evaluations=20)
    whole = run(RanE(config, space=space))
    first = RanE(config, space=space)
    head = run(first, steps=3)
    state = json.loads(json.dumps(first.state_dict()))
    second = RanE(config, space=space)
    second.load_state_dict(state)
    assert head + run(second) == whole


def test_a_table_without_the_layouts_entries_says_what_to_measure(tmp_path: Path) -> None:
    space = small_space()
    path = tmp_path / "empty.json"
    LatencyTable("empty", "", {"ran_e/stem:1x8->8/s1": 0.1}, meta={"dataset": "digits"}).save(path)
    with pytest.raises(ConfigError, match="raynas latency"):
        RanE(RanEConfig(latency_table=str(path)), space=space)
    with pytest.raises(ConfigError, match="replacement 'skip' is not a candidate"):
        table = str(synthetic_table(space, tmp_path, {}))
        RanE(RanEConfig(latency_table=table, replacement="skip"), space=space)


# --- RAN-i --------------------------------------------------------------------------------------


def torchvision_convnext(depths: tuple[int, ...], widths: tuple[int, ...]) -> ConvNeXt:
    settings = [CNBlockConfig(w, widths[i + 1] if i + 1 < len(widths) else None, d)
                for i, (d, w) in enumerate(zip(depths, widths, strict=True))]
    return ConvNeXt(settings)


@pytest.mark.parametrize(("name", "depths", "widths"), [
    ("ran_i_tiny", (5, 5, 15, 5), (64, 128, 256, 511)),  # ran_i.py: wm 0.666, dm 1.65, Python's round
    ("ran_i_small", (5, 5, 15, 5), (76, 151, 303, 606)),  # wm 0.789, dm 1.65
    ("ran_i_base", (7, 7, 21, 7), (87, 175, 350, 699)),  # wm 0.9105, dm 2.30
])
def test_ran_i_networks_are_the_official_scaled_convnexts(name: str, depths: tuple, widths: tuple) -> None:
    space = RanISpace()
    arch = space.parse(name)
    assert arch == RanIArch(depths, widths) and space.contains(arch)
    with torch.device("meta"):
        ours, theirs = space.build(arch, IMAGENET), torchvision_convnext(depths, widths)
    assert count_params(ours) == count_params(theirs)


def test_ran_i_macs_equal_the_profilers_count() -> None:
    space = SPACES.create("ran_i", SPACES.entry("ran_i").config(
        base_depths=(2, 1, 1), base_widths=(8, 16, 24), width_multipliers=(1.0,), depth_multipliers=(1.0,),
        stem_stride=2,
    ))
    arch = RanIArch((2, 1, 1), (8, 16, 24))
    data = DatasetInfo("x", 3, 10, 32)
    assert space.macs(arch, data) == count_macs(space.build(arch, data), (3, 32, 32))[0]


def test_training_free_scaling_finds_ran_i_t_and_b() -> None:
    space = RanISpace()
    convnext_t = RanIArch((3, 3, 9, 3), (96, 192, 384, 768))
    convnext_s = RanIArch((3, 3, 27, 3), (96, 192, 384, 768))
    assert convnext_t.nn_mass == 2 * (3 * 96 + 3 * 192 + 9 * 384 + 3 * 768) == 13_248
    assert space.parse("ran_i_tiny").nn_mass == 2 * (5 * 64 + 5 * 128 + 15 * 256 + 5 * 511) == 14_710
    assert space.scale(IMAGENET)[0] == space.parse("ran_i_tiny")  # ConvNeXt-T's mass, fewer MACs
    assert space.scale(IMAGENET, reference=convnext_s)[0] == space.parse("ran_i_base")
    assert space.macs(space.parse("ran_i_tiny"), IMAGENET) < 0.75 * space.macs(convnext_t, IMAGENET)
    strategy = STRATEGIES.create("ran_i", STRATEGIES.entry("ran_i").config(evaluations=2), space=space)
    asked = [strategy.ask(), strategy.ask(), strategy.ask()]
    assert asked == [*space.scale(IMAGENET)[:2], None]


def test_the_jobs_load() -> None:
    for name in ("ran_quickstart.yaml", "ran_e_imagenet.yaml", "ran_i_imagenet.yaml"):
        job = load_job(ROOT / "jobs" / name)
        assert job.space.name in {"ran_e", "ran_i"}
