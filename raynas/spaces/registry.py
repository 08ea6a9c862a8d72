"""The ``SPACES`` registry. Space modules register here; ``raynas.spaces`` imports the built-in ones."""

from raynas.registry import Registry

SPACES: Registry[type] = Registry("space")
