"""What spaces share: the check that an architecture is of a space's type, and the defaults of a
space whose every architecture is one option per decision (its flat categorical view,
:class:`raynas.types.ChoiceSpace`)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar

from raynas.errors import ArchitectureError
from raynas.types import Architecture, Decision

A = TypeVar("A", bound=Architecture)


def expect_arch(arch: Architecture, arch_type: type[A], verb: str = "builds") -> A:
    """``arch`` if it is an ``arch_type``, else an :class:`ArchitectureError` naming the space
    (``arch_type.space``).

    Args:
        arch: What the caller was given.
        arch_type: The architecture type the space works with.
        verb: What the space does with it, for the message (``builds``, ``draws``, ...).
    """
    if not isinstance(arch, arch_type):
        raise ArchitectureError(
            f"the {arch_type.space} space {verb} {arch_type.__name__}, got {type(arch).__name__}"
        )
    return arch


def encode_options(decisions: Sequence[Decision], names: Sequence[str]) -> tuple[int, ...]:
    """The option index of each name, one per decision (the inverse of
    :func:`raynas.types.decode_options`)."""
    return tuple(d.options.index(v) for d, v in zip(decisions, names, strict=True))


class OptionsSpace(Generic[A]):
    """Base of a space whose config lists the options of every decision: ``sample`` draws each
    uniformly, ``check`` accepts what ``contains`` does.

    A subclass sets ``architecture_type`` and defines ``decisions``, ``decode`` and ``contains``.
    """

    architecture_type: ClassVar[type[Any]]

    def sample(self, rng: random.Random) -> A:
        """Every decision uniformly at random."""
        return self.decode([rng.randrange(len(d.options)) for d in self.decisions()])  # type: ignore[attr-defined]

    def check(self, arch: Architecture) -> A:
        """``arch`` if it belongs to the space, else an :class:`ArchitectureError` saying why."""
        a: A = expect_arch(arch, self.architecture_type)
        if not self.contains(a):  # type: ignore[attr-defined]
            raise ArchitectureError(f"{a.space} architecture {a} is not among this space's options")
        return a
