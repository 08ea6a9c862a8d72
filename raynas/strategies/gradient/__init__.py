"""Gradient-based (differentiable) architecture search: DARTS and its variants."""

from raynas.strategies.gradient.base import Batch, GradientConfig, GradientStrategy, StepResult

__all__ = ["Batch", "GradientConfig", "GradientStrategy", "StepResult"]
