"""Loading a job against the registries: the one place where the component names a job file gives
(``space``, ``strategy``, ``data``, ``evaluator``) are looked up and their own settings checked.

:mod:`raynas.config` holds the schema and checks every other key; here each component section
becomes a :class:`raynas.config.Component` (its name and its validated config dataclass), and the
rules that span sections are applied (:func:`raynas.config.check_search_job`: an evaluator only
for sampling strategies, settings a search kind would ignore, what a strategy or evaluator needs
of the space), with each component's traits (:func:`traits_of`) as the registries hold them.
Every problem is a :class:`raynas.errors.ConfigError`: one line that names the key and says what
is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from raynas.config import (
    INPUTS_MATCH,
    JOB_SECTIONS,
    Check,
    Component,
    RetrainConfig,
    SearchConfig,
    build,
    check_search_job,
    checks_of,
    job_checks_of,
    parse_sections,
    read_job,
    rules_of,
    search_scope,
    trait_values,
)
from raynas.data import DATASETS
from raynas.errors import ConfigError, UnknownNameError
from raynas.evaluators import EVALUATORS
from raynas.registry import Entry, Registry
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.strategies.sampling import SamplingStrategy


def component(data: Any, section: str, registry: Registry[Any]) -> Component:
    """The registry selection a job section makes: ``{"name": ..., <settings>}`` or a bare name.

    Raises:
        ConfigError: The section is missing or has no name, the name is not registered (the
            message lists the registered ones), or a setting is unknown or of the wrong type.
    """
    if data is None:
        raise ConfigError(
            f"config section {section!r} is missing; it needs a 'name', one of: "
            f"{', '.join(registry.names())}"
        )
    if isinstance(data, str):
        data = {"name": data}
    if not isinstance(data, dict) or "name" not in data:
        raise ConfigError(
            f"config section {section!r} needs a 'name', one of: {', '.join(registry.names())}"
        )
    data = dict(data)
    name = data.pop("name")
    try:
        entry = registry.entry(str(name))
    except UnknownNameError as exc:
        raise ConfigError(f"config key '{section}.name': {exc}") from None
    config = build(entry.config, data, section) if entry.config is not None else None
    if config is None and data:
        raise ConfigError(f"{registry.kind} {name!r} takes no settings; remove {sorted(data)}")
    return Component(str(name), config)


# Every registered component's settings, for the checks the command line makes before it imports
# torch, Ray or MLflow (:func:`raynas.config.check_sections`); tests/test_startup.py checks it
# against the registries, and :func:`write_component_manifest` writes it again.
MANIFEST = Path(__file__).parents[1] / "components.json"
# The registry each component section selects from.
REGISTRIES: dict[str, Registry[Any]] = {
    "space": SPACES, "strategy": STRATEGIES, "data": DATASETS, "evaluator": EVALUATORS,
}


def component_manifest() -> dict[str, dict[str, Any]]:
    """Per component section: the registry's kind; per registered name, its settings in the
    order its config dataclass lists them, each with its type as JSON (:func:`_type_text`), or None
    if it takes no settings; and per name, the :class:`raynas.config.Rule` of each setting that
    has one (as :meth:`~raynas.config.Rule.to_json` writes it); per name with
    :class:`raynas.config.Check` rules, each check (:meth:`~raynas.config.Check.to_json`: its
    tables resolved into names); per name, its settings' defaults, its traits
    (:func:`traits_of`) and the rules it states between a job's sections (``job_checks``);
    and the sections inside components (``strategy.cell_shape``), written once each by the name
    their settings' types give (``{"settings": "CellShapeLimits"}``)."""
    import json
    import typing

    out: dict[str, dict[str, Any]] = {}
    for section, registry in REGISTRIES.items():
        names: dict[str, dict[str, Any] | None] = {}
        rules: dict[str, dict[str, Any]] = {}
        checks: dict[str, list[dict[str, Any]]] = {}
        job_checks: dict[str, list[dict[str, Any]]] = {}
        defaults: dict[str, dict[str, Any]] = {}
        traits: dict[str, dict[str, Any]] = {}
        sections: dict[str, Any] = {}
        for name in registry.names():
            entry = registry.entry(name)
            if not getattr(entry.target, "__module__", "").startswith("raynas."):
                continue  # registered by code outside raynas (a user's, a test's): not built in
            declared = traits_of(section, entry)
            if declared is not None:
                traits[name] = json.loads(json.dumps(dict(declared)))  # tuples as lists
            config = entry.config
            if config is None:
                names[name] = None
                continue
            hints = typing.get_type_hints(config)
            names[name] = {
                f.name: _type_text(hints[f.name], sections) for f in dataclasses.fields(config) if f.init
            }
            if rules_of(config):
                rules[name] = {key: rule.to_json() for key, rule in rules_of(config).items()}
            if checks_of(config):
                checks[name] = [check.to_json() for check in checks_of(config)]
            if job_checks_of(config):
                job_checks[name] = [check.to_json() for check in job_checks_of(config)]
            defaults[name] = _defaults(config, names[name])
        out[section] = {
            "kind": registry.kind, "names": names, "rules": rules, "checks": checks, "defaults": defaults,
            "traits": traits, "job_checks": job_checks, "sections": sections,
        }
    return out


