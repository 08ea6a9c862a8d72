"""Tests every registered search space gets automatically, the day it registers: the protocol,
sample -> contains, the JSON round trip and stable keys, the network's and the supernet's
forward and backward, clear errors for architectures that are not the space's, and the
published figures of the spaces that have them.

The user-defined example space (``examples/custom_space/tiny_cnn.py``) is imported here, so it
is tested like the built-in ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import mlflow_store

from raynas.errors import ArchitectureError, ConfigError
from raynas.profile import count_macs, count_params, counting_device
from raynas.spaces import SPACES
from raynas.spaces.drawing import picture
from raynas.supernet import build_supernet
from raynas.tracking.recorder import PICTURE_DPI
from raynas.types import Architecture, DatasetInfo, SearchSpace

EXAMPLE = Path(__file__).parents[1] / "examples" / "custom_space"
sys.path.insert(0, str(EXAMPLE))
import tiny_cnn  # noqa: E402, F401  (registers the example's "tiny_cnn" space)

sys.path.remove(str(EXAMPLE))

NAMES = SPACES.names()
# Named variants of a registered space, each checked by every test below as a space of its own:
# the darts space's other operation sets (PIBConv's, the morphological one) and RobustDARTS's
# reduced spaces S1-S4, as (space, config settings).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "darts[convnext]": ("darts", {"operations": "convnext"}),
    "darts[morphological]": ("darts", {"operations": "morphological"}),
    **{f"darts[robust={s}]": ("darts", {"robust": s}) for s in ("s1", "s2", "s3", "s4")},
}
CASES = [*NAMES, *VARIANTS]
TINY = DatasetInfo("cifar10", 3, 10, 16)  # 16x16 inputs: small, and two reductions leave 4x4

# Small settings, applied to the config fields a space has (a space that rejects one keeps its
# default for it): supernets of a few thousand parameters. A space whose sizes are named
# otherwise lists its own small settings in SMALL_CONFIG_OF.
SMALL_CONFIG = {"channels": 4, "layers": 3, "nodes": 2, "cells_per_stage": 1, "stem_multiplier": 1}
SMALL_CONFIG_OF: dict[str, dict[str, Any]] = {
    "xd": {
        "backbones": ("darts:DARTS_V2", "darts:DARTS_V1"), "depth_choices": (1, 2), "channels": 4,
        "layers": 3,
    },
    "fbnet": {
        "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16), "stage_depths": (1, 1),
        "stage_strides": (1, 2), "head_channels": 32,
    },
    "convnext": {
        "depth_choices": ((1, 2), (1, 2)), "width_choices": ((4, 8), (8, 16)), "kernel_choices": (3, 5),
        "expansion_choices": (1, 2), "stem_stride": 2, "layer_scale_init": 0.5,
    },
    "nexception": {
        "depth_choices": (1, 2), "kernel_choices": (3, 5), "widths": (4, 8, 8, 16, 16, 16, 16),
        "stem_stride": 1, "reductions": 2,
    },
    "autokeras": {"seed_width": 4},
    "ran_e": {
        "stem_channels": 8, "stem_stride": 1, "stage_channels": (8, 16), "stage_depths": (1, 2),
        "stage_strides": (1, 2), "halved_layers": (2,), "head_channels": 32, "head_kernel": 3,
        "kernels": (3, 5), "expansions": (2,),
    },
    "ran_i": {
        "base_depths": (1, 1), "base_widths": (8, 16), "width_multipliers": (0.5, 1.0),
        "depth_multipliers": (1.0, 2.0), "stem_stride": 2,
    },
}
# Small stand-alone networks: build()'s channels and layers (their meaning is the space's; fbnet
# takes its sizes from its config only).
SMALL_BUILD: dict[str, dict[str, int]] = {
    "nb201": {"channels": 4, "layers": 1}, "fbnet": {}, "darts_rnn": {"channels": 4},
    "enas_rnn": {"channels": 4},
}
DEFAULT_BUILD = {"channels": 4, "layers": 3}


def space_name(case: str) -> str:
    """The registered space of a test case (a space's name, or a variant's)."""
    return VARIANTS[case][0] if case in VARIANTS else case


def default_space(case: str) -> Any:
    """The space of a case at its default sizes (a variant: its settings over the defaults)."""
    name, settings = VARIANTS.get(case, (case, {}))
    entry = SPACES.entry(name)
    return SPACES.create(name, entry.config(**settings)) if settings else SPACES.create(name)


def small_space(case: str) -> Any:
    name, settings = VARIANTS.get(case, (case, {}))
    entry = SPACES.entry(name)
    if entry.config is None:
        return SPACES.create(name)
    if name in SMALL_CONFIG_OF:
        return SPACES.create(name, entry.config(**SMALL_CONFIG_OF[name], **settings))
    fields = {f.name for f in dataclasses.fields(entry.config)}
    config = entry.config(**settings)
    for key, value in SMALL_CONFIG.items():
        if key in fields:
            # not allowed small (RobustDARTS's spaces have 4 nodes): keep the default
            with contextlib.suppress(ValueError, TypeError, ConfigError):
                config = dataclasses.replace(config, **{key: value})
    return SPACES.create(name, config)


def example_input(space: Any) -> torch.Tensor:
    """Two inputs for the space's networks: images, unless the space makes its own (token ids)."""
    make = getattr(space, "example_input", None)
    return make(TINY, 2) if make is not None else torch.randn(2, 3, 16, 16)  # (B, C, H, W)


