"""``Registry[T]``: the one name -> item registry behind every pluggable part of pagedkv.

Eviction policies (``EVICTION_POLICIES``), preemption policies (``PREEMPTION_POLICIES``),
block-hash functions (``HASH_FUNCTIONS``), attention backends and KV tiers (``TIERS``) are all
registries and behave the same:

* ``reg.register(name, item)`` adds ``item``; a name already taken raises
  :class:`~pagedkv.errors.RegistryError` unless ``replace=True``, so a plugin never silently
  shadows a built-in (or another plugin). ``@reg.register(name)`` is the decorator form.
* ``reg[name]`` raises :class:`~pagedkv.errors.UnknownNameError` (an ``InvalidArgumentError``
  and a ``KeyError``) listing the registered names.
* A registry is a read-only ``Mapping``: ``name in reg``, ``len(reg)``, iteration (in
  registration order), ``reg.get(name)``; ``reg.names()`` is the sorted list.
* ``reg.unregister(name)`` removes an entry (tests, plugins being unloaded).

Registries are not locked: register at import time, not from several threads at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, overload

from pagedkv.errors import RegistryError, UnknownNameError

__all__ = ["Registry", "RegistryError", "UnknownNameError"]

T = TypeVar("T")
_MISSING: Any = object()


def _describe(item: object) -> str:
    return getattr(item, "__qualname__", None) or repr(item)


class Registry(Mapping[str, T]):
    """Named items of one kind; ``what`` names the kind in error messages."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def check_available(self, name: object, *, replace: bool = False) -> None:
        """Raise what ``register(name, ..., replace=replace)`` would raise, registering
        nothing (lets a caller registering several names do it all or nothing)."""
        if not isinstance(name, str) or not name:
            raise RegistryError(f"{self.what}: a name must be a non-empty str, got {name!r}")
        if not replace and name in self._items:
            raise RegistryError(
                f"{self.what} {name!r} is already registered "
                f"({_describe(self._items[name])}); pass replace=True to replace it"
            )

    @overload
    def register(self, name: str, *, replace: bool = False) -> Callable[[T], T]: ...

    @overload
    def register(self, name: str, item: T, *, replace: bool = False) -> T: ...

    def register(
        self, name: str, item: Any = _MISSING, *, replace: bool = False
    ) -> T | Callable[[T], T]:
        """Register ``item`` under ``name`` and return it; without ``item``, a decorator that
        registers what it decorates. Raises ``RegistryError`` if ``name`` is taken (unless
        ``replace``) or not a non-empty ``str``; the decorator form checks the name at once."""
        self.check_available(name, replace=replace)
        if item is _MISSING:

            def decorator(obj: T) -> T:
                return self.register(name, obj, replace=replace)

            return decorator
        self._items[name] = item
        return item  # type: ignore[no-any-return]  # item is a T (the overloads say so)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its item; ``UnknownNameError`` if it is not registered."""
        item = self[name]
        del self._items[name]
        return item

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._items)

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name
            raise UnknownNameError(
                f"{self.what}: unknown name {name!r}; expected one of {self.names()}"
            ) from None

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}, {self.names()})"
