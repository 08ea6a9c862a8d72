"""Job files: the schema of search and retraining jobs, and strict loading of YAML into it.

A job file has one section per component. Sections that select a registered component
(``space``, ``strategy``, ``data``, ``evaluator``) carry a ``name`` plus the fields of that
component's own config dataclass; they become a :class:`Component` when the job is loaded against
the registries (``raynas.runs.jobs``): this module knows no registry. Everything else is checked
here: an unknown key or a wrong type is a :class:`ConfigError` that names the key and says what
is allowed. ``--set key.sub=value`` overrides are applied to the raw YAML before validation, so
they are checked the same way.

Whatever a file or an override holds, loading ends in a value or in one :class:`ConfigError`:
files that are not UTF-8 YAML, larger than :data:`MAX_JOB_BYTES`, nested deeper than
:data:`MAX_DEPTH` or expanding (through aliases) past :data:`MAX_NODES` values; keys that are
not names; numbers that are not finite or out of range (:func:`check_number`); job names that
are not plain folder names (:data:`NAME_PATTERN`).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import json
import math
import numbers
import operator
import os
import re
import sys
import types
import typing
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

import yaml

from raynas.errors import ConfigError, read_user_text

T = TypeVar("T")

MAX_JOB_BYTES = 1 << 20
"""The largest job file read (1 MiB; the examples in ``jobs/`` are under 3 kB)."""
MAX_DEPTH = 32
"""The deepest nesting of sections and lists in a job (the schema needs 4)."""
MAX_NODES = 100_000
"""The most values a job may hold once its YAML aliases are expanded (stops alias bombs)."""
MAX_STRING = 4096
"""The longest string value (the longest path most systems allow)."""
INT_LIMIT = 2**31
"""Every integer setting lies in [-INT_LIMIT, INT_LIMIT)."""
FLOAT_LIMIT = 1e15
"""Every number setting is finite and at most this in size (Ray's resource amounts stop near 9e14)."""
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
"""A job's name: it names the folder ``<output_dir>/<name>/``, so a plain name of 1-32
characters (letters, digits, ``_``, ``-``, ``.``; not starting with ``.``, ``_`` or ``-``)."""


@dataclass(frozen=True)
class TrainConfig:
    """Weight training of the supernet (defaults: DARTS ``train_search.py``).

    ``stop_at_skip_connects``: end the search early once the normal cell the alphas choose has
    this many skip connections (DARTS+'s criterion, 2 in that paper); 0 never stops early.
    ``nesterov``: Nesterov momentum for the weights' SGD (GDAS's search config sets it).
    ``warmup_epochs``: the first epochs' rates rise linearly to the cosine's, ``(e + 1) / warmup``
    of it in epoch ``e`` (PC-DARTS's ImageNet search: 5); 0: no warm-up.
    ``schedule``: the weights' rate anneals by ``cosine`` to ``learning_rate_min`` (DARTS), or by
    ``step``: times ``gamma`` at each of ``milestones``, fractions of the epochs (relax's XD trainer:
    0.1 at 0.5 and 0.75; :func:`raynas.train.schedules.step_schedule`), or by ``restarts``: cosine
    annealing to ``learning_rate_min`` restarted after ``restart_epochs``, each period ``restart_mult``
    times the last (Loshchilov and Hutter's SGDR; ENAS's ``lr_T_0`` 10 and ``lr_T_mul`` 2), or by
    ``exponential``: epoch ``e`` runs at ``max(learning_rate * gamma ** max(e - decay_start, 0),
    learning_rate_min)`` (ENAS's ``get_train_ops`` without ``lr_cosine``: ``lr_dec_start``,
    ``lr_dec_every`` 1 epoch, ``lr_dec_rate``, ``lr_dec_min``).
    ``grad_clip``: the weights' gradient-norm clip; 0 (none) for a sampling search's supernet only.
    ``decay_in_loss``: ``weight_decay`` is the gradient of an L2 term of the loss over every weight,
    ``weight_decay / 2 * sum(w ** 2)``: added to every weight's gradient before the clip, those
    off the step's path too (ENAS's ``get_train_ops`` adds ``l2_reg * sum(w ** 2)`` to its loss);
    else SGD's weight decay, after the clip, on the weights with a gradient. For a sampling
    search's supernet (gradient strategies step their own weights).
    """

    epochs: int = 50
    learning_rate: float = 0.025
    learning_rate_min: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    stop_at_skip_connects: int = 0
    nesterov: bool = False
    warmup_epochs: int = 0
    schedule: Literal["cosine", "step", "restarts", "exponential"] = "cosine"
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    restart_epochs: int = 10
    restart_mult: int = 2
    decay_start: int = 0
    decay_in_loss: bool = False

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "train.epochs", "must be at least 1")
        check(self.decay_start >= 0, "train.decay_start", "must be >= 0 (ENAS's lr_dec_start)")
        check(self.stop_at_skip_connects >= 0, "train.stop_at_skip_connects", "must be >= 0")
        check(self.learning_rate > 0, "train.learning_rate", "must be positive")
        check(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0: none)")
        check(self.restart_epochs >= 1, "train.restart_epochs", "must be at least 1")
        check(self.restart_mult >= 1, "train.restart_mult", "must be at least 1")
        check(not self.nesterov or self.momentum > 0, "train.nesterov", "needs train.momentum > 0")
        check(0 <= self.warmup_epochs <= self.epochs, "train.warmup_epochs", "must be in [0, train.epochs]")
        check(
            bool(self.milestones) and all(0 < m < 1 for m in self.milestones)
            and list(self.milestones) == sorted(set(self.milestones)),
            "train.milestones",
            f"must be fractions of the epochs in (0, 1), increasing, got {list(self.milestones)}",
        )
        check(self.gamma > 0, "train.gamma", "must be positive")
        check(self.schedule == "cosine" or not self.warmup_epochs, "train.warmup_epochs",
              "is the cosine schedule's warm-up; train.schedule step, restarts and exponential have none")


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

    ``max_restarts``: how many lost actors (a node gone, a process killed) a search, retraining
    or study replaces and goes on without anyone re-running the command; past it the command
    stops, resumable.

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
    artifacts (e.g. ``s3://bucket/mlflow``; default: the tracking server's, or ``mlruns/`` beside a
    local SQLite store's database file). ``registered_model``:
    the Model Registry name the final architecture is registered under (default
    ``raynas-<job name>``). ``pictures``: draw the runs' pictures (each candidate's and the
    result's ``architecture.png``, ``arch_weights.png``, ``cell_shapes.png``, ``pareto.png``, a
    study's plot); false leaves them out, and the time their drawing takes (about 0.3 s each on a
    CPU core), in quick runs whose numbers are all that is wanted.
    """

    experiment: str = "raynas"
    tracking_uri: str | None = None
    output_dir: str = "runs"
    results: str | None = None
    artifact_location: str | None = None
    registered_model: str | None = None
    pictures: bool = True

    def __post_init__(self) -> None:
        if self.tracking_uri:
            check_tracking_uri(self.tracking_uri, "config key 'tracking.tracking_uri'")
        check(self.experiment.strip() != "", "tracking.experiment", "must be a non-empty name")
        check(self.output_dir.strip() != "", "tracking.output_dir", "must be a folder or s3://bucket/prefix")
        for key in ("tracking_uri", "results", "artifact_location", "registered_model"):
            value = getattr(self, key)
            check(value is None or value.strip() != "", f"tracking.{key}", "must not be empty (leave it out)")


_DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy URLs, any +driver


def check_tracking_uri(uri: str, what: str) -> None:
    """An MLflow tracking URI raynas can use: ``http(s)://host[:port]``, a database
    (``sqlite:///path/mlflow.db``, ``postgresql://...``, ``mysql://...``, ``mssql://...``) or
    Databricks; a file store (``file:`` or a plain path) only where MLflow opens one
    (``MLFLOW_ALLOW_FILE_STORE=true``: MLflow 3 refuses it otherwise).

    Args:
        uri: The URI.
        what: Where it came from, for the message (``config key 'tracking.tracking_uri'``).

    Raises:
        ConfigError: Saying what to write instead.
    """
    shown = _short(uri, 200)
    try:
        parsed = urlparse(uri)
    except ValueError as exc:
        raise ConfigError(f"{what} is {shown!r}, not a URI ({exc})") from None
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and uri[1:2] == ":"):  # a path (C:\ too)
        if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").lower() in ("1", "true"):
            return
        raise ConfigError(
            f"{what} is {shown!r}, MLflow's file store, which MLflow 3 opens only with "
            "MLFLOW_ALLOW_FILE_STORE=true; use a database such as sqlite:///<folder>/mlflow.db "
            "(`mlflow migrate-filestore` moves an existing ./mlruns into one) or a server, http://host:port"
        )
    if scheme in ("http", "https"):
        if not parsed.hostname:
            raise ConfigError(f"{what} is {shown!r}, which names no host; write http://host:port")
        return
    if scheme.split("+")[0] in _DATABASE_SCHEMES or scheme in ("databricks", "databricks-uc", "uc"):
        return
    raise ConfigError(
        f"{what} is {shown!r}, of unknown scheme {scheme!r}; use http(s)://host:port (an MLflow "
        "server), sqlite:///<folder>/mlflow.db, postgresql://, mysql:// or mssql:// (a database)"
    )


@dataclass(frozen=True)
class Component:
    """A registry selection: the component's name and its validated config dataclass."""

    name: str
    config: Any


@dataclass(frozen=True)
class FinalRetrain:
    """The end of a search: ``top`` architectures trained from scratch for ``epochs`` at
    ``channels`` / ``layers`` (0: the space's network defaults), SGD at ``learning_rate`` with
    cosine annealing (0: 0.05) on batches of ``batch_size`` (0: the job's ``data.batch_size``),
    or, a language model on a text corpus, as DARTS's rnn/train.py trains one (the
    ``language_model`` evaluator; 0: its lr 20 and 64 streams); the best retrained one is the
    search's answer. A sampling search retrains
    its ``top`` best candidates (by their search score); a gradient strategy that learns a
    distribution (``fbnet``) retrains ``top`` distinct architectures drawn from it, as FBNet does;
    a job of several ``seeds`` whose strategy derives one architecture (DARTS) retrains its ``top``
    best seeds' architectures, as DARTS picks the best of its four searches.
    """

    top: int = 0
    epochs: int = 10
    channels: int = 0
    layers: int = 0
    learning_rate: float = 0.0
    batch_size: int = 0

    def __post_init__(self) -> None:
        check(self.top >= 0, "final.top", "must be >= 0")
        check(self.batch_size >= 0, "final.batch_size", "must be >= 0 (0: the training's own)")
        check(self.epochs >= 1, "final.epochs", "must be at least 1")
        check(self.channels >= 0 and self.layers >= 0, "final.channels", "and final.layers must be >= 0")
        check(self.learning_rate >= 0, "final.learning_rate", "must be >= 0 (0: the training's own)")


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
    short training from scratch, as Tune trials), a training-free proxy, or a benchmark's table
    (``nb201_table``, whose search may leave ``data`` out: it is then the table's dataset, named
    but not configured, ``data.config`` None, as no image is read).
    ``seeds`` runs one search per seed and reports mean and standard deviation;
    ``final`` retrains the best candidates of a sampling search (or architectures drawn from
    ``fbnet``'s distribution) from scratch at the end; with ``seeds`` and a strategy that derives
    one architecture (DARTS), the ``final.top`` best seeds' architectures, and the job's answer
    is the best retrained (:mod:`raynas.runs.selection`).

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

    def __post_init__(self) -> None:
        check(len(set(self.seeds)) == len(self.seeds), "seeds", "must not repeat a seed")

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
        learning_rate: The optimiser's learning rate, cosine-annealed to 0.
        momentum: SGD momentum.
        weight_decay: SGD's L2 weight decay; AdamW's decoupled one, not on 1-D parameters and
            biases (ConvNeXt's ``optim_factory.py``).
        grad_clip: Gradient-norm clip (0: none, as ConvNeXt's ``main.py``).
        optimizer: ``sgd``, ``adamw`` (ConvNeXt's ``--opt adamw``) or ``lamb`` (NEXcepTion's
            ``--opt fusedlamb``: LAMB with its gradients clipped at global norm 1).
        betas: AdamW's betas (torch's (0.9, 0.999), which ConvNeXt keeps).
        eps: AdamW's epsilon (1e-8, ConvNeXt's ``--opt_eps``).
        warmup_epochs: The first epochs' rates rise linearly to the cosine's, ``(e + 1) / warmup``
            of it in epoch ``e`` (ConvNeXt warms up for 20, per iteration); 0: none.
        ar: A recurrent language model's activation regularisation, ``ar * mean(h ** 2)`` of the
            output-dropped cell outputs (rnn/train.py's ``--alpha``, 0).
        tar: Its temporal activation regularisation, ``tar * mean((h_{t+1} - h_t) ** 2)`` of the
            raw ones (``--beta``, 1e-3).
        nonmono: Its switch from SGD to averaged SGD: once the validation loss is worse than the
            best of all but the last ``nonmono`` epochs (``--nonmono``, 5); 0: never.
        valid_streams: Its validation text is read as this many streams (``eval_batch_size`` 10).
        test_streams: Its test text is read as this many streams (``test_batch_size`` 1).
        auxiliary_weight: Weight of the auxiliary head's loss (0: no head; 0.4 in DARTS).
        drop_path_prob: Drop-path probability, raised linearly from 0 over the epochs (0.2 in DARTS).
        drop_path_ramp: ``epoch``: epoch ``e`` of ``E`` drops at ``drop_path_prob * e / E``
            (DARTS's ``train.py``); ``step``: step ``k`` of ``K`` in the whole training at
            ``drop_path_prob * (k + 1) / K`` (ENAS's ``_apply_drop_path``).
        label_smoothing: Label smoothing of the training loss (0.1 in DARTS on ImageNet).
        lr_gamma: If set, the learning rate decays by this factor every epoch instead of the
            cosine (0.97 in DARTS on ImageNet), after epoch ``decay_start`` and down to
            ``min_learning_rate`` (ENAS on PTB: 0.9991 after epoch 14, down to 0.001); also for
            recurrent language models, whose rate is otherwise constant.
        decay_start: The epochs ``lr_gamma`` waits (ENAS's ``--child_lr_dec_start``; 0: none).
        lr_power: If set, DeepLab's poly schedule instead, updated every iteration:
            ``learning_rate * (1 - iteration / iterations) ** lr_power`` (0.9 in DeepLab and
            Auto-DeepLab, Sec. 5.2).
        mixup: Mixup's alpha (ConvNeXt's ``--mixup`` 0.8; 0: none): each training batch is mixed
            with itself reversed, the targets likewise, smoothed by ``label_smoothing``.
        cutmix: CutMix's alpha (ConvNeXt's ``--cutmix`` 1.0; 0: none).
        mix_switch_prob: With both, the chance that a batch is CutMixed rather than mixed up
            (``--mixup_switch_prob`` 0.5).
        ema_decay: If set, an exponential moving average of the weights at this decay is kept
            and tested after every epoch too (``test_ema_*``), as ConvNeXt's ``--model_ema``
            with ``--model_ema_decay`` 0.9999 and ``--model_ema_eval``; 0: none.
        min_learning_rate: Where the cosine ends (ConvNeXt's ``--min_lr`` 1e-6; DARTS: 0), or
            ``lr_gamma``'s floor.
        restart_epochs: If set, the cosine restarts (SGDR): its first period is this many epochs,
            each next one ``restart_mult`` times longer, every period annealing from
            ``learning_rate`` to ``min_learning_rate`` (ENAS's final runs: ``--child_lr_T_0=10``,
            ``--child_lr_T_mul=2``); 0: one cosine over the epochs.
        restart_mult: How much longer each period of the restarts is than the last.
        nesterov: Nesterov momentum for SGD (ENAS's ``get_train_ops``).
        lr_per_step: The cosine and its warm-up set the rate every iteration, the warm-up rising
            linearly from 0 (ConvNeXt's ``utils.cosine_scheduler``), instead of once an epoch.
        loss: ``cross_entropy``, or ``bce``: binary cross-entropy of every class against the
            (mixed, smoothed) targets (timm's ``--bce-loss``, NEXcepTion's).
        bce_target_threshold: With ``bce``, targets above it count as 1, the others 0
            (``--bce-target-thresh`` 0.2); 0: the targets as they are.
        aug_repeats: Repeated augmentation: each image this many times in a row, augmented anew,
            an epoch as long as before (timm's ``--aug-repeats``, 3 in NEXcepTion's command); 1: none.
        decay_in_loss: SGD's ``weight_decay`` as the gradient of an L2 term of the loss over every
            weight: added to every weight's gradient before the clip (ENAS's ``get_train_ops``),
            not after it.
    """

    epochs: int = 50
    channels: int = 0
    layers: int = 0
    learning_rate: float = 0.025
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    optimizer: Literal["sgd", "adamw", "lamb"] = "sgd"
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: int = 0
    ar: float = 0.0
    tar: float = 1e-3
    nonmono: int = 5
    valid_streams: int = 10
    test_streams: int = 1
    auxiliary_weight: float = 0.0
    drop_path_prob: float = 0.0
    label_smoothing: float = 0.0
    lr_gamma: float = 0.0
    decay_start: int = 0
    lr_power: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    mix_switch_prob: float = 0.5
    ema_decay: float = 0.0
    min_learning_rate: float = 0.0
    restart_epochs: int = 0
    restart_mult: int = 2
    nesterov: bool = False
    lr_per_step: bool = False
    loss: Literal["cross_entropy", "bce"] = "cross_entropy"
    bce_target_threshold: float = 0.0
    aug_repeats: int = 1
    decay_in_loss: bool = False
    drop_path_ramp: Literal["epoch", "step"] = "epoch"

    def __post_init__(self) -> None:
        check(self.epochs >= 1, "retrain.epochs", "must be at least 1")
        check(self.mixup >= 0 and self.cutmix >= 0, "retrain.mixup",
              "and retrain.cutmix must be >= 0 (Beta alphas; 0: off)")
        check(0 <= self.mix_switch_prob <= 1, "retrain.mix_switch_prob", "must be in [0, 1]")
        check(0 <= self.ema_decay < 1, "retrain.ema_decay", "must be in [0, 1) (0: no average)")
        check(0 <= self.bce_target_threshold < 1, "retrain.bce_target_threshold", "must be in [0, 1)")
        check(self.aug_repeats >= 1, "retrain.aug_repeats", "must be at least 1 (1: no repeats)")
        check(self.loss == "bce" or not self.bce_target_threshold, "retrain.bce_target_threshold",
              "thresholds the targets of retrain.loss: bce only")
        check(0 <= self.min_learning_rate < self.learning_rate, "retrain.min_learning_rate",
              "must be in [0, retrain.learning_rate)")
        check(not (self.lr_per_step and (self.lr_gamma or self.lr_power)),
              "retrain.lr_per_step", "shapes the cosine schedule only (retrain.lr_gamma and lr_power 0)")
        check(not (self.min_learning_rate and self.lr_power), "retrain.min_learning_rate",
              "is the cosine's end or retrain.lr_gamma's floor; the poly schedule (lr_power) has none")
        check(self.decay_start >= 0 and (self.lr_gamma or not self.decay_start), "retrain.decay_start",
              "must be >= 0, and is retrain.lr_gamma's wait (set lr_gamma with it)")
        check(not (self.lr_per_step and self.warmup_epochs >= self.epochs), "retrain.warmup_epochs",
              "must leave epochs after the warm-up when retrain.lr_per_step is on")
        check(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "retrain.betas",
              "must be two numbers in [0, 1)")
        check(self.eps > 0, "retrain.eps", "must be positive")
        check(0 <= self.warmup_epochs <= self.epochs, "retrain.warmup_epochs",
              "must be in [0, retrain.epochs]")
        check(not (self.warmup_epochs and (self.lr_gamma or self.lr_power)), "retrain.warmup_epochs",
              "warms up the cosine schedule only (retrain.lr_gamma and lr_power 0)")
        check(self.restart_epochs >= 0 and self.restart_mult >= 1, "retrain.restart_epochs",
              "must be >= 0 (0: no restarts) and retrain.restart_mult >= 1")
        check(not (self.restart_epochs and (self.lr_gamma or self.lr_power or self.lr_per_step
                                            or self.warmup_epochs)),
              "retrain.restart_epochs", "restarts the epoch-wise cosine only (retrain.lr_gamma, "
              "lr_power, lr_per_step and warmup_epochs off)")
        check(not self.nesterov or (self.optimizer == "sgd" and self.momentum > 0), "retrain.nesterov",
              "needs retrain.optimizer: sgd and retrain.momentum > 0")
        check(not self.decay_in_loss or self.optimizer == "sgd", "retrain.decay_in_loss",
              "is SGD's weight decay as a term of the loss: needs retrain.optimizer: sgd")
        check(self.ar >= 0 and self.tar >= 0, "retrain.ar", "and retrain.tar must be >= 0")
        check(self.nonmono >= 0, "retrain.nonmono", "must be >= 0 (0: SGD throughout)")
        check(self.valid_streams >= 1 and self.test_streams >= 1, "retrain.valid_streams",
              "and retrain.test_streams must be at least 1")
        check(self.grad_clip >= 0, "retrain.grad_clip", "must be >= 0 (0: no clipping)")
        check(self.lr_power >= 0, "retrain.lr_power", "must be >= 0 (0: no poly schedule)")
        check(not (self.lr_power and self.lr_gamma), "retrain.lr_power",
              "and retrain.lr_gamma exclude each other")
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
    return _redacted(out)


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user part, if any, shown as ``***``: a job as recorded
    (MLflow params, ``config.json``, checkpoints) and logged never holds a password."""
    parts = urllib.parse.urlsplit(uri)
    try:
        password, port = parts.password, parts.port
    except ValueError:  # not a URI with a valid port: nothing to redact
        return uri
    if password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname or ''}" + (f":{port}" if port else "")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _redacted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redacted(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(v) for v in value]
    return redact_uri(value) if isinstance(value, str) and "://" in value else value


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


_UNSET = object()  # a setting one config has and the other does not


def config_changes(before: dict[str, Any], now: dict[str, Any], limit: int = 3) -> str:
    """The settings that differ between two configs (``to_dict()`` forms), for a message:
    ``train.epochs was 2, is 3; data.limit was unset, is 64``, the first ``limit`` of them and how
    many more."""
    old, new = flatten(before), flatten(now)
    keys = [k for k in sorted(old.keys() | new.keys()) if old.get(k, _UNSET) != new.get(k, _UNSET)]

    def shown(flat: dict[str, Any], key: str) -> str:
        return _short(repr(flat[key]), 40) if key in flat else "unset"

    changes = [f"{k} was {shown(old, k)}, is {shown(new, k)}" for k in keys[:limit]]
    more = f"; and {len(keys) - limit} more" if len(keys) > limit else ""
    return "; ".join(changes) + more


def another_config(checkpoint: str | Path, kind: str, name: str, before: dict[str, Any],
                   now: dict[str, Any]) -> ConfigError:
    """The error for resuming an unfinished ``kind`` ("search", "retraining", "study") whose
    checkpoint holds another config than the job's: it says what changed and what to do."""
    return ConfigError(
        f"{checkpoint} belongs to an unfinished {kind} of {name!r} with another config "
        f"({config_changes(before, now)}); pass --fresh to start over, give the job another name, "
        "or undo the change to resume it"
    )


def load_yaml(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """A job file's mapping with ``key.sub=value`` overrides applied (not yet validated).

    Raises:
        ConfigError: The file is missing, unreadable, too large, not UTF-8, not YAML, not a
            mapping, too deep or too large once expanded, or an override is malformed.
    """
    path = Path(path)
    shown = _short(str(path), 300)
    text = read_user_text(path, f"config file {shown!r}", max_bytes=MAX_JOB_BYTES)
    raw = _parse_yaml(text, f"config file {shown!r}")
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {shown!r} must hold a mapping of sections, got {_show(raw)}")
    check_tree(raw)
    return apply_overrides(raw, overrides)


def _duplicate_key(root: yaml.Node | None) -> str | None:
    """Where the YAML node graph ``root`` gives a key twice in one mapping, which YAML forbids and
    PyYAML reads as the last one given (a second ``epochs:`` in a section silently won); None if
    nowhere. Keys merged in with ``<<: *alias`` may be overridden, as YAML means them to be."""
    seen_nodes: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node) in seen_nodes:  # an alias: the same node again
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[tuple[str, str], int] = {}  # (tag, text) -> line
            for key, value in node.value:
                todo += [key, value]
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                line, name = key.start_mark.line, (key.tag, key.value)
                if name in keys:
                    first = keys[name]
                    lines = f"line {line + 1}" if first == line else f"lines {first + 1} and {line + 1}"
                    return (f"line {line + 1}, column {key.start_mark.column + 1}: key {key.value!r} "
                            f"is given twice ({lines}); keep one")
                keys[name] = line
        elif isinstance(node, yaml.SequenceNode):
            todo += node.value
    return None


def _parse_yaml(text: str, what: str) -> Any:
    """``text`` read by YAML's safe loader, refusing a key given twice (:func:`_duplicate_key`);
    every failure is one :class:`ConfigError` line."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # what yaml.safe_load does, with the node graph checked between
        root = loader.get_single_node()
        twice = _duplicate_key(root)
        if twice is not None:
            raise ConfigError(f"{what} is not valid YAML: {twice}")
        return None if root is None else loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "unreadable"
        raise ConfigError(f"{what} is not valid YAML: {where}{_short(problem, 200)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} is not valid YAML: {_short(' '.join(str(exc).split()), 200)}") from None
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply; a job nests at most {MAX_DEPTH} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise ConfigError(f"{what} holds a value YAML cannot read: {_short(str(exc), 200)}") from None
    finally:
        if loader is not None:
            loader.dispose()


def check_tree(raw: Any, where: str = "") -> None:
    """Check the shape of YAML data before anything walks it: keys are strings, nesting is at most
    :data:`MAX_DEPTH`, no alias refers to itself, at most :data:`MAX_NODES` values once aliases
    are expanded, strings at most :data:`MAX_STRING` characters.

    Args:
        raw: The loaded YAML (or an override's value).
        where: The dotted key of ``raw``, for messages.

    Raises:
        ConfigError: Naming the first key where the data breaks a rule.
    """
    sizes: dict[int, int] = {}

    def walk(node: Any, where: str, depth: int, open_: set[int]) -> int:
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise ConfigError(
                    f"config key {where or '<job>'!r} is a string of {len(node):,} characters; "
                    f"at most {MAX_STRING} are allowed"
                )
            return 1
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) in sizes:
            return sizes[id(node)]
        if id(node) in open_:
            raise ConfigError(f"config key {where or '<job>'!r} contains itself (a recursive YAML alias)")
        if depth >= MAX_DEPTH:
            raise ConfigError(
                f"config key {_short(where)!r} nests too deeply; a job nests at most {MAX_DEPTH} levels"
            )
        open_.add(id(node))
        total = 1
        if isinstance(node, dict):
            for key, value in node.items():
                if not isinstance(key, str):
                    raise ConfigError(
                        f"config key {_short(_join(where, str(key)))!r} is not a name: keys are "
                        f"strings, got {_show(key)}"
                    )
                total += walk(value, _join(where, key), depth + 1, open_)
        else:
            for i, value in enumerate(node):
                total += walk(value, f"{where}[{i}]", depth + 1, open_)
        open_.discard(id(node))
        if total > MAX_NODES:
            raise ConfigError(
                f"config key {where or '<job>'!r} expands to more than {MAX_NODES:,} values "
                "(YAML aliases nested in aliases?)"
            )
        sizes[id(node)] = total
        return total

    walk(raw, where, 0, set())


def check_job_name(name: str) -> None:
    """A job's name is a plain folder name (:data:`NAME_PATTERN`); raises :class:`ConfigError`."""
    check(
        NAME_PATTERN.fullmatch(name) is not None, "name",
        f"is {_short(name)!r}; a job name is 1-32 letters, digits, '_', '-' or '.', starting with a "
        "letter or digit (it names the folder <output_dir>/<name>/)",
    )


ComponentParser = Callable[[Any, str], "Component"]  # (raw section, section name) -> Component

SEARCH_COMPONENTS = ("space", "strategy", "data", "evaluator")
"""The sections of a search job that select a registered component."""
RETRAIN_COMPONENTS = ("space", "data")
"""The sections of a retraining job that select a registered component."""


def read_job(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), *, kind: Literal["search", "retrain"]
) -> dict[str, Any]:
    """A job file read, overrides applied, and everything checked that needs no registry
    (:func:`check_sections`): what the command line does before it imports torch, Ray or MLflow.

    Args:
        path: The YAML job file.
        overrides: ``key.sub=value`` strings.
        kind: ``search`` (:class:`SearchConfig`) or ``retrain`` (:class:`RetrainConfig`).

    Returns:
        The raw mapping, for ``raynas.runs.jobs`` to resolve the components of.

    Raises:
        ConfigError: The first problem found, in one line.
    """
    raw = load_yaml(path, overrides)
    other = other_command(raw, "search" if kind == "search" else "train")
    if other:
        raise ConfigError(f"{_short(str(path), 300)!r} {other}")
    if kind == "search":
        check_sections(raw, SearchConfig, SEARCH_COMPONENTS)
    else:
        if "architecture" not in raw:
            raise ConfigError(
                "config key 'architecture' is missing: a published name, a JSON file, or "
                "run:<MLflow run id>"
            )
        check_sections(raw, RetrainConfig, RETRAIN_COMPONENTS)
    return raw


def other_command(raw: dict[str, Any], command: Literal["search", "train", "study"]) -> str | None:
    """What another command's job says when given to ``command`` (``is a study job ...: run it
    with `raynas study```), told by the key only that kind of job has; None when it is not one."""
    study = ("is a study job (its config section 'study' lists the cells to compare): run it with "
             "`raynas study`")
    search = "is a search job (it names a strategy): run it with `raynas search`"
    train = "is a retraining job (it names an architecture): run it with `raynas train`"
    if command != "study" and "study" in raw:
        return study
    if command == "search" and "architecture" in raw and "strategy" not in raw:
        return train
    if command == "train" and "strategy" in raw and "architecture" not in raw:
        return search
    if command == "study" and "study" not in raw:
        return search if "strategy" in raw else train if "architecture" in raw else None
    return None


def check_sections(raw: dict[str, Any], cls: type[T], components: tuple[str, ...]) -> None:
    """Check everything of a job that needs no registry: its top-level keys, its name, its shared
    sections, every number (:func:`check_number`); of each component section that it names a
    component. Cheap (no torch, Ray or MLflow), so the command line answers a bad job at once.

    Args:
        raw: The job file's mapping (overrides applied).
        cls: The job dataclass (:class:`SearchConfig`, :class:`RetrainConfig`).
        components: The sections that select a registered component.

    Raises:
        ConfigError: Naming the first bad key.
    """
    check_tree(raw)
    allowed = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - allowed - set(components))
    if unknown:
        raise ConfigError(
            f"unknown config key {_short(unknown[0])!r}; allowed top-level keys: "
            f"{', '.join(sorted(allowed))}"
        )
    if "name" not in raw:
        raise ConfigError("config key 'name' is missing (a name for the job)")
    check_job_name(_convert(raw["name"], str, "name"))
    if "seeds" in raw and raw["seeds"] == []:
        raise ConfigError("config key 'seeds' is an empty list; list one seed or more, or leave it out")
    hints = typing.get_type_hints(cls)
    converted = {}
    for key, value in raw.items():
        if key not in components:
            converted[key] = _convert(value, hints[key], key)
    found: dict[str, tuple[str, dict[str, Any] | None] | None] = {}
    for section in components:
        data = raw.get(section)
        if isinstance(data, dict) and "name" in data:
            _convert(data["name"], str, f"{section}.name")
            found[section] = _check_component(section, data)
            _check_numbers(data, section)
        elif isinstance(data, str):
            found[section] = _check_component(section, {"name": data})
        elif data is not None:
            raise ConfigError(
                f"config section {section!r} must be a mapping with a 'name' (or a bare name), "
                f"got {_show(data)}"
            )
    if cls is SearchConfig and "raynas.registry" not in sys.modules:
        # (once the registries are imported, code may have registered components of its own:
        # raynas.runs.jobs.parse_job applies the same rules with what the registries hold)
        _check_search_job(raw, converted, found)


def _check_search_job(
    raw: dict[str, Any], converted: dict[str, Any],
    found: dict[str, tuple[str, dict[str, Any] | None] | None],
) -> None:
    """The rules between a search job's sections (:func:`check_search_job`), read off the
    manifest: each component's traits, settings (with their defaults) and ``job_checks``."""
    manifest = _component_manifest()
    names: dict[str, str | None] = {}
    traits: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    checks: dict[str, list[Check]] = {}
    for section in SEARCH_COMPONENTS:
        data = raw.get(section)
        names[section] = None if data is None else str(data if isinstance(data, str) else data["name"])
        if found.get(section) is None or section not in manifest:
            continue  # (not known to the manifest: its rules wait for the registry)
        name, values = found[section]  # type: ignore[misc]
        listed = manifest[section]
        settings[section] = values
        traits[section] = trait_values(listed.get("traits", {}).get(name), values or {})
        checks[section] = [Check.from_json(c) for c in listed.get("job_checks", {}).get(name, ())]
    defaults = {f.name: f.default_factory() for f in dataclasses.fields(SearchConfig)  # type: ignore[misc]
                if f.name in JOB_SECTIONS}
    shared = {key: converted.get(key, defaults[key]) for key in JOB_SECTIONS}
    registered = {
        "evaluators": manifest.get("evaluator", {}).get("names", ()),
        "datasets": manifest.get("data", {}).get("names", ()),
    }
    check_search_job(search_scope(names, traits, settings, shared, raw, registered), checks)


@functools.cache
def _component_manifest() -> dict[str, Any]:
    """``raynas/components.json``: the built-in components' names and settings (empty if absent)."""
    path = Path(__file__).parent / "components.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _check_component(section: str, data: dict[str, Any]) -> tuple[str, dict[str, Any] | None] | None:
    """A component's name, setting keys, their types, :class:`Rule` ranges and :class:`Check`
    rules, checked against the built-in components' manifest without importing the registries
    (with the messages the registries give). Once a registry is imported, code may have registered
    components (or operations) of its own: a name the manifest lacks, or a check against a table,
    is then left to the registry.

    Returns:
        The component's name and its settings' values (the job's, else the defaults; None if it
        takes none), or None where the manifest does not know the component."""
    listed = _component_manifest().get(section)
    if listed is None:
        return None
    name, names = data["name"], listed["names"]
    if name not in names:
        if "raynas.registry" in sys.modules:  # code that may have registered it runs: ask the registry
            return None
        raise ConfigError(
            f"config key '{section}.name': unknown {listed['kind']} {_short(str(name))!r}; choose one of: "
            f"{', '.join(names)}"
        )
    keys = names[name]
    extra = sorted(set(data) - {"name"})
    if keys is None and extra:
        raise ConfigError(f"{listed['kind']} {name!r} takes no settings; remove {extra}")
    settings = {k: v for k, v in data.items() if k != "name"}
    values = _check_settings(
        section, settings, keys or {}, listed.get("rules", {}).get(name, {}),
        listed.get("checks", {}).get(name, ()), listed.get("defaults", {}).get(name, {}),
        listed.get("sections", {}),
    )
    return str(name), (None if keys is None else values)


def _check_settings(
    where: str, data: dict[str, Any], keys: dict[str, Any], rules: dict[str, Any],
    checks: Iterable[dict[str, Any]], defaults: dict[str, Any], sections: dict[str, Any],
) -> dict[str, Any]:
    """The settings ``data`` of a component (or of a section inside one, such as
    ``strategy.cell_shape``) at ``where``: keys, types, rules and checks as the manifest lists them
    (``keys``: each setting's type; ``defaults``: the values the checks read where ``data`` has
    none; ``sections``: the sections inside components, by the name a setting's type gives).

    Returns:
        Every setting's value the manifest knows: the job's (a section inside as the job writes
        it), else the default."""
    unknown = sorted(set(data) - set(keys))
    if unknown:
        raise ConfigError(
            f"unknown config key {_short(_join(where, unknown[0]))!r}; allowed: {', '.join(keys)}"
        )
    values = _tuples(defaults)
    for key, value in data.items():
        values.pop(key, None)
        inner = _inner_section(keys.get(key), sections)
        if inner is not None:  # (null: none, or all its defaults)
            if value is not None and not isinstance(value, dict):
                raise ConfigError(f"config key {_join(where, key)!r} must be a mapping, got {_show(value)}")
            if value is not None:
                _check_settings(_join(where, key), value, inner["names"], inner.get("rules", {}),
                                inner.get("checks", ()), inner.get("defaults", {}), sections)
            values[key] = _tuples(value if value is None else {**inner.get("defaults", {}), **value})
            continue
        hint = manifest_type(keys.get(key))
        if hint is not None:
            value = values[key] = _convert(value, hint, _join(where, key))
            if key in rules:
                check_rule(value, Rule.from_json(rules[key]), _join(where, key))
    for key in (k for k, rule in rules.items() if k not in data and "missing" in rule):
        check_rule(None, Rule.from_json(rules[key]), _join(where, key))
    for spec in checks:
        check = Check.from_json(spec)
        try:
            message = check.broken_by(values)
        except Exception:  # a setting the manifest holds no value of: the dataclass checks it
            continue
        if message is not None and not (check.tables and "raynas.registry" in sys.modules):
            raise ConfigError(message)  # (a table may have grown: code that registers may run)
    return values


def _inner_section(spec: Any, sections: dict[str, Any]) -> dict[str, Any] | None:
    """For a setting that is a section of its own (a config dataclass, maybe optional), the
    manifest's description of it: ``{"settings": NAME}`` names it among ``sections``."""
    parts = spec["union"] if isinstance(spec, dict) and "union" in spec else [spec]
    inner = [p for p in parts if isinstance(p, dict) and "settings" in p]
    if len(inner) == 1 and all(p == "None" for p in parts if p is not inner[0]):
        return sections.get(inner[0]["settings"])
    return None


def manifest_type(spec: Any) -> Any:
    """The type a manifest entry describes (:func:`raynas.runs.jobs.component_manifest`), or None
    where there is none to check against (the registry checks those)."""
    simple = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}
    if spec is None:
        return None
    if isinstance(spec, str):
        return simple.get(spec)
    if "literal" in spec:
        return Literal[tuple(spec["literal"])]
    if "union" in spec:
        parts = [manifest_type(p) for p in spec["union"]]
        return None if None in parts else functools.reduce(operator.or_, parts)
    if "tuple" in spec:
        if spec.get("variadic"):
            item = manifest_type(spec["tuple"])
            return None if item is None else tuple[item, ...]
        parts = [manifest_type(p) for p in spec["tuple"]]
        return None if None in parts else tuple[tuple(parts)]
    if "list" in spec:
        item = manifest_type(spec["list"])
        return None if item is None else list[item]
    if "dict" in spec:
        key, value = (manifest_type(p) for p in spec["dict"])
        return None if key is None or value is None else dict[key, value]
    return None


def _check_numbers(node: Any, where: str) -> None:
    """:func:`check_number` on every number of a component section before its type is known
    (the component's dataclass checks each again): sound, as a number that breaks these rules is
    refused whatever the key's type."""
    if isinstance(node, dict):
        for key, value in node.items():
            _check_numbers(value, _join(where, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_numbers(value, f"{where}[{i}]")
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        check_number(node, where)


def parse_sections(
    raw: dict[str, Any], cls: type[T], components: Mapping[str, ComponentParser]
) -> dict[str, Any]:
    """Validate ``raw`` against the job dataclass ``cls``; returns the constructor's arguments.

    Args:
        raw: The job file's mapping (overrides applied).
        cls: The job dataclass (:class:`SearchConfig`, :class:`RetrainConfig`).
        components: For each section that selects a registered component, the function that
            resolves it (the job loader in ``raynas.runs.jobs`` looks the name up in its registry).
            Every other key is checked here, by type, first (:func:`check_sections`).
    """
    check_sections(raw, cls, tuple(components))
    raw = dict(raw)
    values: dict[str, Any] = {}
    for section, parse in components.items():
        values[section] = parse(raw.pop(section, None), section)
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        values[key] = _convert(value, hints[key], key)
    return values


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override set (value parsed as YAML;
    text that is not YAML is taken as a string)."""
    check_tree(raw)
    raw = _deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        shown = _short(item)
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {shown!r} must look like key.sub=value")
        if len(text) > MAX_STRING:
            raise ConfigError(f"override {_short(key)!r}: the value is {len(text):,} characters; "
                              f"at most {MAX_STRING} are allowed")
        try:
            value = yaml.safe_load(text)
        except (yaml.YAMLError, ValueError, RecursionError):
            value = text
        check_tree(value, key)
        node = raw
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {shown!r}: {_short('.'.join(parts[: i + 1]))} is not a section")
            node = child
        node[parts[-1]] = value
    check_tree(raw)
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
    check_tree(data, where)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {_short(_join(where, unknown[0]))!r}; allowed: {', '.join(fields)}"
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
    except (TypeError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"config section {where!r}: {_short(str(exc), 200)}") from None


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
        # Exact types: YAML's `true` equals 1, and 1.0 equals 1, yet neither is the choice 1.
        if not any(type(value) is type(a) and value == a for a in args):
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
        check_number(value, where)
        return value
    if hint is float:
        # PyYAML reads 3e-4 (no dot) as a string: accept numeric strings for float keys.
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {where!r} must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond any float
            number = math.inf
        check_number(number, where)
        return number
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {where!r} must be a string, got {_show(value)}")
        return value
    raise TypeError(f"unsupported config type {hint!r} at {where}")


# Ranges of settings known by their name wherever they appear (a component's own settings
# included): (test of the key's last part, lowest, highest, whether the highest is excluded).
_NAMED_RANGES: tuple[tuple[Callable[[str], bool], int | None, int, bool], ...] = (
    (lambda k: k in ("seed", "seeds") or k.endswith("_seed"), 0, INT_LIMIT, True),
    (lambda k: k == "channels" or k.endswith("_channels"), 0, 65536, False),
    (lambda k: "learning_rate" in k, 0, 1000, False),
    (lambda k: k == "momentum" or k.endswith("_momentum"), 0, 1, True),
    (lambda k: k == "weight_decay" or k.endswith("_weight_decay"), 0, 1, False),
    (lambda k: k == "grad_clip" or k.endswith("_grad_clip"), 0, int(FLOAT_LIMIT), False),
    # Sizes of a network's structure, bounded past any published one before a network is built
    # (no lower bound here: each component's own rule says what its least size is).
    (lambda k: k in ("nodes", "blocks"), None, 64, False),
    (lambda k: k in ("layers", "cells_per_stage") or k.endswith("_layers"), None, 1000, False),
    (lambda k: k == "stem_multiplier", None, 64, False),
)


def check_number(value: float, key: str) -> None:
    """The ranges every number of a job must lie in: finite; integers in
    [-:data:`INT_LIMIT`, :data:`INT_LIMIT`), other numbers at most :data:`FLOAT_LIMIT` in size;
    seeds (``seed``, ``seeds``, ``*_seed``) >= 0; channel counts (``channels``,
    ``*_channels``) in [0, 65536]; learning rates (``*learning_rate*``) in [0, 1000]; momentum in
    [0, 1); weight decay in [0, 1]; gradient clips >= 0; a network's nodes, blocks and stem
    multiplier at most 64, its layers and cells per stage at most 1000. A component's own rules
    (e.g. a positive learning rate, at least one node) come on top.

    Args:
        value: The number.
        key: Its dotted key (``train.learning_rate``, ``seeds[2]``); the last part picks the rules.

    Raises:
        ConfigError: Naming ``key`` and the range allowed.
    """
    if isinstance(value, float):
        check(math.isfinite(value), key, f"must be a finite number, got {value!r}")
    name = re.sub(r"\[\d+\]$", "", key).rsplit(".", 1)[-1]
    for matches, low, high, open_high in _NAMED_RANGES:
        if matches(name):
            shown = f"{value:g}" if isinstance(value, float) else _show_int(value)
            if low is None:
                check(value <= high, key, f"must be at most {high}, got {shown}")
                continue
            ok = low <= value < high if open_high else low <= value <= high
            check(ok, key, f"must be in [{low}, {high}{')' if open_high else ']'}, got {shown}")
    if isinstance(value, float):
        check(abs(value) <= FLOAT_LIMIT, key, f"must be at most {FLOAT_LIMIT:g} in size, got {value:g}")
    else:
        check(-INT_LIMIT <= value < INT_LIMIT, key,
              f"must be an integer in [{-INT_LIMIT}, {INT_LIMIT - 1}], got {_show_int(value)}")


def check(ok: bool, key: str, rule: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` and its ``rule`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config key {key!r} {rule}")


@dataclass(frozen=True)
class Rule:
    """The values a component's setting allows, written into its type
    (``channels: Annotated[int, Rule(ge=1)]``), so that a job is checked against it before the
    component's module, and torch with it, is imported: :func:`raynas.runs.jobs.component_manifest`
    copies every rule into ``raynas/components.json``, and :func:`check_rules` (which the config
    dataclass's ``__post_init__`` calls) and the command line's check of the manifest apply it alike.
    A rule on a tuple holds for each of its items. Rules that tie settings together, or read a
    component's tables, are a :class:`Check`.

    Attributes:
        ge, gt, le, lt: Bounds (>=, >, <=, <).
        even, odd: The value's parity.
        one_of: The values allowed.
        says: The rule in words (default: from the fields, such as ``must be at least 1``).
        missing: For a setting a job must give: what it is, for the line that says it is
            missing (or empty).
    """

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    even: bool = False
    odd: bool = False
    one_of: tuple[Any, ...] | None = None
    says: str = ""
    missing: str = ""

    def holds(self, value: Any) -> bool:
        """Whether the single value ``value`` keeps the rule."""
        if self.one_of is not None and value not in self.one_of:
            return False
        if not isinstance(value, numbers.Real) or isinstance(value, bool):
            return True  # its type is checked before: the bounds are for numbers
        return not (
            (self.ge is not None and not value >= self.ge) or (self.gt is not None and not value > self.gt)
            or (self.le is not None and not value <= self.le) or (self.lt is not None and not value < self.lt)
            or (self.even and value % 2) or (self.odd and not value % 2)
        )

    def text(self) -> str:
        """The rule in words."""
        if self.says:
            return self.says
        if self.one_of is not None:
            return f"must be one of {', '.join(map(str, self.one_of))}"
        low, high = _first(self.ge, self.gt), _first(self.le, self.lt)
        if low is not None and high is not None:
            return (f"must be in {'[' if self.ge is not None else '('}{low:g}, "
                    f"{high:g}{']' if self.le is not None else ')'}")
        if self.even or self.odd:
            kind = "an even number" if self.even else "an odd number"
            return f"must be {kind}" + (f" >= {self.ge:g}" if self.ge is not None else "")
        if self.ge is not None:
            return "must be >= 0" if self.ge == 0 else f"must be at least {self.ge:g}"
        if self.gt is not None:
            return "must be positive" if self.gt == 0 else f"must be above {self.gt:g}"
        if high is not None:
            return f"must be at most {high:g}" if self.le is not None else f"must be below {high:g}"
        return "may be any value"

    def to_json(self) -> dict[str, Any]:
        """The fields that differ from their defaults, as JSON (:meth:`from_json` reads it)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value != f.default:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Rule:
        """The rule :meth:`to_json` wrote."""
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


@functools.cache
def rules_of(cls: type) -> dict[str, Rule]:
    """The :class:`Rule` of each setting of the config dataclass ``cls`` that has one: its own, or
    else a base class's (a subclass that declares a setting again, for another default, keeps
    the base's rule)."""
    out: dict[str, Rule] = {}
    names = [f.name for f in dataclasses.fields(cls)]
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        hints = typing.get_type_hints(klass, include_extras=True)
        for name in names:
            rules = [m for m in getattr(hints.get(name), "__metadata__", ()) if isinstance(m, Rule)]
            if rules and name not in out:
                out[name] = rules[0]
    return {name: out[name] for name in names if name in out}


def check_rule(value: Any, rule: Rule, where: str) -> None:
    """Raise :class:`ConfigError` (``<where> <rule>, got <value>``) unless ``value`` keeps ``rule``
    (each item of a tuple or list, named ``<where>[i]``); for a setting the job must give
    (:attr:`Rule.missing`), None or empty is ``config key '<where>' is missing: <what it is>``."""
    if rule.missing and value in (None, ""):
        raise ConfigError(f"config key {where!r} is missing: {rule.missing}")
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            check_rule(item, rule, f"{where}[{i}]")
        return
    if not rule.holds(value):
        number = isinstance(value, int) and not isinstance(value, bool)
        shown = _show_int(value) if number else _short(str(value))
        raise ConfigError(f"{where} {rule.text()}, got {shown}")


def check_rules(config: Any, section: str) -> None:
    """Every :class:`Rule` of the config dataclass instance ``config``, then every :class:`Check`
    of its class (:func:`checks_of`); its settings are named ``<section>.<key>`` in the message of
    a rule (``space.channels``), a check's message says itself."""
    for key, rule in rules_of(type(config)).items():
        check_rule(getattr(config, key), rule, f"{section}.{key}")
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    for rule_check in checks_of(type(config)):
        message = rule_check.broken_by(values)
        if message is not None:
            raise ConfigError(message)


@dataclass(frozen=True)
class Check:
    """A rule that ties a component's settings together, or holds each item of a setting against
    one of the component's tables (the names of its operations, ...), written once on the config
    dataclass (``checks: ClassVar[tuple[Check, ...]] = (Check(...), ...)``) as expressions over its
    settings. :func:`check_rules` (from ``__post_init__``) applies it to the dataclass; copied
    into ``raynas/components.json`` with its tables resolved into names
    (:func:`raynas.runs.jobs.component_manifest`), the command line applies the same text to a job
    before torch is imported, and says the same line.

    The expressions are a small part of Python: names (the settings, the tables, ``item`` and
    ``i``), constants, arithmetic but ``**``, comparisons, ``and``/``or``/``not``, ``x if c else
    y``, subscripts, tuple, list and set displays, comprehensions, and calls of
    :data:`CHECK_FUNCTIONS` (``len``, ``set``, ``all``, ``join``, ...); no attributes.

    Attributes:
        holds: True when the settings keep the rule, e.g. ``"sample_size <= population_size"``.
        says: The message, as the body of an f-string over the same names
            (``"strategy.sample_size ({sample_size}) must be at most ..."``).
        each: If set, an expression whose items are checked one at a time, each as ``item`` (at
            position ``i``); the first that breaks the rule is the one the message names.
        tables: Names the expressions may use for the component's tables: a tuple or a mapping
            (of JSON values), a registry (its names), or a function that returns one of these,
            called when the check is made (so a table in a module that imports torch is read
            only by the full validation and by the manifest's writer).
    """

    holds: str
    says: str
    each: str = ""
    tables: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for text, message in ((self.holds, False), (self.says, True), (self.each, False)):
            if text:
                _compiled(text, message)  # a ValueError now, where the check is written

    def table_values(self) -> dict[str, Any]:
        """Each table as plain values: a registry as the tuple of its names, lists as tuples."""
        out = {}
        for name, table in self.tables.items():
            if callable(table) and not hasattr(table, "names"):
                table = table()
            out[name] = _tuples(tuple(table.names()) if hasattr(table, "names") else table)
        return out

    def broken_by(self, values: Mapping[str, Any]) -> str | None:
        """The message if the settings ``values`` (every setting by its name) break the check,
        else None."""
        scope = {**values, **self.table_values()}
        items = _evaluate(self.each, scope) if self.each else (None,)
        for i, item in enumerate(items):
            here = {**scope, "item": item, "i": i} if self.each else scope
            if not _evaluate(self.holds, here):
                return self.render(here)
        return None

    def render(self, values: Mapping[str, Any]) -> str:
        """The message for the settings ``values`` (with ``item`` and ``i`` where it names them)."""
        return str(_evaluate(self.says, {**values, **self.table_values()}, message=True))

    def to_json(self) -> dict[str, Any]:
        """The check with its tables resolved (:meth:`from_json` reads it)."""
        out: dict[str, Any] = {"holds": self.holds, "says": self.says}
        if self.each:
            out["each"] = self.each
        if self.tables:
            out["tables"] = _lists(self.table_values())
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Check:
        """The check :meth:`to_json` wrote."""
        return cls(data["holds"], data["says"], data.get("each", ""), _tuples(data.get("tables", {})))


def listed_once(key: str, allowed: tuple[str, ...], where: str = "space") -> Check:
    """The :class:`Check` that the setting ``key`` lists some of ``allowed``, each once
    (``space.<key> must list some of a, b once each, got (...)``)."""
    return Check(
        f"{key} and set({key}) <= set(allowed) and len(set({key})) == len({key})",
        f"{where}.{key} must list some of {{join(allowed)}} once each, got {{{key}!r}}",
        tables={"allowed": allowed},
    )


def names_record(
    key: str, where: str, what: str, form: str, compact: str, published: Callable[[], Iterable[str]]
) -> Check:
    """The :class:`Check` that the setting ``key`` names an architecture some reader can open: a
    published one (the table ``published``, its names and aliases), JSON text, a file, or text
    in the space's compact ``form`` (``compact``: an expression over ``text``, the setting
    stripped, true where it is written in that form, which the space's parser reads once torch
    loads). Empty: none named. The message is the one the space's reader gives.

    Args:
        key: The setting.
        where: Its place in the job, for the message (``strategy.reference``).
        what: What a published one is called (``ran_i network``).
        form: The compact form, for the message (``depths/widths, e.g. ...``).
        compact: E.g. ``"'/' in text"``.
        published: The published names and aliases (called when the check is made).
    """
    return Check(
        f"not {key} or any(text in published or text[:1] == '{{' or is_file(text) or ({compact}) "
        f"for text in [strip({key})])",
        f"{where}: {{strip({key})!r}} is no published {what} ({{join(published)}}), no file, and "
        f"not {form}",
        tables={"published": lambda: tuple(sorted(published()))},
    )


def _join_names(items: Iterable[Any]) -> str:
    return ", ".join(map(str, items))


def _is_file(path: Any) -> bool:
    try:
        return isinstance(path, str) and os.path.isfile(path)
    except (OSError, ValueError):  # (a name too long, a NUL)
        return False


CHECK_FUNCTIONS: dict[str, Callable[..., Any]] = {
    **{f.__name__: f for f in (
        len, set, frozenset, list, tuple, sorted, min, max, all, any, sum, range, zip, enumerate,
        round, abs, repr,
    )},
    "join": _join_names,  # "a, b, c", for messages that list names
    "strip": str.strip,
    "is_file": _is_file,  # a setting that names a file of the job's (a genotype, a network)
}
"""The functions a :class:`Check`'s expressions may call."""

_CHECK_NODES = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.Add, ast.Sub, ast.Mult, ast.Div,
    ast.FloorDiv, ast.Mod, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd, ast.Compare, ast.Eq, ast.NotEq,
    ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.In, ast.NotIn, ast.Is, ast.IsNot, ast.IfExp, ast.Call,
    ast.Name, ast.Load, ast.Store, ast.Constant, ast.Tuple, ast.List, ast.Set, ast.Subscript,
    ast.Slice, ast.GeneratorExp, ast.ListComp, ast.SetComp, ast.comprehension, ast.JoinedStr,
    ast.FormattedValue,
)


@functools.cache
def _compiled(text: str, message: bool) -> types.CodeType:
    """A :class:`Check`'s expression (or, ``message``, its f-string) compiled, once it is known
    to use only :data:`_CHECK_NODES` and calls of :data:`CHECK_FUNCTIONS`."""
    tree = ast.parse("f" + repr(text) if message else text, mode="eval")
    for node in ast.walk(tree):
        called = isinstance(node, ast.Call) and not (
            isinstance(node.func, ast.Name) and node.func.id in CHECK_FUNCTIONS
        )
        if not isinstance(node, _CHECK_NODES) or called or (
            isinstance(node, ast.Name) and node.id.startswith("_")
        ):
            raise ValueError(f"a Check may not use {ast.unparse(node)!r} (in {text!r})")
    return compile(tree, "<check>", "eval")


def _evaluate(text: str, scope: Mapping[str, Any], message: bool = False) -> Any:
    return eval(_compiled(text, message), {"__builtins__": {}, **CHECK_FUNCTIONS, **scope})


@functools.cache
def checks_of(cls: type) -> tuple[Check, ...]:
    """The :class:`Check` list of the config dataclass ``cls``: its base classes' first, then its own."""
    return tuple(c for klass in reversed(cls.__mro__) for c in vars(klass).get("checks", ()))


@functools.cache
def job_checks_of(cls: type) -> tuple[Check, ...]:
    """The rules between sections of a search job that the component configured by the
    dataclass ``cls`` states (its ``job_checks``: base classes' first): :class:`Check` rules over
    :func:`search_scope`'s names and the component's own settings."""
    return tuple(c for klass in reversed(cls.__mro__) for c in vars(klass).get("job_checks", ()))


TRAITS: dict[str, str] = {
    # A space's:
    "choices": "offers the flat view of decisions (decisions, encode, decode) sampling strategies search",
    "cell_shape": "measures its cells' width and depth (strategy.cell_shape)",
    "cell_shapes": "the shapes its cells can have: [depth, least width, most width] for each depth "
                   "(strategy.cell_shape's bounds must meet one)",
    "two_input_cells": "every decision is a two-input node's, in cells of one size (progressive grows them)",
    "one_shot": "its supernet trains one sampled path at a time (set_path; evaluator supernet)",
    "drop_paths": "its supernet sums every op of an edge and can drop paths (evaluator.path_dropout)",
    "path_only": "its supernet has no architecture weights: it only trains and scores the paths a "
                 "sampling strategy gives it (evaluator supernet), no gradient strategy searches it",
    "layer_shapes": "its supernet is layer-wise, one mixed block a layer (strategies fbnet, prunet)",
    "latency_tables": "latency-table keys of every layer's candidates (strategy ran_e)",
    "latency_keys": "latency-table keys of a network (epnas's max_latency_ms)",
    "layer_candidates": "the blocks every layer offers (ran_e's replacement and seed_block)",
    "scale": "scales a base network by multipliers (strategy ran_i)",
    "fixed_size": "its networks take their widths and depths from its config, no channels or layers "
                  "to set (fbnet's stage_channels, stage_depths)",
    # A space's and a dataset's:
    "tokens": "its networks read token ids, language models (a space); it holds token text (a dataset)",
    "dense": "its search's networks label every pixel, segmentation (a space); it labels every pixel "
             "(a dataset)",
    "morphisms": "grows networks by morphisms (strategy autokeras, evaluator morphism)",
    # An evaluator's:
    "table": "the dataset whose recorded results score its candidates, no image read (evaluator "
             "nb201_table): the job's data section may be left out, and names that dataset if given",
    # A strategy's (read off its class):
    "kind": "'sampling' (ask/tell, an evaluator scores candidates) or 'gradient' (trains its supernet)",
    "needs_supernet": "samples the paths of a one-shot supernet (evaluator supernet)",
    "needs_choices": "searches the space's flat view of decisions",
    "draws_answers": "draws its answers from the distribution it learnt (final retrains them: fbnet)",
}
"""What the rules between a job's sections read of a component besides its settings: each
registered with the component (``@SPACES.register(name, config=..., traits={...})``, a strategy's
from its class), copied into ``raynas/components.json``, and read by :data:`SEARCH_CHECKS` and
the components' ``job_checks`` as ``space_is[...]``, ``strategy_is[...]``."""


def trait_values(traits: Mapping[str, Any] | None, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """A component's traits for its settings: each declared one's value (``{"expr": text}``: the
    value of an expression over the settings, as a :class:`Check`'s), every other of
    :data:`TRAITS` false; one that cannot be worked out here (a setting unknown) is left out.
    None where none are declared."""
    if traits is None:
        return None
    out: dict[str, Any] = dict.fromkeys(TRAITS, False)
    for key, value in traits.items():
        try:
            expression = value.get("expr") if isinstance(value, Mapping) else None
            out[key] = _tuples(_evaluate(expression, settings) if expression is not None else value)
        except Exception:
            out.pop(key)  # (the rules that read it are left to the component's code)
    return out


JOB_SECTIONS = ("train", "tune", "execution", "final")
"""The shared sections of a search job the rules between sections read."""


def search_scope(
    names: Mapping[str, str | None], traits: Mapping[str, Mapping[str, Any] | None],
    settings: Mapping[str, Mapping[str, Any] | None], shared: Mapping[str, Any],
    given: Iterable[str], registered: Mapping[str, Iterable[str]],
) -> dict[str, Any]:
    """The names the rules between a search job's sections read (the same whether the job is
    checked against ``raynas/components.json`` or the registries): each component section's name
    (``space``, ``strategy``, ``data``, ``evaluator``; None where absent), its traits
    (``space_is``) and settings (``strategy_settings``), both left out where not known; the
    shared sections as mappings (``train``, ``tune``, ``execution``); ``given``, the top-level
    keys the job writes; and the registered ``evaluators`` and ``datasets``."""
    scope: dict[str, Any] = dict(names)
    for section in names:
        if traits.get(section) is not None:
            scope[f"{section}_is"] = traits[section]
        if settings.get(section) is not None:
            scope[f"{section}_settings"] = _tuples(dict(settings[section]))  # type: ignore[arg-type]
    scope.update({key: _tuples(_asdict(value)) for key, value in shared.items()})
    scope["given"] = tuple(given)
    scope.update({key: tuple(value) for key, value in registered.items()})
    return scope


def check_search_job(scope: Mapping[str, Any], checks: Mapping[str, Iterable[Check]]) -> None:
    """Apply :data:`SEARCH_CHECKS`, then each component's ``job_checks`` (``checks``, by section;
    its own settings readable by their names too), to the job ``scope`` (:func:`search_scope`).
    A rule that reads a name the scope lacks (a component the manifest does not know, a trait it
    does not declare) is left to the component's code.

    Raises:
        ConfigError: The first rule broken.
    """
    for section, listed in (("", SEARCH_CHECKS), *checks.items()):
        here = {**scope.get(f"{section}_settings", {}), **scope} if section else scope
        for rule in listed:
            try:
                message = rule.broken_by(here)
            except (LookupError, NameError, TypeError):
                continue
            if message is not None:
                raise ConfigError(message)


_TUNED = "'tune' in given and tune['enabled']"
_FINETUNES = "evaluator == 'supernet' and evaluator_settings['epochs'] >= 1"

INPUTS_MATCH = Check(
    "space_is['tokens'] == data_is['tokens']",
    "dataset {data!r} holds {'token text' if data_is['tokens'] else 'images'}, "
    "but the {space!r} space's networks read "
    "{'token ids (language models)' if space_is['tokens'] else 'images'}: use "
    "{'a text dataset (ptb, wikitext2)' if space_is['tokens'] else 'an image dataset'}",
)
"""The space's networks read what the dataset holds (a search's, a retraining's, ``describe``'s)."""

SEARCH_CHECKS: tuple[Check, ...] = (
    INPUTS_MATCH,
    *(Check(
        f"not space_is['fixed_size'] or {sized}",
        f"config keys '{name}.channels' and '{name}.layers': the {{space!r}} space takes its networks' "
        "widths and depths from its config (space.stage_channels, space.stage_depths): leave them "
        "out",
    ) for name, sized in (
        ("evaluator", "evaluator is None or 'channels' not in evaluator_settings "
                      "or evaluator_settings['channels'] == evaluator_settings['layers'] == 0"),
        ("final", "final['top'] == 0 or final['channels'] == final['layers'] == 0"),
    )),
    Check(
        "space_is['dense'] == data_is['dense']",
        "dataset {data!r} "
        "{'labels every pixel (segmentation)' if data_is['dense'] else 'labels whole images'}, "
        "but the {space!r} space's search networks "
        "{'classify whole images' if data_is['dense'] else 'label every pixel'}: "
        "{'search it with auto_deeplab, or retrain a cell found on images on it with `raynas train` '"
        "'(jobs/transfer_darts_cityscapes.yaml)' if data_is['dense'] else 'use a segmentation dataset'}",
    ),
    Check(
        "final['top'] == 0 or strategy_is['kind'] == 'sampling' or strategy_is['draws_answers'] "
        "or 'seeds' in given",
        "config section 'final' retrains the best candidates of a sampling search, architectures "
        "a gradient strategy draws from its learnt distribution (fbnet), or the best seeds' "
        "architectures of a job with 'seeds' (DARTS's choice among its four searches); {strategy!r} "
        "derives one architecture: add seeds, or remove the section and retrain the search's "
        "genotype with `raynas train`",
    ),
    Check(
        "data is not None or evaluator is not None and evaluator_is['table']",
        "config section 'data' is missing; it needs a 'name', one of: {join(datasets)}",
    ),
    Check(
        "evaluator is None or not evaluator_is['table'] or data in (None, evaluator_is['table'])",
        "config key 'data.name' is {data!r}, but evaluator {evaluator!r} scores candidates by what its "
        "table recorded on {evaluator_is['table']!r}: name that dataset, or leave the data section out "
        "(the table reads no images)",
    ),
    Check(
        "data is not None and 'data' in given or final['top'] == 0",
        "config key 'final.top': retraining the best candidates reads their dataset, and the job names "
        "none: add a data section with its name ({evaluator_is['table']!r}) and path",
    ),
    Check(
        "evaluator is not None or strategy_is['kind'] != 'sampling'",
        "config section 'evaluator' is missing; it needs a 'name', one of: {join(evaluators)}",
    ),
    Check(
        "evaluator is None or strategy_is['kind'] == 'sampling'",
        "config section 'evaluator' is for sampling strategies; {strategy!r} is a gradient strategy "
        "that trains its own supernet: remove the section",
    ),
    Check(
        "strategy_is['kind'] != 'gradient' or not space_is['path_only']",
        "space {space!r}'s supernet has no architecture weights for gradient strategy {strategy!r} to "
        "learn: it trains the paths a sampling strategy samples (enas, random_ws, spos, ... with "
        "evaluator supernet)",
    ),
    Check(
        "strategy_is['kind'] == 'sampling' or not train['decay_in_loss']",
        "config key 'train.decay_in_loss' is for the supernet of a sampling search; gradient "
        "strategy {strategy!r} steps its weights with SGD's weight decay: remove it",
    ),
    Check(
        "strategy_is['kind'] == 'sampling' or train['grad_clip'] > 0",
        "config key 'train.grad_clip' 0 (no clipping) is for the supernet of a sampling search; "
        "gradient strategy {strategy!r} clips its weights' gradient: set it above 0",
    ),
    Check(
        "not strategy_is['needs_supernet'] or evaluator == 'supernet'",
        "strategy {strategy!r} searches a one-shot supernet: set evaluator.name to 'supernet' "
        "(got {evaluator!r})",
    ),
    Check(
        "evaluator in (None, 'supernet') or 'train' not in given",
        "config section 'train' configures a supernet's training, and evaluator {evaluator!r} trains "
        "none: remove it (the evaluator's own settings and 'final' set the candidates' training)",
    ),
    Check(
        "not (strategy_is['needs_choices'] and strategy_is['kind'] == 'sampling') or space_is['choices']",
        "strategy {strategy!r} needs a space with decisions()/encode()/decode(); space {space!r} "
        "has none",
    ),
    Check(
        "strategy_is['kind'] != 'sampling' or 'cell_shape' not in strategy_settings "
        "or strategy_settings['cell_shape'] is None or space_is['cell_shape']",
        "strategy.cell_shape: the {space!r} space has no cells whose width and depth can be "
        "measured (the darts, nb201 and darts_rnn spaces have); remove strategy.cell_shape",
    ),
    Check(
        # Some depth d whose widths (every half step from lo to hi) meet the bounds (0: none).
        # Bounds met only by cells too rare to draw are refused when the strategy is built.
        "strategy_is['kind'] != 'sampling' or 'cell_shape' not in strategy_settings "
        "or strategy_settings['cell_shape'] is None or not space_is['cell_shapes'] "
        "or any((not c['min_depth'] or d >= c['min_depth']) "
        "and (not c['max_depth'] or d <= c['max_depth']) "
        "and -((-2 * max(lo, c['min_width'])) // 1) "
        "<= 2 * (min(hi, c['max_width']) if c['max_width'] else hi) "
        "for c in [strategy_settings['cell_shape']] for d, lo, hi in space_is['cell_shapes'])",
        "strategy.cell_shape: no cell of the {space!r} space meets these bounds; its cells have "
        "{join(['depth %d and width %g' % (d, lo) if lo == hi else 'depth %d and width %g-%g' % (d, lo, hi) "
        "for d, lo, hi in space_is['cell_shapes']])}; loosen the bounds",
    ),
    Check(
        "not (execution['concurrency'] > 1 and execution['backend'] == 'local')",
        "config key 'execution.concurrency' is {execution['concurrency']}, but execution.backend: "
        "local evaluates one candidate at a time in this process; use backend: ray, or concurrency: 1",
    ),
    Check(
        "execution['concurrency'] <= 1 or evaluator is not None",
        "config key 'execution.concurrency' is for sampling searches (candidates evaluated at "
        "once); {strategy!r} trains one supernet: use execution.workers for data-parallel training",
    ),
    Check(
        f"not ({_TUNED}) or evaluator == 'scratch' or ({_FINETUNES})",
        "config section 'tune' schedules candidates that train: from scratch (evaluator: scratch) "
        "or fine-tuned from a supernet (evaluator: supernet with epochs >= 1); this search trains "
        "none: remove it",
    ),
    Check(
        f"not ({_FINETUNES}) or ({_TUNED})",
        "config key 'evaluator.epochs' fine-tunes candidates as Ray Tune trials: add a 'tune' "
        "section (execution.backend: ray), or set evaluator.epochs: 0 to score the inherited "
        "weights as they are",
    ),
    Check(
        f"not ({_TUNED} and execution['backend'] == 'local')",
        "config section 'tune' needs execution.backend: ray (Ray Tune runs the trials); set "
        "tune.enabled: false to train candidates one after another in this process",
    ),
    Check(
        "data_settings['train_portion'] < 1 "
        "or ('same_batch' in strategy_settings and strategy_settings['same_batch'])",
        "config key 'data.train_portion' 1 trains on every training image and validates on the test "
        "split: only strategy.same_batch (darts) steps alpha without held-out images; set it, or "
        "lower data.train_portion (strategy {strategy!r})",
    ),
)
"""The rules between a search job's sections that hold whatever its components (what a sampling
or gradient strategy needs of the evaluator, ``train``, ``tune`` and ``execution``), over
:func:`search_scope`'s names; each component adds its own (``job_checks`` on its config
dataclass). :func:`check_search_job` applies them, from the command line before torch is imported
(``raynas/components.json``) and from ``raynas.runs.jobs.parse_job`` alike."""


def _tuples(value: Any) -> Any:
    """JSON's lists as tuples, at every depth (the type a setting's list has once loaded)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _tuples(v) for k, v in value.items()}
    return value


def _lists(value: Any) -> Any:
    """Tuples as lists, at every depth (for JSON)."""
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _lists(v) for k, v in value.items()}
    return value


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
    if isinstance(value, int) and not isinstance(value, bool):
        return f"int {_show_int(value)}"
    return f"{type(value).__name__} {_short(repr(value))}"


def _show_int(value: int) -> str:
    """An integer for a message; one too long to print (or to read) as its bit length."""
    return str(value) if abs(value) < 10**30 else f"a {value.bit_length()}-bit integer"


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters, for messages that quote what a user wrote."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
