"""A small typed registry: name -> object, with a one-line description. Duplicate names are errors."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable, Generic, Iterator, TypeVar

from kshot.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    description: str


class UnknownNameError(ConfigError, KeyError):
    """A name that is not registered; the message lists the registered names and the closest match."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Maps names to objects (classes or factories).

    Example:
        METHODS = Registry("method")

        @METHODS.register("zeroshot", "CLIP zero-shot classifier")
        class ZeroShot(Method): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def deco(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return deco

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._entries:
            raise KeyError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = Entry(name, obj, description)

    def get(self, name: str) -> T:
        try:
            return self._entries[name].obj
        except (KeyError, TypeError):
            raise UnknownNameError(self.unknown_message(name)) from None

    def check(self, name: str) -> str:
        """`name` if registered, else an UnknownNameError with the registered names and the closest match."""
        self.get(name)
        return name

    def unknown_message(self, name: object) -> str:
        known = sorted(self._entries)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown {self.kind} {name!r}{hint}; registered: {', '.join(known) or '(none)'}"

    def describe(self, name: str) -> str:
        self.get(name)
        return self._entries[name].description

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)
