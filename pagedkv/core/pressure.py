"""Memory-pressure levels with callbacks fired when the level changes.

Usage is the fraction of usable blocks referenced by sequences or pins (evictable cached blocks
count as free). Levels: LOW below the first threshold, then MEDIUM, HIGH, CRITICAL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import IntEnum
from fractions import Fraction


class PressureLevel(IntEnum):
    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3


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
                callback(old, new)
