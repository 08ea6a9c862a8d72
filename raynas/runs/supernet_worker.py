"""The supernet worker of a gradient search: data, supernet and strategy built from a job, run an
epoch at a time. It knows nothing of Ray: the execution layer hosts it in this process or in Ray
actors (one per data-parallel rank) and the gradient driver calls it an epoch at a time.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

import numpy as np
import torch

from raynas.config import SearchConfig
from raynas.data import DATASETS, search_loaders
from raynas.errors import ConfigError
from raynas.spaces import SPACES
from raynas.strategies import STRATEGIES
from raynas.supernet import build_supernet
from raynas.train.accel import pick_device, prepare
from raynas.train.distributed import convert_batchnorm
from raynas.train.loop import evaluate, search_epoch
from raynas.types import EpochReport


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _with_overrides(space_config: Any, overrides: dict[str, Any], config: SearchConfig) -> Any:
    """The space's config with the settings the strategy imposes on its supernet."""
    if not overrides:
        return space_config
    try:
        return dataclasses.replace(space_config, **overrides)
    except TypeError:
        raise ConfigError(
            f"strategy {config.strategy.name!r} needs a space with the settings "
            f"{', '.join(overrides)}; space {config.space.name!r} has none such"
        ) from None


def _numpy_state() -> tuple[Any, ...]:
    # As plain values and a tensor: checkpoints load with torch.load(weights_only=True).
    name, keys, pos, has_gauss, gauss = np.random.get_state()  # type: ignore[misc]
    return (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)


class SupernetWorker:
    """Trains a space's supernet with a gradient strategy on a dataset's search split, an epoch per
    :meth:`run_epoch`.

    Args:
        config: The search job.
        threads: torch intra-op threads (default: leave torch's choice).
        rank: This worker's index when ``world_size`` data-parallel workers share the search
            (they must be in one ``torch.distributed`` process group already).
        world_size: Number of data-parallel workers; each takes a slice of every global batch.
    """

    def __init__(
        self, config: SearchConfig, *, threads: int | None = None, rank: int = 0, world_size: int = 1
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        seed_everything(config.seed)  # the same on every worker: same alphas, weights, samples
        self.config = config
        self.device = pick_device(config.execution.device)
        data = DATASETS.create(config.data.name, config.data.config)
        self.dataset_info = data.info
        self.train_loader, self.valid_loader = search_loaders(
            data, seed=config.seed, rank=rank, world_size=world_size
        )
        strategy_cls = STRATEGIES.get(config.strategy.name)
        space_config = _with_overrides(
            config.space.config, strategy_cls.space_overrides(config.strategy.config), config
        )
        self.space = SPACES.create(config.space.name, space_config)
        self.supernet = build_supernet(self.space, data.info)
        if world_size > 1:
            self.supernet = convert_batchnorm(self.supernet)
        self.supernet = prepare(self.supernet, self.device, channels_last=config.execution.channels_last)
        self.strategy = STRATEGIES.create(
            config.strategy.name,
            supernet=self.supernet,
            config=config.strategy.config,
            train=config.train,
        )
        self.epoch = 0

    @property
    def done(self) -> bool:
        """Whether every configured epoch has run."""
        return self.epoch >= self.config.train.epochs

    def run_epoch(self) -> EpochReport:
        """Train one epoch, evaluate the supernet on the validation half, report."""
        start = time.perf_counter()
        precision = self.config.execution.precision
        metrics = search_epoch(
            self.strategy, self.train_loader, self.valid_loader, self.device, precision=precision
        )
        timings = {key: metrics.pop(key) for key in ("step_seconds", "data_seconds")}
        tic = time.perf_counter()
        metrics.update(evaluate(  # a language model's validation streams go on from batch to batch
            self.supernet, self.valid_loader, self.device, precision=precision,
            carry_state=bool(getattr(self.strategy, "recurrent", False)),
        ))
        timings["eval_seconds"] = time.perf_counter() - tic
        metrics["alpha_entropy"] = self.supernet.arch_entropy()
        if hasattr(self.supernet, "skip_connects"):  # DARTS-style cells only
            metrics["skip_connects"] = float(self.supernet.skip_connects())
        if hasattr(self.strategy, "epoch_metrics"):  # e.g. FBNet's table latency
            metrics.update(self.strategy.epoch_metrics())
        report = EpochReport(
            epoch=self.epoch,
            metrics=metrics,
            architecture=self.strategy.genotype(),
            arch_weights=self.supernet.arch_state(),
            seconds=time.perf_counter() - start,
            timings=timings,
        )
        self.epoch += 1
        return report

    def state_dict(self) -> dict[str, Any]:
        """The strategy's state, the epoch reached and every RNG, for an exact resume."""
        return {
            "epoch": self.epoch,
            "strategy": self.strategy.state_dict(),
            "rng": {
                "python": random.getstate(),
                "numpy": _numpy_state(),
                "torch": torch.get_rng_state(),
                "loaders": [
                    loader.batch_sampler.generator.get_state()  # type: ignore[union-attr]
                    for loader in (self.train_loader, self.valid_loader)
                ],
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`."""
        self.epoch = int(state["epoch"])
        self.strategy.load_state_dict(state["strategy"])
        rng = state["rng"]
        random.setstate(rng["python"])
        name, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        torch.set_rng_state(rng["torch"])
        for loader, s in zip((self.train_loader, self.valid_loader), rng["loaders"], strict=True):
            loader.batch_sampler.generator.set_state(s)  # type: ignore[union-attr]
