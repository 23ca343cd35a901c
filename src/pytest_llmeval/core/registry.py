"""What every backend hook fills: a registry of one kind of backend (checks, providers, reporters).

One entry per key (a check's name, a provider's prefix, a reporter's name); a later registration under a key
replaces the earlier one in its place, so a conftest can replace a built-in.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Backends of one kind, in registration order, keyed by the attribute named ``key``."""

    key: ClassVar[str] = "name"

    def __init__(self) -> None:
        self._items: dict[str, T] = {}

    def register(self, item: T) -> None:
        """Add ``item``; one registered earlier under the same key is replaced, in its place."""
        self._items[getattr(item, self.key)] = item

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def names(self) -> list[str]:
        """The keys, in registration order."""
        return list(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key: object) -> bool:
        return key in self._items
