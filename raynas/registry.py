"""One registry type for every kind of pluggable component (spaces, strategies, datasets, ops).

Components register with a decorator, optionally together with the dataclass that configures
them; an unknown name is an error that lists the names that exist.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from raynas.errors import UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered component, the config dataclass its ``name`` selects (if any), and its traits:
    what the rules between a job's sections read of it (a space's ``one_shot`` supernet, ...;
    :data:`raynas.config.TRAITS`), None where the component declares none."""

    name: str
    target: T
    config: type | None
    traits: Mapping[str, Any] | None = None


class Registry(Generic[T]):
    """Names mapped to components of one kind.

    Args:
        kind: What the registry holds, used in error messages ("space", "strategy", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(
        self, name: str, *, config: type | None = None, traits: Mapping[str, Any] | None = None
    ) -> Callable[[T], T]:
        """Decorator that registers ``target`` under ``name``.

        Args:
            name: The name users write in configs and on the command line.
            config: The dataclass holding the component's settings, if it has any.
            traits: What the rules between a job's sections may read of the component (see
                :data:`raynas.config.TRAITS`): each a JSON value, or ``{"expr": text}`` for the
                value of an expression over its settings (as a :class:`raynas.config.Check`'s);
                a trait left out is false. None: none declared, and the rules that read them are left to the
                component's own code.
        """

        def decorate(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, target, config, traits)
            return target

        return decorate

    def entry(self, name: str) -> Entry[T]:
        """The entry registered under ``name``; an unknown name lists the valid ones."""
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def get(self, name: str) -> T:
        """The component registered under ``name``."""
        return self.entry(name).target

    def create(self, name: str, /, *args: Any, **kwargs: Any) -> Any:
        """Call the component registered under ``name`` (a class or factory) with the arguments."""
        return self.entry(name).target(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """All registered names, sorted."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