def traits_of(section: str, entry: Entry[Any]) -> Mapping[str, Any] | None:
    """What the rules between a job's sections read of a registered component
    (:data:`raynas.config.TRAITS`): a strategy's from its class (its kind, whether it samples a
    one-shot supernet and searches the space's flat view), any other's as it was registered."""
    if section != "strategy":
        return entry.traits
    target = entry.target
    sampling = isinstance(target, type) and issubclass(target, SamplingStrategy)
    return {
        "kind": "sampling" if sampling else "gradient",
        "needs_supernet": bool(getattr(target, "needs_supernet", False)) if sampling else False,
        "needs_choices": bool(getattr(target, "needs_choices", True)) if sampling else False,
        "draws_answers": not sampling and hasattr(target, "draw_answers"),
        **(entry.traits or {}),
    }


def _settings(config: type, sections: dict[str, Any]) -> dict[str, Any]:
    """The settings of a config dataclass that a component's section holds as a section of its
    own (``strategy.cell_shape``): their types, rules, checks and defaults, as for a component."""
    import dataclasses
    import typing

    hints = typing.get_type_hints(config)
    names = {f.name: _type_text(hints[f.name], sections) for f in dataclasses.fields(config) if f.init}
    return {
        "names": names,
        "rules": {key: rule.to_json() for key, rule in rules_of(config).items()},
        "checks": [check.to_json() for check in checks_of(config)],
        "defaults": _defaults(config, names),
    }


def _defaults(config: type, types: dict[str, Any]) -> dict[str, Any]:
    """The default of each setting of ``config`` whose type the manifest writes (the values a
    :class:`raynas.config.Check` reads where a job leaves the setting out; a section of its own
    only where it is none by default)."""
    import dataclasses
    import json

    out = {}
    for f in dataclasses.fields(config):
        if types.get(f.name) is None:
            continue
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        else:
            continue
        if "settings" in json.dumps(types[f.name]) and value is not None:
            continue  # (a section of its own: its settings' defaults are its own)
        out[f.name] = value
    return json.loads(json.dumps(out))  # tuples as lists


def _type_text(hint: Any, sections: dict[str, Any]) -> Any:
    """``hint`` as JSON that :func:`raynas.config.manifest_type` reads back (``"int"``,
    ``{"literal": [...]}``, ``{"tuple": "str", "variadic": true}``, ``{"union": [...]}``, ...),
    ``{"settings": NAME}`` for a config dataclass of raynas's (described once in ``sections``
    under its class's name: :func:`_settings`), or None for a type it cannot write (the registry
    checks it)."""
    import dataclasses
    import types
    import typing

    if hint is type(None):
        return "None"
    if isinstance(hint, type) and hint.__name__ in ("int", "float", "str", "bool"):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint) and hint.__module__.startswith("raynas."):
        if hint.__name__ not in sections:  # a section inside the component's, written once
            sections[hint.__name__] = _settings(hint, sections)  # type: ignore[arg-type]
        return {"settings": hint.__name__}
    if origin is typing.Literal and all(isinstance(a, (str, int, float, bool)) for a in args):
        return {"literal": list(args)}
    parts = [_type_text(a, sections) for a in args if a is not Ellipsis]
    if None in parts or not args:
        return None
    if origin in (typing.Union, types.UnionType):
        return {"union": parts}
    if origin is tuple:
        return {"tuple": parts[0], "variadic": True} if Ellipsis in args else {"tuple": parts}
    if origin is list:
        return {"list": parts[0]}
    if origin is dict:
        return {"dict": parts}
    return None


def write_component_manifest(path: Path = MANIFEST) -> Path:
    """Write :func:`component_manifest` as JSON (``raynas/components.json``)."""
    import json

    path.write_text(json.dumps(component_manifest(), indent=1) + "\n")  # keys in their dataclass order
    return path


def _parser(registry: Registry[Any]) -> Any:
    return lambda data, section: component(data, section, registry)


def is_sampling(strategy: str) -> bool:
    """Whether the registered strategy ``strategy`` is an ask/tell controller."""
    return issubclass(STRATEGIES.get(strategy), SamplingStrategy)


