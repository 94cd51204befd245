"""One small registry per axis: names here are CLI words, config values and report labels."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(ValueError):
    """An unknown registry name. The message is one line naming the valid choices."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class Registry(Generic[T]):
    """Maps names to objects (classes, factories or functions) of one axis.

    >>> samplers = Registry("sampler")
    >>> @samplers.register("euler", "probability-flow ODE, Euler steps")
    ... def euler(...): ...
    """

    def __init__(self, axis: str) -> None:
        self.axis = axis
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.axis} {name!r} is registered twice")
            doc = description or (getattr(obj, "__doc__", None) or "").strip().split("\n")[0]
            self._entries[name] = Entry(name, obj, doc)
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def unknown_message(self, name: str) -> str:
        choices = ", ".join(sorted(self._entries))
        close = difflib.get_close_matches(str(name), list(self._entries), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.axis} {name!r}{hint}; choose one of: {choices}"

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry[T]]:
        return [self._entries[n] for n in self.names()]

    def describe(self, name: str) -> str:
        self.get(name)
        return self._entries[name].description


def build(registry: Registry[Any], name: str, **kwargs: Any) -> Any:
    """Look up `name` and call it with `kwargs` (a class or a factory)."""
    return registry.get(name)(**kwargs)
