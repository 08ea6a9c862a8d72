"""The ``EVALUATORS`` registry. Evaluator modules register here; ``raynas.evaluators`` imports the
built-in ones."""

from raynas.registry import Registry

EVALUATORS: Registry[type] = Registry("evaluator")