def parse_job(raw: dict[str, Any]) -> SearchConfig:
    """Validate a search job's raw mapping (from YAML) into a :class:`SearchConfig`: its sections,
    then the rules between them (:func:`raynas.config.check_search_job`, with each component's
    traits and ``job_checks`` as the registries hold them)."""
    raw = dict(raw)
    evaluator = raw.pop("evaluator", None)
    if raw.get("data") is None:  # (a table's search may leave it out: its table's dataset then)
        raw.pop("data", None)
    parsers = {"space": _parser(SPACES), "strategy": _parser(STRATEGIES), "data": _parser(DATASETS)}
    chosen = None if "data" in raw or evaluator is None else component(evaluator, "evaluator", EVALUATORS)
    table = None if chosen is None else _table_dataset(chosen)
    if table:
        del parsers["data"]
    values = parse_sections(raw, SearchConfig, parsers)
    if evaluator is not None:
        values["evaluator"] = chosen or component(evaluator, "evaluator", EVALUATORS)
    if table:
        values["data"] = Component(table, None)  # named, never read: the table holds the scores
    config = SearchConfig(**values)
    check_search_job(*job_rules(config, given=(*raw, *(["evaluator"] if evaluator is not None else []))))
    return config


def _table_dataset(chosen: Component) -> str | None:
    """The dataset whose recorded results the evaluator ``chosen`` scores candidates by (its
    ``table`` trait, :data:`raynas.config.TRAITS`), or None for an evaluator that reads a dataset."""
    entry = EVALUATORS.entry(chosen.name)
    settings = {} if chosen.config is None else {
        f.name: getattr(chosen.config, f.name) for f in dataclasses.fields(chosen.config)
    }
    table = (trait_values(traits_of("evaluator", entry), settings) or {}).get("table")
    return table if isinstance(table, str) else None


def job_rules(
    config: SearchConfig, given: tuple[str, ...]
) -> tuple[dict[str, Any], dict[str, tuple[Check, ...]]]:
    """The names the rules between ``config``'s sections read (:func:`raynas.config.search_scope`:
    ``given``, the top-level keys its job wrote) and each component's ``job_checks``, as the
    registries hold them."""
    names: dict[str, str | None] = {}
    traits: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    checks: dict[str, tuple[Check, ...]] = {}
    for section, registry in REGISTRIES.items():
        chosen = getattr(config, section)
        names[section] = None if chosen is None else chosen.name
        if chosen is None:
            continue
        entry = registry.entry(chosen.name)
        values = {} if chosen.config is None else {
            f.name: getattr(chosen.config, f.name) for f in dataclasses.fields(chosen.config)
        }
        settings[section] = {k: _plain(v) for k, v in values.items()}
        traits[section] = trait_values(traits_of(section, entry), settings[section])
        checks[section] = job_checks_of(entry.config) if entry.config is not None else ()
    shared = {key: getattr(config, key) for key in JOB_SECTIONS}
    registered = {"evaluators": EVALUATORS.names(), "datasets": DATASETS.names()}
    return search_scope(names, traits, settings, shared, given, registered), checks


def _plain(value: Any) -> Any:
    """A setting's value as the manifest's checks see it: a section inside as a mapping."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def load_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> SearchConfig:
    """Read a search job file, apply ``key.sub=value`` overrides and validate everything.

    Args:
        path: The YAML job file.
        overrides: Strings of the form ``train.epochs=3``; the value is parsed as YAML.

    Raises:
        ConfigError: The file is missing or not YAML, or a key or value is not allowed.
    """
    return parse_job(read_job(path, overrides, kind="search"))


def parse_retrain_job(raw: dict[str, Any]) -> RetrainConfig:
    """Validate a retraining job's raw mapping into a :class:`RetrainConfig`."""
    if "architecture" not in raw:
        raise ConfigError(
            "config key 'architecture' is missing: a published name, a JSON file, or run:<MLflow run id>"
        )
    config = RetrainConfig(
        **parse_sections(raw, RetrainConfig, {"space": _parser(SPACES), "data": _parser(DATASETS)})
    )
    check_inputs(config.space.name, config.data.name)
    return config


def check_inputs(space: str, data: str) -> None:
    """That the networks of registered space ``space`` read what dataset ``data`` holds, token
    text or images (:data:`raynas.config.INPUTS_MATCH` over their registered traits).

    Raises:
        ConfigError: They do not.
    """
    scope = {"space": space, "data": data, "space_is": trait_values(SPACES.entry(space).traits, {}),
             "data_is": trait_values(DATASETS.entry(data).traits, {})}
    try:
        message = INPUTS_MATCH.broken_by(scope)
    except (LookupError, TypeError):  # a component registered without the trait: left to its code
        return
    if message is not None:
        raise ConfigError(message)


def load_retrain_job(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RetrainConfig:
    """Read and validate a retraining job file (``--set`` overrides as for searches)."""
    return parse_retrain_job(read_job(path, overrides, kind="retrain"))


__all__ = [
    "check_inputs", "component", "is_sampling", "load_job", "load_retrain_job", "parse_job",
    "parse_retrain_job",
]
