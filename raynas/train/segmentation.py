"""Metrics of dense prediction: pixels that count, the confusion matrix and the mean
intersection-over-union (the Cityscapes benchmark's class IoU averaged over classes, Cordts et al.
2016; as in DeepLab's evaluation, a class absent from both labels and predictions is left out).

Labels mark ignored pixels with -100, PyTorch's default ``ignore_index``, so
``nn.CrossEntropyLoss`` on (B, C, H, W) logits and (B, H, W) labels ignores them unchanged.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


def labelled(y: torch.Tensor) -> torch.Tensor:
    """How many labels count (all of them for classification): a 0-dim tensor on ``y``'s device."""
    return (y != IGNORE_INDEX).sum()


def mean_cross_entropy(logits: torch.Tensor, y: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy averaged over the labels that count; 0 (not NaN, which would poison the
    weights) for a batch whose every pixel is ignored. ``label_smoothing`` ε takes the target
    ``(1 - ε) onehot + ε / classes``, as DARTS's ``CrossEntropyLabelSmooth`` (train_imagenet.py)."""
    total = torch.nn.functional.cross_entropy(
        logits, y, reduction="sum", ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing
    )
    return total / labelled(y).clamp(min=1)


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts of (true class, predicted class) over the labelled pixels.

    Args:
        pred: Predicted classes, any shape.
        target: True classes of the same shape, ``IGNORE_INDEX`` where ignored.
        num_classes: C.

    Returns:
        (C, C) int64 counts, rows the true class, columns the predicted one.
    """
    keep = target != IGNORE_INDEX
    index = target[keep].long() * num_classes + pred[keep].long()
    return torch.bincount(index, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_iou(confusion: torch.Tensor) -> torch.Tensor:
    """IoU of every class, ``tp / (tp + fp + fn)``; NaN for a class absent from both."""
    c = confusion.double()
    tp = c.diagonal()
    union = c.sum(0) + c.sum(1) - tp
    return tp / union  # 0/0 = NaN for classes never seen nor predicted


def mean_iou(confusion: torch.Tensor) -> float:
    """The mean IoU over the classes present in the labels or the predictions (0 when none)."""
    iou = class_iou(confusion)
    present = ~iou.isnan()
    return float(iou[present].mean()) if bool(present.any()) else 0.0
