"""Job files: YAML loaded strictly into typed dataclasses, ``--set`` overrides, and errors that name
the bad key and say what is allowed."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from raynas.config import (
    Component,
    ExecutionConfig,
    SearchConfig,
    TrackingConfig,
    TrainConfig,
    apply_overrides,
    config_changes,
    flatten,
)
from raynas.data import DATASETS
from raynas.data.digits import DigitsConfig
from raynas.errors import ConfigError
from raynas.runs.jobs import load_job, parse_job
from raynas.spaces import SPACES
from raynas.spaces.darts_cnn import DartsSpaceConfig
from raynas.strategies import STRATEGIES
from raynas.strategies.gradient.darts import DartsConfig

QUICKSTART = Path(__file__).resolve().parents[1] / "jobs" / "quickstart.yaml"


def job(**sections: Any) -> dict[str, Any]:
    """A small valid job as raw YAML data; keyword arguments replace whole sections."""
    raw: dict[str, Any] = {
        "name": "unit",
        "space": {"name": "darts", "channels": 4, "layers": 3, "nodes": 2},
        "strategy": {"name": "darts", "order": 1},
        "data": {"name": "digits", "batch_size": 8},
        "train": {"epochs": 2},
    }
    raw.update(sections)
    return raw


def plain(obj: Any) -> dict[str, Any]:
    """A config dataclass as YAML-ready data (tuples as lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def config_error(raw: dict[str, Any], *overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_job(apply_overrides(raw, list(overrides)))
    return str(info.value)


def test_quickstart_job_loads() -> None:
    config = load_job(QUICKSTART)
    assert isinstance(config, SearchConfig)
    assert config.name == "quickstart"
    assert config.space == Component("darts", DartsSpaceConfig(channels=8, layers=3, nodes=4))
    assert config.strategy.name == "darts" and isinstance(config.strategy.config, DartsConfig)
    assert config.strategy.config.order == 1
    assert config.strategy.config.arch_learning_rate == pytest.approx(1e-2)
    assert config.data.name == "digits" and isinstance(config.data.config, DigitsConfig)
    assert config.data.config.batch_size == 128
    assert config.train.epochs == 6 and config.train.learning_rate == pytest.approx(0.1)
    assert config.execution == ExecutionConfig(backend="ray", cpus_per_worker=2.0)
    assert config.tracking.experiment == "raynas-quickstart"


def test_overrides_apply_to_the_job_file() -> None:
    config = load_job(QUICKSTART, ["train.epochs=3", "strategy.order=2", "execution.backend=local"])
    assert config.train.epochs == 3
    assert config.strategy.config.order == 2
    assert config.execution.backend == "local"
    assert config.train.learning_rate == pytest.approx(0.1)  # untouched keys keep their values


def test_apply_overrides_copies_and_creates_sections() -> None:
    raw = job()
    out = apply_overrides(
        raw, ["train.epochs=3", "tracking.experiment=x", "space.primitives=[none, skip_connect]"]
    )
    assert raw["train"] == {"epochs": 2}  # the input is not modified
    assert out["train"] == {"epochs": 3}
    assert out["tracking"] == {"experiment": "x"}
    assert out["space"]["primitives"] == ["none", "skip_connect"]  # values are parsed as YAML


@pytest.mark.parametrize("item", ["train.epochs", "=3", ""])
def test_malformed_override_is_rejected(item: str) -> None:
    with pytest.raises(ConfigError, match=r"must look like key\.sub=value"):
        apply_overrides(job(), [item])


def test_override_into_a_value_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"'name\.sub=1': name is not a section"):
        apply_overrides(job(), ["name.sub=1"])


def test_unknown_top_level_key_lists_the_allowed_ones() -> None:
    message = config_error(job(trian={"epochs": 3}))
    assert "unknown config key 'trian'" in message
    for key in ("data", "execution", "name", "seed", "space", "strategy", "tracking", "train"):
        assert key in message


def test_unknown_nested_key_lists_the_allowed_ones() -> None:
    message = config_error(job(), "train.epocs=3")
    assert "'train.epocs'" in message
    for key in ("epochs", "learning_rate", "learning_rate_min", "momentum", "weight_decay", "grad_clip"):
        assert key in message


def test_unknown_key_of_a_component_lists_that_components_keys() -> None:
    message = config_error(job(), "space.chanels=8")
    assert "'space.chanels'" in message
    assert "channels" in message and "nodes" in message
    message = config_error(job(), "data.path=/tmp")  # digits take no path
    assert "'data.path'" in message and "batch_size" in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.epochs=x", "config key 'train.epochs' must be an integer, got str 'x'"),
        ("train.epochs=2.5", "config key 'train.epochs' must be an integer, got float 2.5"),
        ("train.epochs=true", "config key 'train.epochs' must be an integer, got bool True"),
        ("train.learning_rate=fast", "config key 'train.learning_rate' must be a number, got str 'fast'"),
        ("seed=[1]", "config key 'seed' must be an integer"),
        ("tracking.experiment=5", "config key 'tracking.experiment' must be a string, got int 5"),
        ("train=3", "config key 'train' must be a mapping, got int 3"),
        ("space.primitives=skip_connect", "config key 'space.primitives' must be a list"),
    ],
)
def test_wrong_type_names_the_key_and_the_expected_type(override: str, expected: str) -> None:
    assert expected in config_error(job(), override)


