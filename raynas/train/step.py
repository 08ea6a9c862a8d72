"""What one search step is to the training loop: the batches it takes, the statistics it returns,
and the interface a step-wise search method offers (gradient strategies implement it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

Batch = tuple[torch.Tensor, torch.Tensor]  # (images (B, C, H, W), labels (B,))


@dataclass(frozen=True)
class StepResult:
    """Training-batch statistics of one step, as tensors (summed on the device, no sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor


class SearchStep(Protocol):
    """A search method the loop drives a step at a time (see ``raynas.train.loop.search_epoch``)."""

    @property
    def lr(self) -> float:
        """The current learning rate of the weights."""
        ...

    def step(self, train_batch: Batch, valid_batch: Batch | None) -> StepResult:
        """One step on a training batch and a validation batch (None: one that takes none)."""
        ...

    def end_epoch(self) -> None:
        """Advance schedules at the end of an epoch."""
        ...
