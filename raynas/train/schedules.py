"""Learning-rate schedules that torch's schedulers do not state the way the papers do.

DeepLab's "poly" policy (Chen et al., DeepLab, TPAMI 2018, Sec. 4.1; ``tensorflow/models``
``research/deeplab/utils/train_utils.py``, ``learning_policy='poly'``), which Auto-DeepLab
(Sec. 5.2) trains its networks with: ``lr = base * (1 - step / total) ** power``, power 0.9,
updated every iteration.
"""

from __future__ import annotations


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    """The poly learning rate at iteration ``step`` of ``total`` (0 from ``total`` on).

    Args:
        base: The initial learning rate.
        step: Iterations done (0-based).
        total: Iterations in all.
        power: The exponent (DeepLab's 0.9).
    """
    if total <= 0:
        raise ValueError(f"poly schedule: total iterations must be positive, got {total}")
    return base * max(0.0, 1.0 - step / total) ** power