def sample(space: Any, seed: int = 0) -> Architecture:
    return space.sample(random.Random(seed))


def other_space_arch(case: str) -> Architecture:
    """An architecture of some other registered space."""
    other = next(n for n in NAMES if n != space_name(case))
    return sample(small_space(other))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def test_the_built_in_and_example_spaces_are_registered() -> None:
    assert {"darts", "nb201", "tiny_cnn"} <= set(NAMES)


@pytest.mark.parametrize("case", sorted(VARIANTS))
def test_each_variant_offers_other_candidates_than_its_space(case: str) -> None:
    ours, theirs = small_space(case).config, small_space(space_name(case)).config
    for reduction in (False, True):
        assert ours.edge_ops(reduction) != theirs.edge_ops(reduction)


@pytest.mark.parametrize("name", CASES)
def test_space_follows_the_protocol(name: str) -> None:
    entry = SPACES.entry(space_name(name))
    space = default_space(name)  # every space builds with its default config
    assert isinstance(space, SearchSpace), name
    assert entry.config is None or dataclasses.is_dataclass(entry.config)
    assert issubclass(space.architecture_type, Architecture)
    assert space.architecture_type.space in NAMES


@pytest.mark.parametrize("name", CASES)
def test_samples_belong_to_the_space_and_are_reproducible(name: str) -> None:
    space = small_space(name)
    archs = [sample(space, seed) for seed in range(8)]
    for arch in archs:
        assert type(arch) is space.architecture_type
        assert space.contains(arch)
    assert archs == [sample(space, seed) for seed in range(8)]
    assert len({a.key() for a in archs}) > 1, "eight samples, all the same network"
    assert not space.contains(other_space_arch(name))


@pytest.mark.parametrize("name", CASES)
def test_json_round_trip_and_parse(name: str, tmp_path: Path) -> None:
    space = small_space(name)
    for seed in range(4):
        arch = sample(space, seed)
        text = arch.to_json()
        assert json.loads(text)["space"] == arch.space
        back = Architecture.from_json(text)
        assert back == arch and hash(back) == hash(arch) and back.key() == arch.key()
        assert space.parse(text) == arch  # JSON text
        path = tmp_path / f"arch_{seed}.json"
        path.write_text(arch.to_json(indent=2))
        assert space.parse(str(path)) == arch  # a JSON file


@pytest.mark.parametrize("name", CASES)
def test_keys_are_short_stable_and_follow_the_network(name: str) -> None:
    space = small_space(name)
    archs = [sample(space, seed) for seed in range(10)]
    for arch in archs:
        key = arch.key()
        assert key.startswith(f"{arch.space}-") and len(key) <= len(arch.space) + 13
        assert key == Architecture.from_json(arch.to_json()).key() == arch.key()
    for a in archs:  # equal keys exactly when the canonical forms are equal
        for b in archs:
            assert (a.key() == b.key()) == (a.canonical() == b.canonical())


