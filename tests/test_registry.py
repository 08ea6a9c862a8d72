"""The one registry type behind every pluggable kind (spaces, strategies, datasets, ops)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from raynas.data import DATASETS
from raynas.errors import RaynasError, UnknownNameError
from raynas.ops import MIXED_OPS, OPS
from raynas.registry import Entry, Registry
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES


@dataclass(frozen=True)
class GreeterConfig:
    greeting: str = "hello"


class Greeter:
    def __init__(self, config: GreeterConfig, *, who: str = "world") -> None:
        self.text = f"{config.greeting} {who}"


class Named:
    def __init__(self, *, name: str) -> None:
        self.name = name


@pytest.fixture
def registry() -> Registry[type]:
    reg: Registry[type] = Registry("greeter")
    reg.register("plain", config=GreeterConfig)(Greeter)
    reg.register("alias")(Greeter)
    return reg


def test_register_returns_the_target_unchanged() -> None:
    reg: Registry[type] = Registry("thing")

    @reg.register("mine")
    class Mine:
        pass

    assert isinstance(Mine, type) and Mine.__name__ == "Mine"
    assert reg.get("mine") is Mine


def test_get_entry_and_contains(registry: Registry[type]) -> None:
    assert registry.get("plain") is Greeter
    assert registry.entry("plain") == Entry("plain", Greeter, GreeterConfig)
    assert registry.entry("alias").config is None
    assert "plain" in registry and "missing" not in registry
    assert "greeter" in repr(registry) and "plain" in repr(registry)


def test_create_passes_the_arguments(registry: Registry[type]) -> None:
    obj = registry.create("plain", GreeterConfig("hi"), who="there")
    assert isinstance(obj, Greeter) and obj.text == "hi there"


def test_create_passes_a_keyword_called_name() -> None:
    reg: Registry[type] = Registry("named")
    reg.register("n")(Named)
    assert reg.create("n", name="x").name == "x"


def test_names_are_sorted(registry: Registry[type]) -> None:
    registry.register("zeta")(Greeter)
    registry.register("beta")(Greeter)
    assert registry.names() == ["alias", "beta", "plain", "zeta"]
    assert Registry("empty").names() == []


def test_duplicate_registration_is_an_error(registry: Registry[type]) -> None:
    with pytest.raises(ValueError, match="greeter 'plain' is registered twice"):
        registry.register("plain")(Greeter)
    assert registry.get("plain") is Greeter  # the first registration stays


@pytest.mark.parametrize("lookup", ["get", "entry", "create"])
def test_unknown_name_lists_the_valid_names(registry: Registry[type], lookup: str) -> None:
    with pytest.raises(UnknownNameError) as info:
        getattr(registry, lookup)("plane")
    assert str(info.value) == "unknown greeter 'plane'; choose one of: alias, plain"
    assert isinstance(info.value, KeyError) and isinstance(info.value, RaynasError)
    assert info.value.__cause__ is None and info.value.__suppress_context__


@pytest.mark.parametrize(
    ("registry", "expected"),
    [
        pytest.param(SPACES, {"darts"}, id="spaces"),
        pytest.param(STRATEGIES, {"darts"}, id="strategies"),
        pytest.param(DATASETS, {"cifar10", "cifar100", "digits", "imagenet"}, id="datasets"),
        pytest.param(OPS, {"none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"}, id="ops"),
        pytest.param(MIXED_OPS, {"weighted"}, id="mixed-ops"),
    ],
)
def test_built_in_components_are_registered(registry: Registry, expected: set[str]) -> None:
    assert expected <= set(registry.names())
    for name in registry.names():
        entry = registry.entry(name)
        assert entry.name == name and entry.target is not None
        assert entry.config is None or dataclasses.is_dataclass(entry.config)
