"""Reporting blocks that leave the prefix cache while their KV is still intact.

A KV tier saves evicted blocks (write-on-evict): it must see each block before the pool hands
it to a new owner. The eviction loops append ``(block_id, hash)`` to ``entries`` while someone
listens (``entries`` is None otherwise: one ``is None`` test per evicted block) and ``flush``
once per eviction call, before returning the blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

# Called with ``[(block_id, hash)]`` of blocks that just left the prefix cache.
EvictListener = Callable[[list[tuple[int, Hashable]]], None]


class EvictLog:
    """The listener, and what it has not been told yet."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, Hashable]] | None = None
        self.listener: EvictListener | None = None

    def listen(self, listener: EvictListener | None) -> None:
        """Observe evictions with ``listener``; ``None`` stops observing."""
        self.listener = listener
        self.entries = [] if listener is not None else None

    def flush(self) -> None:
        """Hand what was logged since the last flush to the listener."""
        entries = self.entries
        if entries and self.listener is not None:
            self.entries = []
            self.listener(entries)
