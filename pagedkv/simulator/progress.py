"""A dependency-free terminal progress bar for long replays (stderr, throttled, tty-only).

Replays of real traces at small block sizes take tens of seconds; a bar tells the operator the
run is alive and how long is left, without polluting stdout (which may carry ``--json``).
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``update(done, total)`` redraws at most ``hz`` times a second; ``label`` names the task."""

    def __init__(
        self, enabled: bool | None = None, stream: TextIO | None = None, width: int = 30,
        hz: float = 10.0,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.width = width
        self.period = 1.0 / hz
        self.label = ""
        self._last = 0.0
        self._start = time.perf_counter()
        self._drawn = False

    def task(self, label: str) -> ProgressBar:
        """Start a new task: reset the clock and set the label."""
        self.label = label
        self._start = time.perf_counter()
        self._last = 0.0
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if done < total and now - self._last < self.period:
            return
        self._last = now
        frac = min(1.0, done / total) if total > 0 else 1.0
        filled = round(self.width * frac)
        elapsed = now - self._start
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r{self.label[:40]:40s} [{bar}] {100 * frac:5.1f}% {elapsed:6.1f}s eta {eta:5.1f}s"
        )
        self._drawn = True
        if done >= total:
            self.stream.write("\n")
            self._drawn = False
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False