def test_keys_are_the_same_in_a_fresh_process() -> None:
    """Keys identify networks across runs and machines: no per-process salt (``hash()``)."""
    archs = {name: sample(small_space(name)) for name in CASES}
    script = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(EXAMPLE)!r})\n"
        "import tiny_cnn\n"
        "from raynas.spaces import SPACES\n"
        "from raynas.types import Architecture\n"
        "texts = json.loads(sys.stdin.read())\n"
        "print(json.dumps({n: Architecture.from_json(t).key() for n, t in texts.items()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps({n: a.to_json() for n, a in archs.items()}),
        capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123", "PATH": ""},
    )
    assert json.loads(out.stdout) == {n: a.key() for n, a in archs.items()}


@pytest.mark.parametrize("name", CASES)
def test_network_forward_and_backward(name: str) -> None:
    space = small_space(name)
    arch = sample(space, 1)
    build = SMALL_BUILD.get(space_name(name), DEFAULT_BUILD)
    net = space.build(arch, TINY, **build)
    net.train()
    logits = net(example_input(space))
    assert logits.shape[:2] == (2, TINY.num_classes)  # (B, classes), or (B, vocabulary, T)
    logits.logsumexp(1).sum().backward()
    # A network may hold parameters it never runs, as the code it follows creates them (the
    # enas_macro network's reductions of states no later layer reads): it names them in `unread`.
    unread = tuple(getattr(net, "unread", ()))
    grads = [p.grad for n, p in net.named_parameters() if p.requires_grad and not n.startswith(unread)]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.grad is None for n, p in net.named_parameters() if unread and n.startswith(unread))
    with pytest.raises(ArchitectureError):
        space.build(other_space_arch(name), TINY, **build)


@pytest.mark.parametrize("name", CASES)
def test_a_network_counted_on_the_cpu_counts_as_on_meta_tensors_and_leaves_the_rng_alone(name: str) -> None:
    """:func:`counting_device` builds small-input networks on the CPU (faster than meta tensors):
    the same parameters and multiply-adds as shapes alone give, and the global RNG, which building
    draws from, as it was; inputs above 64x64 pixels go to the meta device."""
    space = small_space(name)
    arch = sample(space, 1)
    build = SMALL_BUILD.get(space_name(name), DEFAULT_BUILD)
    shape = (TINY.in_channels, TINY.image_size, TINY.image_size)
    with torch.device("meta"):
        on_meta = space.build(arch, TINY, **build)
    rng = torch.random.get_rng_state()
    with counting_device(shape):
        on_cpu = space.build(arch, TINY, **build)
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert next(on_cpu.parameters()).device.type == "cpu"
    assert count_params(on_cpu) == count_params(on_meta)
    if not hasattr(space, "example_input"):  # images: token inputs have no MAC count
        assert count_macs(on_cpu, shape) == count_macs(on_meta, shape)
    with counting_device((3, 65, 64)):
        assert torch.empty(1).device.type == "meta"


# Spaces without a weight-sharing supernet: Auto-Keras grows each network from its parent's weights.
NO_SUPERNET = {"autokeras", "ran_i"}


@pytest.mark.parametrize("name", CASES)
def test_supernet_forward_backward_and_derivation(name: str) -> None:
    space = small_space(name)
    if space_name(name) in NO_SUPERNET:
        with pytest.raises(ConfigError, match=f"space {space_name(name)!r} has no supernet"):
            build_supernet(space, TINY)
        return
    supernet = build_supernet(space, TINY)
    if (SPACES.entry(space_name(name)).traits or {}).get("path_only"):
        # No architecture weights: a sampled path trains, and gives every weight on it a gradient.
        assert list(supernet.arch_parameters()) == []
        supernet.set_path(sample(space, 1))
        supernet.train()
        out = supernet(example_input(space))
        sum(o.logsumexp(1).sum() for o in (out if isinstance(out, tuple) else (out,))).backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in supernet.weights())
        return
    arch_params = list(supernet.arch_parameters())
    weights = list(supernet.weights())
    assert arch_params and weights
    assert not {id(p) for p in arch_params} & {id(p) for p in weights}
    assert len(arch_params) + len(weights) == len(list(supernet.parameters()))
    loss = supernet(example_input(space)).logsumexp(1).sum()
    loss.backward()
    for p in arch_params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    derived = supernet.genotype()
    assert space.contains(derived)
    assert supernet.arch_entropy() >= 0
    if hasattr(supernet, "skip_connects"):  # optional: spaces of DARTS-style cells
        assert supernet.skip_connects() >= 0
    json.dumps(supernet.arch_state())  # tracked as JSON


