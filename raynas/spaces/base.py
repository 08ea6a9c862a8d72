"""What spaces share: the check that an architecture is of a space's type, and the defaults of a
space whose every architecture is one option per decision (its flat categorical view,
:class:`raynas.types.ChoiceSpace`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Generic, TypeVar

from raynas.errors import ArchitectureError
from raynas.types import Architecture, Decision, published_record

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


def load_record(
    text: str,
    arch_type: type[A],
    *,
    published: dict[str, A],
    aliases: dict[str, str],
    what: str,
    json_form: str,
    form: str,
    looks_compact: Callable[[str], bool],
) -> A:
    """An ``arch_type`` from a published name (or an alias of one), JSON text or a JSON file, or
    its compact string form (``arch_type.parse``).

    Args:
        text: What the user wrote.
        arch_type: The architecture record.
        published: The published architectures by name.
        aliases: Other names of published ones (alias -> name).
        what: What a published one is called, for messages (``convnext model``).
        json_form: The JSON form, for the message of JSON that does not fit.
        form: The compact form, for the message of text that is none of these.
        looks_compact: Whether text that is neither a name nor JSON is meant as the compact form.
    """
    stripped = text.strip()
    if stripped in published or stripped in aliases:
        return published_record(stripped, published, aliases, what)
    arch = arch_type.read_json(stripped, form=json_form)
    if arch is not None:
        return arch
    if not looks_compact(stripped):
        known = ", ".join(sorted([*published, *aliases]))
        raise ArchitectureError(f"{stripped!r} is no published {what} ({known}), no file, and not {form}")
    return arch_type.parse(stripped)  # type: ignore[attr-defined, no-any-return]


def split_names(text: str, what: str, form: str) -> tuple[str, ...]:
    """The comma-separated names of an architecture's string form (spaces around them allowed).

    Args:
        text: The string form.
        what: The kind of architecture with its article, for the message (``an fbnet``).
        form: How the string form is written, for the message.
    """
    names = [part.strip() for part in text.strip().split(",")]
    if not text.strip() or any(not n for n in names):
        raise ArchitectureError(f"{what} architecture string is {form}; got {text!r}")
    return tuple(names)


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
