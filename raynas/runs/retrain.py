"""Retraining (and transfer) of a found architecture from scratch, with lineage to its search.

A retraining job names an architecture (a published genotype, a JSON file, or ``run:<id>``: the
final architecture of a search's MLflow run), builds its stand-alone network on the job's data
(which may differ from the search's: that is a transfer) and trains it with the one training
loop: SGD with cosine annealing, optional auxiliary head and drop path for the DARTS networks, as
in DARTS's ``train.py`` (or AdamW, as ConvNeXt trains); a recurrent language model (a corpus of
token streams: PTB, WikiText-2) trains as DARTS's ``rnn/train.py`` (:mod:`raynas.train.language_model`).
The MLflow run carries lineage tags to the search run and architecture; the trained network is
registered in the Model Registry. A checkpoint after every epoch makes it resumable like a search.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from raynas.config import RetrainConfig, another_config
from raynas.data import DATASETS
from raynas.data.base import ShardedBatchSampler, official_test_set, split_indices, training_order
from raynas.errors import ArchitectureError, ConfigError, cause, no_memory
from raynas.evaluators.language_model import trains_on_text
from raynas.execution import outliving_losses, start_worker
from raynas.execution.ray_actors import head_watched
from raynas.runs.common import attempt_id, sole_writer
from raynas.spaces import SPACES
from raynas.tracking import MlflowTracker
from raynas.tracking.mlflow_tracker import RUN_PREFIX, TAG_PREFIX, run_artifact
from raynas.train.accel import pick_device, prepare
from raynas.train.checkpoint import load_checkpoint, save_checkpoint
from raynas.train.distributed import convert_batchnorm, plain_batchnorm
from raynas.train.language_model import fit_language_model
from raynas.train.loop import fit
from raynas.types import Architecture, EpochReport


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
        run_id, path = run_artifact(tracker.client, text, "genotype.json", "a search's final architecture",
                                    store_setting="the job's tracking.tracking_uri (or --tracking-uri)")
        try:
            arch = Architecture.from_json(Path(path).read_text())
        except (ValueError, UnicodeDecodeError) as exc:  # not JSON, or not an architecture's
            raise ConfigError(f"architecture {text!r}: its genotype.json is not an architecture "
                              f"({cause(exc)})") from None
    else:
        arch, run_id = space.parse(text), None
    if not space_builds(space, arch, config):
        raise ArchitectureError(
            f"architecture {text!r} is not in the {config.space.name!r} space as configured, and its "
            f"network cannot be built from it: {arch}"
        )
    return arch, run_id


def space_builds(space: Any, arch: Architecture, config: RetrainConfig) -> bool:
    """Whether ``space`` holds ``arch`` or, outside it, builds its network all the same: a
    published network of another search space, as DARTS's ``train.py`` trains NASNet and
    AmoebaNet from its ``genotypes.py`` (5 nodes, ``sep_conv_7x7``, where its space has 4 nodes
    and 8 operations)."""
    if space.contains(arch):
        return True
    from raynas.data import dataset_info

    try:
        space.build(arch, dataset_info(config.data.name), channels=config.retrain.channels or None,
                    layers=config.retrain.layers or None)
    except Exception:  # whatever the space's code raises for what it cannot build
        return False
    return True


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
        ("drop_path_prob", cfg.drop_path_prob > 0, cfg.drop_path_prob),
    ):
        if wanted and key not in accepts:
            raise ConfigError(f"retrain.{key}: the {config.space.name!r} space's networks have none")
        if wanted:
            options[key] = value
    network = space.build(arch, info, **options)
    if hasattr(network, "drop_path_prob"):  # DARTS's ramp: fit() raises it from 0, epoch by epoch
        network.drop_path_prob = 0.0
    # (ConvNeXt's stochastic depth keeps the per-block rates it was built with, as main.py's.)
    network.train()
    # The check leaves the network as built: its BatchNorm statistics and the random stream (its
    # dropout draws) are put back after it.
    buffers = {name: b.clone() for name, b in network.named_buffers()}
    rng = torch.get_rng_state()
    try:  # a shape that does not fit (an auxiliary head on tiny images, ...) fails here, clearly
        with torch.no_grad():
            out = network(torch.stack([example, example]))  # two: BatchNorm in train mode needs them
            for name, b in network.named_buffers():
                b.copy_(buffers[name])
        torch.set_rng_state(rng)
    except RuntimeError as exc:
        if no_memory(exc):
            raise  # not the inputs: the command line says it as such
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
    if info.task != "segmentation" and logits.dim() == 4:
        raise ConfigError(
            f"the {config.space.name!r} space builds segmentation networks (a class per pixel); "
            f"{info.name} labels whole images: retrain it on a segmentation dataset (cityscapes)"
        )
    return network


class RetrainWorker:
    """The training of one retraining job, an epoch per :meth:`run_epoch`, hosted by the execution
    layer in this process or in Ray actors: with ``world_size`` > 1 each rank trains on its slice
    of every global batch (gradients and BatchNorm statistics over the whole batch) and tests on
    its slice of the test split (metrics summed over the ranks), so together they compute what
    one worker computes alone.

    Args:
        config: The job.
        arch_json: The architecture, as JSON.
        threads: torch intra-op threads (default: leave torch's choice).
        rank: This worker's index among ``world_size`` (in one process group already).
        world_size: Data-parallel workers.
    """

    def __init__(
        self, config: RetrainConfig, arch_json: str, *, threads: int | None = None, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        torch.manual_seed(config.seed)  # the same initial weights on every rank
        self.config = config
        data = DATASETS.create(config.data.name, config.data.config)
        self.device = pick_device(config.execution.device)
        self.recurrent = trains_on_text(config)
        if self.recurrent:
            self.train_loader, self.valid_loader, self.test_loader = _stream_loaders(data, config)
            self.split = "test"
            example = self.train_loader.dataset[(0, data.config.bptt)][0][0]  # (T,) tokens of stream 0
        else:
            self.train_loader, self.test_loader, self.split = _loaders(
                data, config.seed, rank, world_size, config.retrain.aug_repeats
            )
            example = self.train_loader.dataset[0][0]
        arch = Architecture.from_json(arch_json)
        self.example_shape = tuple(example.shape)
        model = build_network(config, arch, data.info, example=example)
        if world_size > 1:
            model = convert_batchnorm(model)
        self.model = model.to(self.device)
        execution = config.execution
        self.network = prepare(
            self.model, self.device, channels_last=execution.channels_last, compile=execution.compile
        )
        self.params = sum(p.numel() for name, p in model.named_parameters() if "auxiliary" not in name)
        self.held_out = 1 - data.config.train_portion
        self._epochs: Any = None
        self.load_state_dict(None)

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Continue from a state :meth:`run_epoch` returned (None: from the start)."""
        cfg = self.config.retrain
        generator = self.train_loader.batch_sampler.generator  # type: ignore[union-attr]
        precision = self.config.execution.precision
        if self.recurrent:
            self._epochs = fit_language_model(
                self.network, self.train_loader, self.valid_loader, self.test_loader, self.device,
                epochs=cfg.epochs, learning_rate=cfg.learning_rate, weight_decay=cfg.weight_decay,
                grad_clip=cfg.grad_clip, bptt=self.config.data.config.bptt, ar=cfg.ar, tar=cfg.tar,
                nonmono=cfg.nonmono, state=state, generator=generator, precision=precision,
                lr_gamma=cfg.lr_gamma, decay_start=cfg.decay_start, min_learning_rate=cfg.min_learning_rate,
                decay_in_loss=cfg.decay_in_loss,
            )
            return
        self._epochs = fit(
            self.network, self.train_loader, self.test_loader, self.device, epochs=cfg.epochs,
            learning_rate=cfg.learning_rate, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
            grad_clip=cfg.grad_clip, auxiliary_weight=cfg.auxiliary_weight,
            drop_path_prob=cfg.drop_path_prob, label_smoothing=cfg.label_smoothing, lr_gamma=cfg.lr_gamma,
            decay_start=cfg.decay_start,
            lr_power=cfg.lr_power, state=state, generator=generator, precision=precision,
            optimizer_name=cfg.optimizer, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
            warmup_epochs=cfg.warmup_epochs, mixup=cfg.mixup, cutmix=cfg.cutmix,
            mix_switch_prob=cfg.mix_switch_prob, ema_decay=cfg.ema_decay,
            min_learning_rate=cfg.min_learning_rate, lr_per_step=cfg.lr_per_step,
            bce_threshold=cfg.bce_target_threshold if cfg.loss == "bce" else None,
            restart_epochs=cfg.restart_epochs, restart_mult=cfg.restart_mult, nesterov=cfg.nesterov,
            decay_in_loss=cfg.decay_in_loss, drop_path_per_step=cfg.drop_path_ramp == "step",
        )

    def run_epoch(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Train and test one epoch: its metrics (``test_*``; a language model's ``valid_*`` too)
        and the state to go on from."""
        metrics, state = next(self._epochs)
        if self.recurrent:
            return metrics, state
        # fit() scores on its second loader as validation; here that is the test split.
        return {(f"test_{k[6:]}" if k.startswith("valid_") else k): v for k, v in metrics.items()}, state

    def example_input(self) -> torch.Tensor:
        """One input of the data's shape, zeros ((1, C, H, W) as the network trains on them, or
        (1, T) token ids), for the registered model's signature and input example."""
        return torch.zeros((1, *self.example_shape), dtype=torch.long if self.recurrent else torch.float32)

    def describe(self) -> dict[str, Any]:
        """Size and test split, for the driver's first line."""
        return {"params": self.params, "split": self.split, "held_out": self.held_out}

    def trained_network(self) -> torch.nn.Module:
        """The trained network, on the CPU, in eval mode, with plain BatchNorm layers."""
        return plain_batchnorm(self.model).cpu().eval()


@head_watched()  # a head lost at any moment: raynas's line, not Ray's core ending the process later
def run_retrain(
    config: RetrainConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> RetrainResult:
    """Train (or resume training) the architecture of ``config`` from scratch, on the workers
    ``execution`` describes (this process, one Ray actor, or ``execution.workers`` data-parallel
    ones); this process records the run and its checkpoints.

    Args:
        config: The validated job.
        fresh: Ignore an unfinished checkpoint of the same job.
        echo: Where progress lines go.
    """
    checkpoint = Path(config.tracking.output_dir) / config.name / "retrain.pt"
    with sole_writer(str(checkpoint), f"the retraining {config.name!r}"):
        return _run_retrain(config, checkpoint, fresh=fresh, echo=echo)


def _run_retrain(
    config: RetrainConfig, checkpoint: Path, *, fresh: bool, echo: Callable[[str], None]
) -> RetrainResult:
    started = time.perf_counter()
    cfg = config.retrain
    check_settings(config)
    prior = None if fresh or not checkpoint.is_file() else load_checkpoint(checkpoint)
    if prior is not None and (prior["finished"] or prior["config"] != config.to_dict()):
        if not prior["finished"]:
            raise another_config(checkpoint, "retraining", config.name, prior["config"], config.to_dict())
        prior = None
    tracker = MlflowTracker(
        tracking_uri=config.tracking.tracking_uri, experiment=config.tracking.experiment,
        artifact_location=config.tracking.artifact_location, pictures=config.tracking.pictures,
    )
    arch, source = resolve_architecture(config, tracker)
    worker = start_worker(functools.partial(RetrainWorker, config, arch.to_json()), config.execution, echo)
    try:
        epoch, history = 0, []
        state: dict[str, Any] | None = None  # the last checkpoint's: what a new worker resumes from
        # Calls to the worker, made again on a new one resumed from `state` while one is lost.
        outliving = functools.partial(outliving_losses, worker, state=lambda: state,
                                      done=lambda: epoch, echo=echo)

        facts = outliving(lambda: worker.call("describe"))
        params, split = facts["params"], facts["split"]
        if prior is not None:
            epoch, history = prior["epoch"], prior["history"]
            keys = ("model", "optimizer", "schedule", "epoch", "loader_rng", "asgd", "valid_history", "best")
            state = {k: prior[k] for k in keys if k in prior}
            outliving(lambda: worker.load_state_dict(state))
            run_id = tracker.start(config, run_id=prior["run_id"], tags=_tags(config))
            echo(f"Resuming {config.name!r} after epoch {epoch} from {checkpoint}")
        elif source is not None:
            searched_on = tracker.client.get_run(source).data.tags.get(f"{TAG_PREFIX}dataset")
            kind = "retrain" if searched_on in (None, config.data.name) else "transfer"
            run_id = tracker.start_derived_run(architecture=arch, source_run_id=source, kind=kind,
                                               name=config.name,
                                               attempt=attempt_id(str(checkpoint), fresh=fresh))
            tracker.log_config(config.to_dict())
        else:
            run_id = tracker.start(config, tags=_tags(config),
                                   attempt=attempt_id(str(checkpoint), fresh=fresh))
            tracker.client.log_text(run_id, arch.to_json(indent=1), "architecture.json")
        tested_on = "its test split" if split == "test" else f"the {facts['held_out']:.0%} held out"
        echo(f"Training {arch} ({params / 1e6:.3f}M parameters) on {config.data.name}, testing on "
             f"{tested_on}, in {worker.describe_location()}; MLflow run {run_id}")
        while epoch < cfg.epochs:
            start = time.perf_counter()
            metrics, state = outliving(worker.run_epoch)
            seconds = time.perf_counter() - start
            if int(metrics["epoch"]) <= epoch:  # a language model's rollback (raynas.train.language_model)
                echo(f"the training loss was not finite in epoch {epoch + 1}: rolled back to the "
                     f"network kept after epoch {int(metrics['epoch'])}, and that epoch trained again "
                     "(as rnn/train.py)")
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
                + (f"ppl {metrics['test_ppl']:.2f}  " if "test_ppl" in metrics else "")
                + ("averaged SGD  " if metrics.get("asgd") else "")
                + f"{seconds:.0f}s"
            )
        final = history[-1]
        model, example = outliving(lambda: (worker.call("trained_network"), worker.call("example_input")))
        version = tracker.register_model(arch, name=f"raynas-{config.name}", network=model, trained=True,
                                         example=example)
        tracker.finish(EpochReport(epoch=epoch - 1, metrics=final, architecture=arch),
                       {"params": params, **final, "test_split": split, "registered_version": version})
        save_checkpoint({"config": config.to_dict(), "finished": True}, checkpoint)
    except BaseException as error:
        tracker.fail(error)
        raise
    finally:
        worker.close()
    return RetrainResult(
        architecture=arch, metrics=final, params=params, run_id=run_id, source_run_id=source,
        registered_version=version, seconds=time.perf_counter() - started,
    )


def _tags(config: RetrainConfig) -> dict[str, str]:
    return {
        f"{TAG_PREFIX}kind": "retrain", f"{TAG_PREFIX}space": config.space.name,
        f"{TAG_PREFIX}dataset": config.data.name, f"{TAG_PREFIX}seed": str(config.seed),
    }


def check_settings(config: RetrainConfig) -> None:
    """The checks a retraining makes of its job before it starts, beyond those of the job's own
    parts: a language model's training takes only the settings rnn/train.py's has.

    Raises:
        ConfigError: A setting the network's training does not have.
    """
    if trains_on_text(config):
        _check_recurrent(config)


def _check_recurrent(config: RetrainConfig) -> None:
    """Refuse settings a language model's training (rnn/train.py's) does not have."""
    cfg = config.retrain
    for key, unused in (
        ("optimizer", cfg.optimizer != "sgd"), ("momentum", cfg.momentum),
        ("lr_power", cfg.lr_power), ("warmup_epochs", cfg.warmup_epochs),
        ("label_smoothing", cfg.label_smoothing), ("auxiliary_weight", cfg.auxiliary_weight),
        ("drop_path_prob", cfg.drop_path_prob), ("mixup", cfg.mixup), ("cutmix", cfg.cutmix),
        ("ema_decay", cfg.ema_decay), ("lr_per_step", cfg.lr_per_step),
        ("loss", cfg.loss != "cross_entropy"), ("aug_repeats", cfg.aug_repeats > 1),
        ("min_learning_rate", cfg.min_learning_rate and not cfg.lr_gamma),
    ):
        if unused:
            raise ConfigError(
                f"retrain.{key}: a language model on {config.data.name} trains as DARTS's rnn/train.py, "
                "with SGD at a constant rate (or one decaying by retrain.lr_gamma, down to "
                "retrain.min_learning_rate), no momentum, then averaged SGD; remove the setting"
            )
    if config.execution.workers > 1:
        raise ConfigError(
            f"execution.workers: a language model on {config.data.name} trains in one worker, as "
            "rnn/train.py on one GPU"
        )


def _stream_loaders(
    data: Any, config: RetrainConfig
) -> tuple[DataLoader[Any], DataLoader[Any], DataLoader[Any]]:
    """A language model's texts as rnn/train.py reads them, each in parallel streams read window
    after window: the training text in ``data.batch_size`` streams with its variable windows (with
    ``data.windows: fixed``, whole windows of ``bptt``, as ENAS's ``ptb_input_producer``), the
    validation text in ``retrain.valid_streams`` (10) and the test text in ``retrain.test_streams``
    (1), in windows of ``bptt``."""
    cfg = config.retrain
    lengths = "train" if data.config.windows == "variable" else "whole"
    return (
        data.stream_loader("train", data.config.batch_size, seed=config.seed, lengths=lengths),
        data.stream_loader("valid", cfg.valid_streams),
        data.stream_loader("test", cfg.test_streams),
    )


def _loaders(
    data: Any, seed: int, rank: int = 0, world_size: int = 1, repeats: int = 1
) -> tuple[DataLoader[Any], DataLoader[Any], str]:
    """Training on the whole training set and testing on the official test split, as DARTS's
    ``train.py`` does; for a dataset without one, training on ``data.train_portion`` of the training
    set and testing on the rest. Returns the loaders and which test split it is. With
    ``world_size`` > 1 this worker takes its slice of every shuffled global batch and its slice of
    the test split; ``repeats``: repeated augmentation (:class:`ShardedBatchSampler`)."""
    cfg = data.config
    full = data.train_set()
    order = training_order(data, full)  # a limit keeps every class of a folder of class folders
    n = min(len(order), cfg.limit) if cfg.limit else len(order)
    official = official_test_set(data)
    if official is None:
        train_idx, test_idx = split_indices(order[:n], cfg.train_portion)
        train_part, test_part, split = Subset(full, train_idx), Subset(full, test_idx), "held_out"
    else:
        m = min(len(official), cfg.limit) if cfg.limit else len(official)
        train_part, test_part, split = Subset(full, order[:n]), Subset(official, range(m)), "test"
    if cfg.batch_size % world_size:
        raise ConfigError(
            f"data.batch_size ({cfg.batch_size}) must be a multiple of the {world_size} execution.workers"
        )
    generator = torch.Generator().manual_seed(seed)
    sampler = ShardedBatchSampler(len(train_part), cfg.batch_size, generator, rank, world_size, repeats)
    # DARTS's train.py (DataLoader(train_data, batch_size, shuffle=True)) keeps each epoch's last,
    # smaller batch (521 steps at batch 96); data-parallel ranks drop it, so every global batch
    # splits evenly.
    sampler.drop_last = world_size > 1
    train = DataLoader(train_part, batch_sampler=sampler, num_workers=cfg.num_workers)
    share = -(-len(test_part) // world_size)  # this rank's contiguous slice; the sums add up
    mine = test_part if world_size == 1 else Subset(
        test_part, range(rank * share, min(len(test_part), (rank + 1) * share))
    )
    test = DataLoader(mine, batch_size=cfg.batch_size, num_workers=cfg.num_workers)
    return train, test, split


def run_retrain_job(
    config: RetrainConfig, *, fresh: bool = False, echo: Callable[[str], None] = print
) -> RetrainResult:
    """:func:`run_retrain` (kept for the command line: the training goes where ``execution`` says)."""
    return run_retrain(config, fresh=fresh, echo=echo)


__all__ = ["RetrainResult", "RetrainWorker", "run_retrain", "run_retrain_job"]