@pytest.mark.parametrize(
    ("section", "registry"), [("space", SPACES), ("strategy", STRATEGIES), ("data", DATASETS)]
)
def test_unknown_component_name_lists_the_valid_names(section: str, registry: Any) -> None:
    message = config_error(job(), f"{section}.name=nope")
    assert f"'{section}.name'" in message and "'nope'" in message
    assert registry.names()
    for name in registry.names():
        assert name in message


def test_missing_sections_and_name_are_reported() -> None:
    raw = job()
    del raw["strategy"]
    message = config_error(raw)
    assert "section 'strategy' is missing" in message and "darts" in message
    raw = job()
    del raw["name"]
    assert "'name' is missing" in config_error(raw)


def test_component_given_by_name_only_uses_its_defaults() -> None:
    config = parse_job(job(strategy="darts"))
    assert config.strategy == Component("darts", DartsConfig())


@pytest.mark.parametrize(
    ("override", "key", "allowed"),
    [
        ("strategy.order=3", "strategy.order", "1, 2"),
        ("execution.backend=k8s", "execution.backend", "'ray', 'local'"),
    ],
)
def test_literal_violation_lists_the_allowed_values(override: str, key: str, allowed: str) -> None:
    message = config_error(job(), override)
    assert f"config key '{key}'" in message
    assert f"allowed: {allowed}" in message


def test_values_are_checked_by_the_components() -> None:
    assert "'train.epochs' must be at least 1" in config_error(job(), "train.epochs=0")
    assert "space.channels must be an even number" in config_error(job(), "space.channels=3")
    assert "unknown op 'conv_9x9'" in config_error(job(), "space.primitives=[none, conv_9x9]")
    assert "data.train_portion must be in (0, 1]" in config_error(job(), "data.train_portion=1.5")


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file '{path}' does not exist")):
        load_job(path)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\nspace: {")
    with pytest.raises(ConfigError, match=r"bad\.yaml' is not valid YAML"):
        load_job(path)
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_job(path)


def test_yaml_merge_keys_still_override_what_they_merge(tmp_path: Path) -> None:
    # A key given twice is refused (tests/test_fuzz_jobs.py); one that overrides a merged mapping
    # (``<<: *alias``) is YAML's way to share settings, and stays.
    from raynas.config import load_yaml

    path = tmp_path / "job.yaml"
    path.write_text("base: &b {epochs: 1, learning_rate: 0.1}\ntrain:\n  <<: *b\n  epochs: 5\n")
    assert load_yaml(path)["train"] == {"epochs": 5, "learning_rate": 0.1}


def test_exponent_without_a_dot_is_accepted_for_float_keys(tmp_path: Path) -> None:
    # PyYAML (YAML 1.1) reads 3e-4 as the string '3e-4'.
    assert yaml.safe_load("x: 3e-4")["x"] == "3e-4"
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job()) + "\n")
    path.write_text(path.read_text().replace("epochs: 2", "epochs: 2\n  weight_decay: 3e-4"))
    config = load_job(path, ["strategy.arch_learning_rate=6e-4"])
    assert config.train.weight_decay == pytest.approx(3e-4)
    assert isinstance(config.train.weight_decay, float)
    assert config.strategy.config.arch_learning_rate == pytest.approx(6e-4)
    # Integer keys stay strict: a numeric string is not an integer.
    assert "must be an integer" in config_error(job(), "train.epochs='3'")


def test_to_dict_fills_in_every_default_and_parses_back() -> None:
    config = parse_job(job())
    data = config.to_dict()
    assert data["name"] == "unit" and data["seed"] == 0
    assert data["space"] == {"name": "darts", **plain(DartsSpaceConfig(channels=4, layers=3, nodes=2))}
    assert data["space"]["primitives"] == list(DartsSpaceConfig().primitives)
    assert data["strategy"] == {"name": "darts", **plain(DartsConfig(order=1))}
    assert data["strategy"]["hessian_r"] == 0.01 and data["strategy"]["arch_betas"] == [0.5, 0.999]
    assert data["data"] == {"name": "digits", **plain(DigitsConfig(batch_size=8))}
    assert data["train"] == plain(TrainConfig(epochs=2))
    assert data["execution"] == {**vars(ExecutionConfig())}
    assert data["tracking"] == {**vars(TrackingConfig())}
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain data only
    assert parse_job(data) == config


def test_flatten_joins_nested_keys_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": "x"}) == {"a.b": 1, "a.c.d": [1, 2], "e": "x"}
    assert flatten({}) == {}
    flat = flatten(parse_job(job()).to_dict())
    assert flat["train.epochs"] == 2
    assert flat["space.channels"] == 4
    assert flat["strategy.name"] == "darts"
    assert flat["execution.backend"] == "ray"
    assert not any(isinstance(v, dict) for v in flat.values())


def test_config_changes_name_the_first_settings_that_differ_and_count_the_rest() -> None:
    before = {"seed": 0, "train": {"epochs": 2, "learning_rate": 0.025}, "data": {"name": "digits"}}
    now = {"seed": 0, "train": {"epochs": 3, "learning_rate": 0.05}, "data": {"name": "digits", "limit": 64},
           "tune": {"enabled": True}}
    assert config_changes(before, now) == (
        "data.limit was unset, is 64; train.epochs was 2, is 3; train.learning_rate was 0.025, is 0.05; "
        "and 1 more"
    )
    assert config_changes(now, before, limit=1) == "data.limit was 64, is unset; and 3 more"
    assert config_changes({"name": "x" * 100}, {"name": "y"}) == f"name was '{'x' * 36}..., is 'y'"
