"""A small name -> factory registry (after timm's model registry).

Every pluggable family (datasets, nets, synsets, methods) owns one ``Registry``; entries are added with
the ``@REGISTRY.register("name")`` decorator and looked up by lowercase snake-case key. An unknown name
raises :class:`UnknownNameError` listing the valid names and the closest matches.

An entry also says how front ends show it: ``label`` and ``help``, given to ``register(...)`` or set as class
attributes of the entry (methods and synset kinds do the latter). The CLI, the app and the bench enumerate
the registries and ask them, so a new entry appears everywhere without editing them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from haba_core.errors import UnknownNameError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of thing."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, str]] = {}

    def register(self, name: str | None = None, *, label: str = "", help: str = "") -> Callable[[T], T]:
        """Decorator adding a factory under ``name`` (default: its ``__name__`` lowercased), with the ``label``
        and one-line ``help`` front ends show (default: the entry's own ``label``/``help`` attributes)."""

        def wrap(obj: T) -> T:
            key = (name or obj.__name__).lower()
            if key in self._entries:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._entries[key] = obj
            self._meta[key] = {"label": label, "help": help}
            return obj

        return wrap

    def unregister(self, name: str) -> None:
        """Remove an entry (tests that register a temporary one clean up with this)."""
        key = str(name).lower()
        self._entries.pop(key, None)
        self._meta.pop(key, None)

    def label(self, name: str) -> str:
        """How front ends name the entry: its registered or class ``label``, else the key."""
        key = str(name).lower()
        return self._meta.get(key, {}).get("label") or getattr(self.get(key), "label", "") or key

    def help(self, name: str) -> str:
        """The entry's one-line description (empty if it has none)."""
        key = str(name).lower()
        return self._meta.get(key, {}).get("help") or getattr(self.get(key), "help", "") or ""

    def get(self, name: str) -> T:
        key = str(name).lower()
        if key not in self._entries:
            hint = did_you_mean(key, self._entries)
            raise UnknownNameError(
                f"Unknown {self.kind} {name!r}.{hint} Valid choices: {', '.join(sorted(self._entries))}."
            )
        return self._entries[key]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return self.get(name)(*args, **kwargs)

    def list(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return str(name).lower() in self._entries