# --- bad input: an architecture that is not the space's names the bad part -------------------


@pytest.mark.parametrize("name", CASES)
def test_every_space_draws_its_architectures(name: str) -> None:
    space = small_space(name)
    arch = space.sample(random.Random(0))
    fig = picture(space, arch)
    assert fig is not None and fig.axes  # the space's own drawing, or the default one
    texts = {t.get_text() for ax in fig.axes for t in ax.texts}
    if not hasattr(space, "draw"):  # the default drawing shows every decision's chosen option
        chosen = [d.options[v] for d, v in zip(space.decisions(), space.encode(arch), strict=True)]
        assert set(chosen) <= texts
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=PICTURE_DPI)  # rendered as a run's picture is
    assert png.getvalue().startswith(b"\x89PNG")


@pytest.mark.parametrize("name", CASES)
def test_a_string_that_is_no_architecture_names_the_bad_part(name: str) -> None:
    space = small_space(name)
    with pytest.raises(ArchitectureError) as info:
        space.parse("nonsense~op")
    assert "nonsense~op" in str(info.value)


@pytest.mark.parametrize("name", CASES)
def test_another_spaces_architecture_file_is_refused_naming_the_file(name: str, tmp_path: Path) -> None:
    space = small_space(name)
    path = tmp_path / "foreign.json"
    path.write_text(other_space_arch(name).to_json())
    with pytest.raises(ArchitectureError) as info:
        space.parse(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(ArchitectureError) as info:
        space.parse(str(tmp_path / "missing.json"))
    assert "missing.json" in str(info.value)
    with pytest.raises(ArchitectureError):
        space.parse('{"truncated": ')


def test_error_messages_say_what_is_allowed() -> None:
    darts, nb201, tiny = small_space("darts"), small_space("nb201"), small_space("tiny_cnn")
    message = r"unknown genotype 'nonsense~op'; published genotypes: .*DARTS_V2"
    with pytest.raises(ArchitectureError, match=message):
        darts.parse("nonsense~op")
    with pytest.raises(ArchitectureError, match=r"architecture of space 'nb201', not darts"):
        darts.parse(sample(nb201).to_json())
    message = r"edge 0->1: unknown op 'conv' in 'conv~0'; choose one of: none"
    with pytest.raises(ArchitectureError, match=message):
        nb201.parse("|conv~0|+|none~0|none~1|+|none~0|none~1|none~2|")
    with pytest.raises(ArchitectureError, match=r"layer 1: unknown op 'conv'; allowed: skip_connect, "):
        tiny.parse("sep_conv_3x3,conv,skip_connect")
    with pytest.raises(ArchitectureError, match=r"has 2 layers; this tiny_cnn space has 3"):
        tiny.parse("sep_conv_3x3,skip_connect")


# --- published figures -----------------------------------------------------------------------

# Parameters of published architectures in the space's evaluation network (auxiliary head not
# counted), as (architecture text, dataset info, params). Each is checked in detail, with its
# source, in the space's own tests (test_darts_space.py, test_nb201.py); here through the protocol.
PUBLISHED_FIGURES: dict[str, list[tuple[str, DatasetInfo, int]]] = {
    "darts": [
        ("DARTS_V2", DatasetInfo("cifar10", 3, 10, 32), 3_349_342),  # DARTS README: 3.3M
        ("MiLeNAS", DatasetInfo("cifar10", 3, 10, 32), 3_874_222),  # MiLeNAS Table 1: 3.87M
    ],
    "auto_deeplab": [  # Auto-DeepLab-S (F = 20), Table 2: 10.15M (test_auto_deeplab.py: M and L)
        ("hnasnet", DatasetInfo("cityscapes", 3, 19, 1024), 10_147_427),
    ],
    "nb201": [  # the benchmark's cost_info (NASLib, NATS-Bench issue #36)
        ("|nor_conv_3x3~0|+|nor_conv_3x3~0|nor_conv_3x3~1|+|nor_conv_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
         DatasetInfo("cifar10", 3, 10, 32), 1_531_546),
    ],
    "darts_rnn": [  # DARTS README: 23M on PTB (10,000 words, 850 units); see test_darts_rnn.py
        ("DARTS_V2", DatasetInfo("ptb", 1, 10_000, 35), 22_960_000),
    ],
    "convnext": [  # torchvision 0.29's convnext_tiny(weights=None); see test_convnext_space.py
        ("convnext_tiny", DatasetInfo("imagenet", 3, 1000, 224), 28_589_128),
    ],
    "nexception": [  # timm's legacy_xception; NEXcepTion-T/-S/-TP in test_nexception.py
        ("xception", DatasetInfo("imagenet", 3, 1000, 224), 22_855_952),
    ],
    "enas_micro": [  # melodyguan/enas's final arc and network: the code's variables, test_enas_micro.py
        ("ENAS", DatasetInfo("cifar10", 3, 10, 32), 3_894_372),
    ],
    "enas_macro": [  # melodyguan/enas's macro final arc and network: the code's variables, test_enas_macro.py
        ("ENAS_macro", DatasetInfo("cifar10", 3, 10, 32), 42_559_392),
    ],
    "enas_rnn": [  # melodyguan/enas's ptb_final.sh arc and model: the code's variables, test_enas_rnn.py
        ("ENAS", DatasetInfo("ptb", 1, 10_000, 35), 22_027_104),
    ],
    "ran_e": [  # the official RAN_e/model/ran_e_model.py's ran_e_C-b0, counted in test_ran.py
        ("ran_e_c", DatasetInfo("imagenet", 3, 1000, 224), 4_634_872),
    ],
    "ran_i": [  # the official RAN_i/models/ran_i.py's ran_i_tiny; see test_ran.py
        ("ran_i_tiny", DatasetInfo("imagenet", 3, 1000, 224), 20_760_131),
    ],
}
# tiny_cnn: the worked example of a user-defined space. fbnet: the model zoo counts convolution and
# classifier weights only (no BatchNorm), so tests/test_fbnet.py checks FBNet-A/B/C in that convention.
# xd: the XD-operation space starts from a backbone and publishes no networks of its own.
# autokeras: its networks grow during a search; the paper publishes none of a fixed size.
# stacked_bnas: the paper's searched cells are not among the references (tests/test_stacked_bnas.py
# counts its networks by hand, and pins the README's DARTS_V2 example).
NO_PUBLISHED_FIGURES = {"tiny_cnn", "fbnet", "autokeras", "xd", "stacked_bnas"}


def test_every_space_has_published_figures_or_says_why_not() -> None:
    assert set(PUBLISHED_FIGURES) | NO_PUBLISHED_FIGURES == set(NAMES)
    assert set(PUBLISHED_FIGURES) & NO_PUBLISHED_FIGURES == set()


@pytest.mark.parametrize("name", sorted(PUBLISHED_FIGURES))
def test_published_figures(name: str) -> None:
    space = SPACES.create(name)
    for text, dataset, params in PUBLISHED_FIGURES[name]:
        assert count_params(space.build(space.parse(text), dataset)) == params, text


# --- the worked example runs a real search ---------------------------------------------------


@pytest.mark.parametrize("strategy", ["darts", "milenas"])
def test_the_custom_space_example_runs_a_search(
    strategy: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from mlflow.tracking import MlflowClient

    spec = importlib.util.spec_from_file_location("custom_space_search", EXAMPLE / "search.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    uri = mlflow_store(tmp_path)
    script.main([
        str(EXAMPLE / "job.yaml"), "--set", f"strategy.name={strategy}", "--set", "space.channels=4",
        "--set", "data.limit=96", "--set", "data.batch_size=16", "--set", "train.epochs=2",
        "--set", f"tracking.tracking_uri={uri}", "--set", f"tracking.output_dir={tmp_path / 'runs'}",
    ])
    out = capsys.readouterr().out
    assert "Found " in out and "MLflow run " in out
    run_id = out.rsplit("MLflow run ", 1)[1].split()[0]
    client = MlflowClient(uri)
    assert client.get_run(run_id).data.tags["raynas.space"] == "tiny_cnn"
    assert len(client.get_metric_history(run_id, "valid_acc")) == 2
    found = Path(client.download_artifacts(run_id, "genotype.json", str(tmp_path))).read_text()
    assert small_space("tiny_cnn").contains(Architecture.from_json(found))
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert "architecture.png" in artifacts  # the default picture of a space with decisions
