"""Memory-pressure levels with callbacks fired when the level changes.

Usage is the fraction of usable blocks referenced by sequences or pins (evictable cached blocks
count as free). Levels: LOW below the first threshold, then MEDIUM, HIGH, CRITICAL.

A callback's exception is contained, as the eviction listener's is
(:mod:`pagedkv.core.prefix_cache.evict_log`): ``update`` runs inside the manager's calls, some
of them part-way (a batch admission between two sequences), so an exception escaping it would
leave a call half done while its ``PagedKVError`` promised nothing changed. The failure is
logged, counted (``failures``, ``ManagerStats.pressure_callback_errors``) and kept in
``last_error``; the remaining callbacks still run.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from enum import IntEnum
from fractions import Fraction


class PressureLevel(IntEnum):
    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3


logger = logging.getLogger(__name__)

PressureCallback = Callable[[PressureLevel, PressureLevel], None]


def blocks_at(fraction: float, usable_blocks: int) -> Fraction:
    """``fraction * usable_blocks`` exactly, reading ``fraction`` as the decimal it was written
    as: ``0.55`` means 55/100, not the binary float 0.55000000000000004..., whose product with
    100 would round up one block too late."""
    return Fraction(repr(float(fraction))) * usable_blocks


class PressureMonitor:
    """Tracks the level from the used-block count; ``update`` is O(1) on the hot path."""

    def __init__(self, thresholds: tuple[float, float, float], usable_blocks: int) -> None:
        # the smallest used-block count at which each level starts
        self._starts = [math.ceil(blocks_at(t, usable_blocks)) for t in thresholds]
        # update() is a no-op while low_bound <= used < high_bound
        self.low_bound = 0
        self.high_bound = self._starts[0]
        self.level = PressureLevel.LOW
        self._callbacks: list[PressureCallback] = []
        self.failures = 0  # callback calls that raised (contained, logged)
        self.last_error: Exception | None = None

    def level_for(self, used_blocks: int) -> PressureLevel:
        return PressureLevel(sum(1 for s in self._starts if used_blocks >= s))

    def subscribe(self, callback: PressureCallback) -> None:
        """``callback(old_level, new_level)`` runs after every level change."""
        self._callbacks.append(callback)

    def update(self, used_blocks: int) -> None:
        """Recompute the level after the used-block count changed; fire callbacks on a change.
        O(1): a comparison against the current level's bounds unless a bound is crossed."""
        if self.low_bound <= used_blocks < self.high_bound:
            return
        old, new = self.level, self.level_for(used_blocks)
        self.level = new
        self.low_bound = 0 if new == 0 else self._starts[new - 1]
        self.high_bound = self._starts[new] if new < 3 else 1 << 62
        if new != old:
            for callback in self._callbacks:
                self._notify(callback, old, new)

    def _notify(self, callback: PressureCallback, old: PressureLevel, new: PressureLevel) -> None:
        try:
            callback(old, new)
        except Exception as exc:  # contained: the caller may be part-way (module docstring)
            self.failures += 1
            self.last_error = exc
            logger.warning(
                "pressure callback %r failed on %s -> %s (failure %d)",
                callback,
                old.name,
                new.name,
                self.failures,
                exc_info=exc,
            )
