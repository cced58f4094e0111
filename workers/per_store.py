"""One helper object per store (the waiters, the event listeners): made on first use,
closed with the app that owns the store, and never kept alive by this registry."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from workers.store import Store


class Closable(Protocol):
    def close(self) -> None: ...


T = TypeVar("T", bound=Closable)


class PerStore(Generic[T]):
    def __init__(self, make: Callable[[Store], T]) -> None:
        self._make = make
        self._made: weakref.WeakKeyDictionary[Store, T] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def of(self, store: Store) -> T:
        """The store's one object, made on first use."""
        with self._lock:
            found = self._made.get(store)
            if found is None:
                found = self._made[store] = self._make(store)
            return found

    def close(self, store: Store) -> None:
        """Close the store's object, if one was made (its app closes)."""
        with self._lock:
            found = self._made.pop(store, None)
        if found is not None:
            found.close()
