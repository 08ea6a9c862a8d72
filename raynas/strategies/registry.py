"""The ``STRATEGIES`` registry. Strategy modules register here; ``raynas.strategies`` imports the
built-in ones."""

from raynas.registry import Registry

STRATEGIES: Registry[type] = Registry("strategy")
