"""A small named registry: ``@REG.register("name")``, ``REG.create("name", **kw)``, ``REG.names()``."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, List, TypeVar

from rccsnn.errors import UserError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories (classes or functions) of one kind of thing.

    Args:
        kind: what the registry holds, used in error messages ("model", "data set", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: Dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator that registers a factory under ``name``; a name may be taken only once."""

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        """The factory registered as ``name``; an unknown name is a :class:`UserError` listing the choices."""
        if name not in self._items:
            close = difflib.get_close_matches(str(name), self._items, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"unknown {self.kind} '{name}'{hint}; choices: {', '.join(self.names())}")
        return self._items[name]

    def create(self, name: str, **kwargs) -> T:
        """Build the thing registered as ``name`` with keyword arguments."""
        return self.get(name)(**kwargs)

    def names(self) -> List[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
