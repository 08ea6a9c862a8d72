"""Job files: the schema of search and retraining jobs, and strict loading of YAML into it.

A job file has one section per component. Sections that select a registered component
(``space``, ``strategy``, ``data``, ``evaluator``) carry a ``name`` plus the fields of that
component's own config dataclass; they become a :class:`Component` when the job is loaded against
the registries (``raynas.runs.jobs``): this module knows no registry. Everything else is checked
here: an unknown key or a wrong type is a :class:`ConfigError` that names the key and says what
is allowed. ``--set key.sub=value`` overrides are applied to the raw YAML before validation, so
they are checked the same way.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from raynas.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class TrainConfig:
    """Weight training of the supernet (defaults: DARTS ``train_search.py``).

    ``stop_at_skip_connects``: end the search early once the normal cell the alphas choose has
    this many skip connections (DARTS+'s criterion, 2 in that paper); 0 never stops early.
    """

    epochs: int = 50
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    stop_at_skip_connects: int = 0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "train.epochs", "must be at least 1")
        check(self.stop_at_skip_connects >= 0, "train.stop_at_skip_connects", "must be >= 0")
        check(self.learning_rate > 0, "train.learning_rate", "must be positive")
        check(self.grad_clip > 0, "train.grad_clip", "must be positive")


@dataclass(frozen=True)
class ExecutionConfig:
    """Where the search runs.

    ``backend: ray`` puts the supernet in a Ray actor (a local Ray started on demand, or the
    cluster at ``address`` / ``RAY_ADDRESS``); ``backend: local`` runs it in-process.
    ``workers`` > 1 spreads one search over that many data-parallel actors (Ray only), each
    with ``cpus_per_worker`` and ``gpus_per_worker``. ``accelerator`` (e.g. ``A100``) puts the
    actors on that GPU type: each also asks for ``gpus_per_worker`` of the Ray custom resource of
    that name, which the cluster's GPU node types declare (see cluster/ and docs/kubernetes.md).

    Sampling searches evaluate ``concurrency`` candidates at a time (supernet replicas, or Tune
    trials, each placed like a worker above); their controller actor asks for
    ``controller_resources`` (e.g. a custom resource only the CPU nodes declare), so it stays
    off the GPU nodes.

    ``max_restarts``: how many lost actors (a node gone, a process killed) a search replaces and
    goes on without anyone re-running the command; past it the search stops, resumable.

    How the workers use their hardware (``raynas.train.accel``): ``device`` is ``auto`` (a GPU when
    the worker has one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``; ``precision: bf16`` runs
    forward and backward passes under bf16 autocast (weights and optimiser states stay float32);
    ``channels_last`` keeps convolutions in the NHWC layout; ``compile`` compiles stand-alone
    networks (candidates trained from scratch, retraining) with that ``torch.compile`` mode
    (``reduce-overhead`` replays CUDA graphs on a GPU). Supernets are not compiled: their
    architecture changes from step to step.
    """

    backend: Literal["ray", "local"] = "ray"
    address: str | None = None
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    accelerator: str | None = None
    object_store_mb: int = 256
    concurrency: int = 1
    controller_resources: dict[str, float] = field(default_factory=dict)
    max_restarts: int = 10
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = True
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"

    def __post_init__(self) -> None:
        check(self.cpus_per_worker > 0, "execution.cpus_per_worker", "must be positive")
        check(
            re.fullmatch(r"auto|cpu|cuda(:[0-9]+)?", self.device) is not None, "execution.device",
            "must be auto, cpu, cuda or cuda:N",
        )
        check(
            not self.device.startswith("cuda") or self.backend == "local" or self.gpus_per_worker > 0,
            "execution.device", "cuda on Ray workers needs execution.gpus_per_worker > 0",
        )
        check(self.workers >= 1, "execution.workers", "must be at least 1")
        check(
            self.workers == 1 or self.backend == "ray", "execution.workers",
            "above 1 needs execution.backend: ray",
        )
        check(self.gpus_per_worker >= 0, "execution.gpus_per_worker", "must be >= 0")
        check(self.object_store_mb >= 80, "execution.object_store_mb", "must be >= 80")
        check(self.concurrency >= 1, "execution.concurrency", "must be at least 1")
        check(self.max_restarts >= 0, "execution.max_restarts", "must be >= 0")
        check(
            all(v >= 0 for v in self.controller_resources.values()),
            "execution.controller_resources", "must be amounts >= 0",
        )
        if self.accelerator is not None:
            check(
                re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.accelerator) is not None,
                "execution.accelerator", "must be a Ray resource name such as A10G, A100 or H100",
            )
            check(
                self.backend == "ray" and self.gpus_per_worker > 0, "execution.accelerator",
                "needs execution.backend: ray and execution.gpus_per_worker > 0",
            )


@dataclass(frozen=True)
class TrackingConfig:
    """MLflow tracking, the Parquet results store and the output folder (checkpoints for resuming).

    ``results``: the Parquet results store (a folder or ``s3://bucket/prefix``; default
    ``<output_dir>/results``). ``artifact_location``: where a new MLflow experiment keeps its
    artifacts (e.g. ``s3://bucket/mlflow``; default: the tracking server's). ``registered_model``:
    the Model Registry name the final architecture is registered under (default
    ``raynas-<job name>``).
    """

    experiment: str = "raynas"
    tracking_uri: str | None = None
    output_dir: str = "runs"
    results: str | None = None
    artifact_location: str | None = None
    registered_model: str | None = None


@dataclass(frozen=True)
class Component:
    """A registry selection: the component's name and its validated config dataclass."""

    name: str
    config: Any


@dataclass(frozen=True)
class FinalRetrain:
    """The end of a sampling search: its ``top`` best candidates (by their search score) trained
    from scratch for ``epochs`` at ``channels`` / ``layers`` (0: the space's network defaults),
    SGD at ``learning_rate`` with cosine annealing; the best retrained one is the search's answer.
    """

    top: int = 0
    epochs: int = 10
    channels: int = 0
    layers: int = 0
    learning_rate: float = 0.05

    def __post_init__(self) -> None:
        check(self.top >= 0, "final.top", "must be >= 0")
        check(self.epochs >= 1, "final.epochs", "must be at least 1")
        check(self.channels >= 0 and self.layers >= 0, "final.channels", "and final.layers must be >= 0")
        check(self.learning_rate > 0, "final.learning_rate", "must be positive")


@dataclass(frozen=True)
class TuneSettings:
    """Ray Tune for sampling searches whose evaluator trains candidates (``evaluator: scratch``).

    ``scheduler``: ``none`` runs every candidate to its budget (Tune still runs them in parallel,
    ``execution.concurrency`` at a time); ``asha``, ``hyperband`` and ``pbt`` stop (or, PBT,
    perturb) candidates by their ``valid_acc`` after each epoch. ``grace_period`` and
    ``reduction_factor`` configure ASHA and HyperBand; ``perturbation_interval`` PBT.
    ``enabled: false`` evaluates candidates one after another in-process instead.
    """

    enabled: bool = True
    scheduler: Literal["none", "asha", "hyperband", "pbt"] = "asha"
    grace_period: int = 1
    reduction_factor: int = 2
    perturbation_interval: int = 1

    def __post_init__(self) -> None:
        check(self.grace_period >= 1, "tune.grace_period", "must be at least 1")
        check(self.reduction_factor >= 2, "tune.reduction_factor", "must be at least 2")
        check(self.perturbation_interval >= 1, "tune.perturbation_interval", "must be at least 1")


@dataclass(frozen=True)
class SearchConfig:
    """One search job, as written in ``jobs/*.yaml``.

    Gradient strategies (DARTS family) train a supernet's weights and architecture parameters;
    sampling strategies (random, evolution, SPOS, ENAS, ...) ask for candidates that the
    ``evaluator`` scores: ``supernet`` (inherited weights of a one-shot supernet), ``scratch`` (a
    short training from scratch, as Tune trials), or a training-free proxy.
    ``seeds`` runs one search per seed and reports mean and standard deviation;
    ``final`` retrains the best candidates of a sampling search from scratch at the end.

    ``train`` is the training of a supernet, and means one thing per kind of search:

    - gradient strategies: ``train.epochs`` epochs of the bilevel search (the supernet's weights
      and architecture parameters), with ``train``'s SGD settings and cosine schedule;
    - sampling strategies with ``evaluator: supernet``: ``train.epochs`` epochs of one-shot
      supernet training on the paths the strategy samples, before candidates are scored;
    - sampling strategies with any other evaluator: no supernet is trained, and a ``train``
      section is refused (each evaluator and ``final`` carry their own training budget).
    """

    name: str
    space: Component
    strategy: Component
    data: Component
    seed: int = 0
    seeds: tuple[int, ...] = ()
    evaluator: Component | None = None
    final: FinalRetrain = field(default_factory=lambda: FinalRetrain())
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneSettings = field(default_factory=lambda: TuneSettings())
    execution: ExecutionConfig = field(default_factory=ExecutionConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The full config as plain data (every default filled in; ``train`` only where a
        supernet is trained, ``tune`` only where candidates are trained from scratch)."""
        evaluator = self.evaluator.name if self.evaluator is not None else None
        sections = ("train",) if evaluator in (None, "supernet") else ()
        sections += ("tune",) if evaluator == "scratch" else ()
        out = to_dict_sections(
            self, scalars=("name", "seed"), components=("space", "strategy", "data", "evaluator"),
            sections=(*sections, "execution", "tracking"),
        )
        if self.seeds:
            out["seeds"] = list(self.seeds)
        if self.final.top:
            out["final"] = _asdict(self.final)
        return out


@dataclass(frozen=True)
class RetrainSettings:
    """The network's size and its training (defaults: DARTS ``train.py`` on CIFAR-10, except the
    epochs: 600 there).

    Attributes:
        epochs: Training epochs.
        channels: Initial channels (0: the space's evaluation default, 36 for DARTS on CIFAR).
        layers: Cells or layers (0: the space's default, 20 for DARTS on CIFAR).
        learning_rate: SGD learning rate, cosine-annealed to 0.
        momentum: SGD momentum.
        weight_decay: L2 weight decay.
        grad_clip: Gradient-norm clip.
        auxiliary_weight: Weight of the auxiliary head's loss (0: no head; 0.4 in DARTS).
        drop_path_prob: Drop-path probability, raised linearly from 0 over the epochs (0.2 in DARTS).
        label_smoothing: Label smoothing of the training loss (0.1 in DARTS on ImageNet).
        lr_gamma: If set, the learning rate decays by this factor every epoch instead of the
            cosine (0.97 in DARTS on ImageNet).
    """

    epochs: int = 50
    channels: int = 0
    layers: int = 0
    learning_rate: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    auxiliary_weight: float = 0.0
    drop_path_prob: float = 0.0
    label_smoothing: float = 0.0
    lr_gamma: float = 0.0

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "retrain.epochs", "must be at least 1")
        check(0 <= self.label_smoothing < 1, "retrain.label_smoothing", "must be in [0, 1)")
        check(0 <= self.lr_gamma <= 1, "retrain.lr_gamma", "must be in [0, 1] (0: cosine schedule)")
        check(self.channels >= 0 and self.layers >= 0, "retrain.channels", "and layers must be >= 0")
        check(self.learning_rate > 0, "retrain.learning_rate", "must be positive")
        check(self.auxiliary_weight >= 0, "retrain.auxiliary_weight", "must be >= 0")
        check(0 <= self.drop_path_prob < 1, "retrain.drop_path_prob", "must be in [0, 1)")


@dataclass(frozen=True)
class RetrainConfig:
    """One retraining job (``jobs/retrain_*.yaml``): what to train, on what, and where it goes."""

    name: str
    space: Component
    architecture: str
    data: Component
    seed: int = 0
    retrain: RetrainSettings = field(default_factory=RetrainSettings)
    execution: ExecutionConfig = field(default_factory=lambda: ExecutionConfig(backend="local"))
    tracking: TrackingConfig = field(default_factory=TrackingConfig)

    def to_dict(self) -> dict[str, Any]:
        """The full config as plain data (every default filled in)."""
        return to_dict_sections(
            self, scalars=("name", "seed", "architecture"), components=("space", "data"),
            sections=("retrain", "execution", "tracking"),
        )


def to_dict_sections(
    config: Any, *, scalars: tuple[str, ...], components: tuple[str, ...], sections: tuple[str, ...]
) -> dict[str, Any]:
    """A job config as plain data: its scalar keys, its registry selections (``name`` plus the
    component's settings; absent ones left out) and its plain sections."""
    out: dict[str, Any] = {key: getattr(config, key) for key in scalars}
    for section in components:
        comp: Component | None = getattr(config, section)
        if comp is not None:
            out[section] = {"name": comp.name, **_asdict(comp.config)}
    for section in sections:
        out[section] = _asdict(getattr(config, section))
    return out


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists are kept as values)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def load_yaml(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A job file's mapping with ``key.sub=value`` overrides applied (not yet validated)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    return apply_overrides(raw, overrides)


ComponentParser = Callable[[Any, str], "Component"]  # (raw section, section name) -> Component


def parse_sections(
    raw: dict[str, Any], cls: type[T], components: Mapping[str, ComponentParser]
) -> dict[str, Any]:
    """Validate ``raw`` against the job dataclass ``cls``; returns the constructor's arguments.

    Args:
        raw: The job file's mapping (overrides applied).
        cls: The job dataclass (:class:`SearchConfig`, :class:`RetrainConfig`).
        components: For each section that selects a registered component, the function that
            resolves it (the job loader in ``raynas.runs.jobs`` looks the name up in its registry).
            Every other key is checked here, by type.
    """
    raw = dict(raw)
    values: dict[str, Any] = {}
    for section, parse in components.items():
        values[section] = parse(raw.pop(section, None), section)
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(
            f"unknown config key {unknown[0]!r}; allowed top-level keys: {', '.join(sorted(allowed))}"
        )
    if "name" not in raw:
        raise ConfigError("config key 'name' is missing (a name for the job)")
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        values[key] = _convert(value, hints[key], key)
    return values


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override set (value parsed as YAML)."""
    raw = _deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = value
    return raw


def build(cls: type[T], data: Any, where: str) -> T:
    """Build the dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Args:
        cls: A dataclass type.
        data: The mapping from YAML (``None`` means all defaults).
        where: The dotted path of the section, for error messages.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config key {where!r} must be a mapping, got {_show(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {_join(where, unknown[0])!r}; allowed: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {k: _convert(v, hints[k], _join(where, k)) for k, v in data.items()}
    missing = [
        name
        for name, f in fields.items()
        if name not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"config key {_join(where, missing[0])!r} is missing")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config section {where!r}: {exc}") from None


def _convert(value: Any, hint: Any, where: str) -> Any:
    """Check ``value`` against the type ``hint``, converting only where lossless."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _convert(value, option, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {where!r}: {_show(value)} "
                          f"matches none of {_type_name(hint)}")
    if origin is Literal:
        if value not in args:
            allowed = ", ".join(repr(a) for a in args)
            raise ConfigError(f"config key {where!r} is {_show(value)}; allowed: {allowed}")
        return value
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {where!r} must be a mapping, got {_show(value)}")
        key_hint, item = args if args else (Any, Any)
        return {
            _convert(k, key_hint, where): _convert(v, item, f"{where}.{k}") for k, v in value.items()
        }
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {where!r} must be a list, got {_show(value)}")
        item = args[0] if args else Any
        return tuple(_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)  # type: ignore[arg-type]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {where!r} must be true or false, got {_show(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {where!r} must be an integer, got {_show(value)}")
        return value
    if hint is float:
        # PyYAML reads 3e-4 (no dot) as a string: accept numeric strings for float keys.
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where!r} must be a number, got {_show(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {where!r} must be a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


def check(ok: bool, key: str, rule: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` and its ``rule`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key {key!r} {rule}")


def _asdict(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(obj).items()}


def _deepcopy(raw: Any) -> Any:
    if isinstance(raw, dict):
        return {k: _deepcopy(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_deepcopy(v) for v in raw]
    return raw


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _show(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
