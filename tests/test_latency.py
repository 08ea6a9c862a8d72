"""Latency lookup tables: timing, tables keyed by device, prediction, rank correlation, the Ray
profiler on a local cluster with pretend accelerators, and ``raynas latency``."""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from raynas.cli import main
from raynas.errors import ConfigError
from raynas.execution.latency_profiler import cluster_node_types
from raynas.latency import (
    LatencyTable,
    TimingOptions,
    build_table,
    check_table,
    find_table,
    measure,
    predict_latency,
    spearman,
    table_path,
)
from raynas.spaces.fbnet import FbnetArch, FbnetSpace, FbnetSpaceConfig
from raynas.types import DatasetInfo

SMALL = FbnetSpaceConfig(
    stem_channels=8, stem_stride=1, stage_channels=(8, 16, 16, 24), stage_depths=(1, 2, 2, 1),
    stage_strides=(1, 2, 1, 2), head_channels=32,
)
DIGITS = DatasetInfo(name="digits", in_channels=1, num_classes=10, image_size=8)
QUICK = TimingOptions(warmup=2, repeats=5)


class Recorder(nn.Module):
    """Sleeps a fixed time per call and records how it was called."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls: list[tuple[bool, bool, int, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled(), torch.get_num_threads(), tuple(x.shape)))
        time.sleep(self.seconds)
        return x


def test_measure_warms_up_then_takes_the_median_in_eval_mode_without_grad() -> None:
    module = Recorder(0.004)
    threads = torch.get_num_threads()
    ms = measure(module, (3, 5, 5), options=TimingOptions(batch_size=2, warmup=3, repeats=7, threads=1))
    assert 4.0 <= ms < 40.0  # a 4 ms sleep, however busy the machine
    assert len(module.calls) == 3 + 7
    assert set(module.calls) == {(False, False, 1, (2, 3, 5, 5))}  # eval, no_grad, 1 thread, batch 2
    assert torch.get_num_threads() == threads  # restored


def test_timing_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="repeats >= 1"):
        TimingOptions(repeats=0)
    with pytest.raises(ConfigError, match="threads must be >= 1"):
        TimingOptions(threads=0)


def test_spearman_matches_scipy_with_ties() -> None:
    rng = random.Random(0)
    for _ in range(20):
        x = [rng.choice([1.0, 2.0, 3.0, rng.random()]) for _ in range(9)]
        y = [v + rng.gauss(0, 0.5) for v in x]
        assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    assert spearman([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)


def test_table_covers_the_space_and_predicts_the_sum_of_its_parts(tmp_path: Path) -> None:
    space = FbnetSpace(SMALL)
    table = build_table(space, DIGITS, device_name="cpu", options=QUICK)
    keys = {k for row in space.layer_latency_keys(DIGITS) for k in row}
    keys |= set(space.fixed_latency_keys(DIGITS))
    assert set(table.entries) == keys
    # Layers of the same shapes share entries: stages of 1, 2, 2, 1 layers have 4 distinct shapes.
    assert len(table.entries) == 4 * 9 + 2
    assert all(v > 0 for v in table.entries.values())
    assert table.description.startswith("cpu: ") and table.options == QUICK

    arch = FbnetArch(("skip", "k3_e1", "k5_e6", "skip", "k3_e1_g2", "k5_e3"))
    parts = [
        "stem:1x8->8/s1", "skip:8x8->8/s1", "k3_e1:8x8->16/s2", "k5_e6:16x4->16/s1", "skip:16x4->16/s1",
        "k3_e1_g2:16x4->16/s1", "k5_e3:16x4->24/s2", "head:24x2->32->10",
    ]
    assert space.latency_keys(arch, DIGITS) == parts
    assert predict_latency(table, space, arch, DIGITS) == pytest.approx(sum(table.entries[k] for k in parts))

    path = table.save(table_path(tmp_path, "cpu"))
    assert LatencyTable.load(path) == table
    assert find_table("cpu", tmp_path) == path.resolve()
    assert find_table(str(path), "elsewhere") == path.resolve()


def test_tables_of_several_layouts_merge_in_one_device_file(tmp_path: Path) -> None:
    first = LatencyTable(device="T4", description="old", entries={"a": 1.0, "b": 2.0})
    second = LatencyTable(device="T4", description="new", entries={"b": 3.0, "c": 4.0})
    merged = first.merged(second)
    assert merged.entries == {"a": 1.0, "b": 3.0, "c": 4.0} and merged.description == "new"


@pytest.mark.parametrize(("text", "message"), [
    ("{}", "must be a JSON object with 'device' and 'entries'"),
    ('{"device": "x", "entries": {"k": -1}}', "'entries' must map keys to non-negative milliseconds"),
    ("nope", "is not valid JSON"),
    (b'{"device": "\xff"}', "is not UTF-8 text (byte 0xff at offset 12)"),  # was a UnicodeDecodeError
    (None, "is not a file"),  # a folder named like a table: was "does not exist"
])
def test_bad_table_files_are_clear_errors(tmp_path: Path, text: str | bytes | None, message: str) -> None:
    path = tmp_path / "bad.json"
    if text is None:
        path.mkdir()
    elif isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(ConfigError) as info:
        LatencyTable.load(path)
    assert message in str(info.value) and "bad.json" in str(info.value)


def test_unknown_device_lists_the_tables_there(tmp_path: Path) -> None:
    LatencyTable(device="A100", description="", entries={}).save(tmp_path / "A100.json")
    with pytest.raises(ConfigError, match=r"no latency table for device 'V100'.*: A100"):
        find_table("V100", tmp_path)
    with pytest.raises(ConfigError, match="plain file name"):
        table_path(tmp_path, "../x")
    with pytest.raises(ConfigError, match="has no entry 'k'"):
        LatencyTable(device="A100", description="", entries={}).predict(["k"])


def test_table_sums_rank_whole_networks_of_very_different_cost() -> None:
    """Networks of all-skip, all-k3_e1 and all-k5_e6 layers on 32x32 inputs (about 1, 2-3 and
    5-9 ms each here, also with both cores busy): the table's sums and the measured networks put
    them in the same order. ``check_table``'s Spearman over a seeded sample is scipy's."""
    space = FbnetSpace(FbnetSpaceConfig(
        stem_channels=16, stem_stride=1, stage_channels=(32, 48, 64), stage_depths=(1, 2, 2),
        stage_strides=(1, 2, 2), head_channels=64,
    ))
    info = DatasetInfo(name="cifar10", in_channels=3, num_classes=10, image_size=32)
    steady = TimingOptions(warmup=3, repeats=15)  # medians of 15: a busy core moves few of them
    table = build_table(space, info, device_name="cpu", options=steady)
    check = check_table(table, space, info, samples=6, seed=3, options=QUICK)
    assert len(check.measured_ms) == len(check.predicted_ms) == len(check.architectures) == 6
    assert check.spearman == pytest.approx(spearmanr(check.predicted_ms, check.measured_ms).statistic)
    everything = [FbnetArch(tuple([b] * 5)) for b in ("skip", "k3_e1", "k5_e6")]
    predicted = [predict_latency(table, space, a, info) for a in everything]
    measured = [measure(space.build(a, info), (3, 32, 32), options=steady) for a in everything]
    assert predicted == sorted(predicted) and measured == sorted(measured)


def test_node_types_from_accelerators_custom_resources_and_plain_nodes() -> None:
    nodes = [
        {"NodeID": "h", "Alive": True, "Resources": {"memory": 1.0, "node:127.0.0.1": 1.0}},  # no CPU
        {"NodeID": "a", "Alive": True, "Resources": {"CPU": 8, "GPU": 1, "accelerator_type:A100": 1}},
        {"NodeID": "b", "Alive": True, "Resources": {"CPU": 8, "GPU": 1, "accelerator_type:A100": 1}},
        {"NodeID": "t", "Alive": True, "Resources": {"CPU": 4, "T4": 1, "node:10.0.0.3": 1}},
        {"NodeID": "c", "Alive": True, "Resources": {"CPU": 2, "memory": 1.0}},
        {"NodeID": "d", "Alive": False, "Resources": {"CPU": 2, "V100": 1}},
    ]
    types = cluster_node_types(nodes)
    assert set(types) == {"A100", "T4", "cpu"}
    assert types["A100"].node_ids == ("a", "b") and types["A100"].gpus == 1
    assert types["A100"].resources == {"accelerator_type:A100": 0.001}
    assert types["T4"].resources == {"T4": 0.001} and types["T4"].gpus == 0
    assert types["cpu"].resources == {} and types["cpu"].node_ids == ("c",)


@pytest.mark.integration
@pytest.mark.own_ray
def test_ray_profiler_measures_one_table_per_node_type_on_its_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A local two-node cluster with pretend accelerators: one actor per type runs on its node."""
    import ray
    from conftest import stop_ray_cluster
    from ray.cluster_utils import Cluster

    from raynas.execution.latency_profiler import profile_cluster

    temp_dir = tempfile.mkdtemp(prefix="rl", dir="/tmp")  # short: Ray's socket paths are limited
    monkeypatch.setenv("RAY_TMPDIR", temp_dir)
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 100_000_000, "include_dashboard": False,
    })
    try:
        a100 = cluster.add_node(num_cpus=1, resources={"A100": 1}, object_store_memory=100_000_000)
        t4 = cluster.add_node(num_cpus=1, resources={"T4": 1}, object_store_memory=100_000_000)
        ray.shutdown()  # a connection an earlier test left (no-op otherwise)
        ray.init(address=cluster.address, include_dashboard=False, logging_level="WARNING")
        results = profile_cluster("fbnet", SMALL, DIGITS, options=QUICK, out_dir=tmp_path)
        assert set(results) == {"A100", "T4"}
        assert results["A100"].node_id == a100.node_id and results["T4"].node_id == t4.node_id
        expected = set(FbnetSpace(SMALL).latency_items(DIGITS))
        for name, result in results.items():
            saved = LatencyTable.load(tmp_path / f"{name}.json")
            assert saved.device == name and set(saved.entries) == expected
            assert result.path == tmp_path / f"{name}.json"
        with pytest.raises(ConfigError, match=r"node type.*V100 not in the cluster; it has: A100, T4"):
            profile_cluster("fbnet", SMALL, DIGITS, options=QUICK, types=["V100"])
    finally:
        ray.shutdown()
        cluster.shutdown()
        stop_ray_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_cli_builds_a_device_table_from_a_job_and_validates_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = Path(__file__).parents[1] / "jobs" / "fbnet_quickstart.yaml"
    out = tmp_path / "tables"
    args = ["latency", "--job", str(job), "--device", "laptop", "--out", str(out), "--warmup", "1",
            "--repeats", "3", "--validate", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "laptop: 38 entries" in printed and "Spearman rank correlation over 3 architectures" in printed
    table = json.loads((out / "laptop.json").read_text())
    assert table["device"] == "laptop" and table["options"]["repeats"] == 3
    assert main(["latency", "--space", "darts", "--device", "x", "--out", str(out)]) == 2
    assert "space 'darts' has no latency tables" in capsys.readouterr().err


def test_describe_prints_the_published_fbnet_sizes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["describe", "--space", "fbnet", "--arch", "fbnet_a", "--dataset", "imagenet", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["space"] == "fbnet" and 4.2e6 < stats["params"] < 4.4e6
    assert main(["describe", "--space", "fbnet", "--arch", "k3_e1,k9_e1", "--dataset", "imagenet"]) == 2
    assert "fbnet layer 1: unknown block 'k9_e1'" in capsys.readouterr().err
