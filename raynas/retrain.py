"""Retraining (and transfer) of a found architecture from scratch, with lineage to its search.

A retraining job names an architecture (a published genotype, a JSON file, or ``run:<id>``: the
final architecture of a search's MLflow run), builds its stand-alone network on the job's data
(which may differ from the search's: that is a transfer) and trains it with the one training
loop: SGD with cosine annealing, optional auxiliary head and drop path for the DARTS networks, as
in DARTS's ``train.py``. The MLflow run carries lineage tags to the search run and architecture;
the trained network is registered in the Model Registry. A checkpoint after every epoch makes it
resumable like a search.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from raynas.config import (
    Component,
    ExecutionConfig,
    TrackingConfig,
    _check,
    load_yaml,
    parse_sections,
    to_dict_sections,
)
from raynas.data import DATASETS
from raynas.data.base import official_test_set, split_indices
from raynas.errors import ArchitectureError, ConfigError
from raynas.spaces import SPACES
from raynas.tracking import MlflowTracker
from raynas.tracking.mlflow_tracker import TAG_PREFIX
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.train.loop import fit
from raynas.types import Architecture, EpochReport

RUN_PREFIX = "run:"


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
        _check(self.epochs >= 1, "retrain.epochs", "must be at least 1")
        _check(0 <= self.label_smoothing < 1, "retrain.label_smoothing", "must be in [0, 1)")
        _check(0 <= self.lr_gamma <= 1, "retrain.lr_gamma", "must be in [0, 1] (0: cosine schedule)")
        _check(self.channels >= 0 and self.layers >= 0, "retrain.channels", "and layers must be >= 0")
        _check(self.learning_rate > 0, "retrain.learning_rate", "must be positive")
        _check(self.auxiliary_weight >= 0, "retrain.auxiliary_weight", "must be >= 0")
        _check(0 <= self.drop_path_prob < 1, "retrain.drop_path_prob", "must be in [0, 1)")


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


@dataclass(frozen=True)
class RetrainResult:
    """What a retraining produced and where it is recorded."""

    architecture: Architecture
    metrics: dict[str, float]
    params: int
    run_id: str
    source_run_id: str | None
    registered_version: str | None
    seconds: float


def resolve_architecture(config: RetrainConfig, tracker: MlflowTracker) -> tuple[Architecture, str | None]:
    """The architecture the job names, and the search run it came from (``run:<id>``), if any."""
    space = SPACES.create(config.space.name, config.space.config)
    text = config.architecture
    if text.startswith(RUN_PREFIX):
        run_id = text[len(RUN_PREFIX):]
        try:
            path = tracker.client.download_artifacts(run_id, "genotype.json")
        except Exception as exc:  # MLflow raises several types for a missing run or artifact
            raise ConfigError(
                f"architecture {text!r}: no final architecture (genotype.json) in MLflow run {run_id!r} "
                f"at {tracker.tracking_uri} ({type(exc).__name__})"
            ) from None
        arch = Architecture.from_json(Path(path).read_text())
    else:
        arch, run_id = space.parse(text), None
    if not space.contains(arch):
        raise ArchitectureError(
            f"architecture {text!r} is not in the {config.space.name!r} space as configured: {arch}"
        )
    return arch, run_id


def build_network(
    config: RetrainConfig, arch: Architecture, info: Any, example: torch.Tensor
) -> torch.nn.Module:
    """The stand-alone network, with the auxiliary head and drop path where the space has them,
    checked on ``example``, one input of the data it will train on."""
    space = SPACES.create(config.space.name, config.space.config)
    cfg = config.retrain
    options: dict[str, Any] = {"channels": cfg.channels or None, "layers": cfg.layers or None}
    accepts = inspect.signature(space.build).parameters
    for key, wanted, value in (
        ("auxiliary", cfg.auxiliary_weight > 0, cfg.auxiliary_weight > 0),
        ("drop_path_prob", cfg.drop_path_prob > 0, 0.0),
    ):
        if wanted and key not in accepts:
            raise ConfigError(f"retrain.{key}: the {config.space.name!r} space's networks have none")
        if wanted:
            options[key] = value
    network = space.build(arch, info, **options)
    network.train()
    try:  # a shape that does not fit (an auxiliary head on tiny images, ...) fails here, clearly
        with torch.no_grad():
            out = network(torch.stack([example, example]))  # two: BatchNorm in train mode needs them
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0]
        shape = "x".join(map(str, example.shape))
        raise ConfigError(
            f"the {config.space.name!r} network of {arch} does not run on {info.name}'s "
            f"{shape} inputs with these retrain settings ({reason})"
        ) from None
    logits = out[0] if isinstance(out, tuple) else out  # (logits, auxiliary logits) with a head
    if info.task == "segmentation" and logits.dim() != 4:
        raise ConfigError(
            f"the {config.space.name!r} space builds no segmentation network for {info.name} "
            "(it predicts one class per image); the darts and auto_deeplab spaces do"
        )
    return network


def run_retrain(
    config: RetrainConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> RetrainResult:
    """Train (or resume training) the architecture of ``config`` from scratch.

    Args:
        config: The validated job.
        fresh: Ignore an unfinished checkpoint of the same job.
        echo: Where progress lines go.
    """
    started = time.perf_counter()
    cfg = config.retrain
    checkpoint = Path(config.tracking.output_dir) / config.name / "retrain.pt"
    prior = None if fresh or not checkpoint.is_file() else load_checkpoint(checkpoint)
    if prior is not None and (prior["finished"] or prior["config"] != config.to_dict()):
        prior = None if prior["finished"] else _refuse(checkpoint, config)
    tracker = MlflowTracker(
        tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location,
    )
    arch, source = resolve_architecture(config, tracker)
    torch.manual_seed(config.seed)
    data = DATASETS.create(config.data.name, config.data.config)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    train_loader, test_loader, split = _loaders(data, config.seed)
    model = build_network(config, arch, data.info, example=train_loader.dataset[0][0]).to(device)
    params = sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)
    epoch, history = 0, []
    if prior is not None:
        epoch, history = prior["epoch"], prior["history"]
        run_id = tracker.start(config, run_id=prior["run_id"], tags=_tags(config))
        echo(f"Resuming {config.name!r} after epoch {epoch} from {checkpoint}")
    elif source is not None:
        searched_on = tracker.client.get_run(source).data.tags.get(f"{TAG_PREFIX}dataset")
        kind = "retrain" if searched_on in (None, config.data.name) else "transfer"
        run_id = tracker.start_derived_run(architecture=arch, source_run_id=source, kind=kind,
                                           name=config.name)
        tracker.log_config(config.to_dict())
    else:
        run_id = tracker.start(config, tags=_tags(config))
        tracker.client.log_text(run_id, arch.to_json(indent=1), "architecture.json")
    tested_on = "its test split" if split == "test" else f"the {1 - data.config.train_portion:.0%} held out"
    echo(f"Training {arch} ({params / 1e6:.3f}M parameters) on {config.data.name}, testing on "
         f"{tested_on}; MLflow run {run_id}")
    try:
        start = time.perf_counter()
        for metrics, state in fit(
            model, train_loader, test_loader, device, epochs=cfg.epochs, learning_rate=cfg.learning_rate,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip,
            auxiliary_weight=cfg.auxiliary_weight, drop_path_prob=cfg.drop_path_prob,
            label_smoothing=cfg.label_smoothing, lr_gamma=cfg.lr_gamma, state=prior,
            generator=train_loader.generator,
        ):
            # fit() scores on its second loader as validation; here that is the test split.
            metrics = {(f"test_{k[6:]}" if k.startswith("valid_") else k): v for k, v in metrics.items()}
            seconds, start = time.perf_counter() - start, time.perf_counter()
            epoch = int(metrics["epoch"])
            history.append(metrics)
            record = {"config": config.to_dict(), "run_id": run_id, "history": history, "finished": False}
            save_checkpoint({**record, **state}, checkpoint)
            tracker.log_metrics(metrics, step=epoch - 1, seconds=seconds)
            echo(
                f"epoch {epoch:>3}/{cfg.epochs}  train loss {metrics['train_loss']:.3f} acc "
                f"{metrics['train_acc']:6.1%}  test loss {metrics['test_loss']:.3f} "
                f"acc {metrics['test_acc']:6.1%}  "
                + (f"mIoU {metrics['test_miou']:6.1%}  " if "test_miou" in metrics else "")
                + f"{seconds:.0f}s"
            )
        final = history[-1]
        version = tracker.register_model(
            arch, name=f"raynas-{config.name}", network=model.cpu().eval(), trained=True
        )
        tracker.finish(EpochReport(epoch=epoch - 1, metrics=final, architecture=arch),
                       {"params": params, **final, "test_split": split, "registered_version": version})
        save_checkpoint({"config": config.to_dict(), "finished": True}, checkpoint)
    except BaseException as error:
        tracker.fail(error)
        raise
    return RetrainResult(
        architecture=arch, metrics=final, params=params, run_id=run_id, source_run_id=source,
        registered_version=version, seconds=time.perf_counter() - started,
    )


def _tags(config: RetrainConfig) -> dict[str, str]:
    return {
        f"{TAG_PREFIX}kind": "retrain", f"{TAG_PREFIX}space": config.space.name,
        f"{TAG_PREFIX}dataset": config.data.name, f"{TAG_PREFIX}seed": str(config.seed),
    }


def _refuse(checkpoint: Path, config: RetrainConfig) -> None:
    raise ConfigError(
        f"{checkpoint} belongs to an unfinished retraining of {config.name!r} with another config; "
        "pass --fresh to start over, or give the job another name"
    )


def _loaders(data: Any, seed: int) -> tuple[DataLoader[Any], DataLoader[Any], str]:
    """Training on the whole training set and testing on the official test split, as DARTS's
    ``train.py`` does; for a dataset without one, training on ``data.train_portion`` of the training
    set and testing on the rest. Returns the loaders and which test split it is."""
    cfg = data.config
    full = data.train_set()
    n = min(len(full), cfg.limit) if cfg.limit else len(full)
    official = official_test_set(data)
    if official is None:
        train_idx, test_idx = split_indices(n, cfg.train_portion)
        train_part, test_part, split = Subset(full, train_idx), Subset(full, test_idx), "held_out"
    else:
        m = min(len(official), cfg.limit) if cfg.limit else len(official)
        train_part, test_part, split = Subset(full, range(n)), Subset(official, range(m)), "test"
    generator = torch.Generator().manual_seed(seed)
    train = DataLoader(train_part, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                       generator=generator, num_workers=cfg.num_workers)
    test = DataLoader(test_part, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    return train, test, split


def load_retrain_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RetrainConfig:
    """Read and validate a retraining job file (``--set`` overrides as for searches)."""
    return parse_retrain_config(load_yaml(path, overrides))


def parse_retrain_config(raw: dict[str, Any]) -> RetrainConfig:
    """Validate a raw mapping into a :class:`RetrainConfig`."""
    if "architecture" not in raw:
        raise ConfigError(
            "config key 'architecture' is missing: a published name, a JSON file, or run:<MLflow run id>"
        )
    return RetrainConfig(**parse_sections(raw, RetrainConfig, {"space": SPACES, "data": DATASETS}))


def run_retrain_job(
    config: RetrainConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> RetrainResult:
    """:func:`run_retrain` in this process (``execution.backend: local``) or in a Ray task placed by
    the job's CPU, GPU and accelerator resources (``ray``)."""
    if config.execution.backend == "local":
        return run_retrain(config, fresh=fresh, echo=echo)
    import ray

    from raynas.execution.ray_actors import init_ray, remote_call

    execution = config.execution
    init_ray(execution)
    task = ray.remote(run_retrain).options(
        num_cpus=execution.cpus_per_worker, num_gpus=execution.gpus_per_worker,
        resources={execution.accelerator: execution.gpus_per_worker} if execution.accelerator else {},
        max_retries=0,
    )
    return remote_call(task.remote(config, fresh=fresh, echo=print))


__all__ = [
    "RetrainConfig", "RetrainResult", "RetrainSettings", "load_retrain_config", "parse_retrain_config",
    "run_retrain", "run_retrain_job",
]
