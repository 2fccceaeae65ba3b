"""Reporting blocks that leave the prefix cache while their KV is still intact.

A KV tier saves evicted blocks (write-on-evict): it must see each block before the pool hands
it to a new owner. The eviction loops append ``(block_id, hash)`` to ``entries`` while someone
listens (``entries`` is None otherwise: one ``is None`` test per evicted block) and ``flush``
once per eviction call, before returning the blocks.

A listener's exception is contained: ``flush`` runs in the middle of an eviction (the blocks
have left the cache but not reached their new owner), so an exception escaping it would leak
them and break the manager for good. The caller's call (an ``admit``, an ``append``) succeeds
as if the listener had returned; the failure is logged, counted (``failures``, reported as
``ManagerStats.evict_listener_errors``) and kept in ``last_error``. Re-raising it later was
rejected: the call that evicted did change the manager, and a raised ``PagedKVError`` promises
that nothing changed. ``BaseException``s that are not ``Exception``s (``KeyboardInterrupt``)
still propagate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from pagedkv.errors import InvalidArgumentError

logger = logging.getLogger(__name__)

# Called with ``[(block_id, hash)]`` of blocks that just left the prefix cache.
EvictListener = Callable[[list[tuple[int, Hashable]]], None]


class EvictLog:
    """The listener, what it has not been told yet, and how often it failed."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, Hashable]] | None = None
        self.listener: EvictListener | None = None
        self.failures = 0  # listener calls that raised (contained)
        self.last_error: Exception | None = None

    def listen(self, listener: EvictListener | None) -> None:
        """Observe evictions with ``listener``; ``None`` stops observing. A listener that is
        not callable raises ``InvalidArgumentError`` (nothing changes)."""
        if listener is not None and not callable(listener):
            raise InvalidArgumentError(
                f"evict listener must be callable or None, got {listener!r} "
                f"({type(listener).__name__})"
            )
        self.listener = listener
        self.entries = [] if listener is not None else None

    def flush(self) -> None:
        """Hand what was logged since the last flush to the listener; an exception it raises
        is logged and counted, never propagated (see the module docstring)."""
        entries = self.entries
        if entries and self.listener is not None:
            self.entries = []
            try:
                self.listener(entries)
            except Exception as exc:  # contained: the eviction is half done (module docstring)
                self.failures += 1
                self.last_error = exc
                logger.warning(
                    "eviction listener %r failed on %d evicted blocks (failure %d); the "
                    "blocks leave the cache unreported",
                    self.listener,
                    len(entries),
                    self.failures,
                    exc_info=exc,
                )
