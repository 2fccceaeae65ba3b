"""Progress of long replays on stderr: a redrawn bar on a terminal, a line every few seconds
otherwise (a log file, CI, ``2> log``), so a run is never silent for minutes.

Replays of real traces at small block sizes take tens of seconds; the bar tells the operator the
run is alive and how long is left, without polluting stdout (which may carry ``--json``).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import TextIO

#: seconds between two progress lines when stderr is not a terminal
LINE_PERIOD_S = 5.0


def _seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


class ProgressBar:
    """``update(done, total)`` reports the current task (``task(label)`` names it).

    ``enabled=None`` (auto): a bar redrawn ``hz`` times a second when ``stream`` is a terminal,
    else one line every ``LINE_PERIOD_S`` seconds across tasks (and one when a task that printed
    a line ends).
    ``enabled=True`` forces the bar, ``False`` prints nothing. ``lines`` overrides the style.
    """

    def __init__(
        self,
        enabled: bool | None = None,
        stream: TextIO | None = None,
        width: int = 30,
        hz: float = 10.0,
        *,
        lines: bool | None = None,
        line_period: float = LINE_PERIOD_S,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        tty = self.stream.isatty()
        self.enabled = True if enabled is None else enabled
        self.lines = (enabled is None and not tty) if lines is None else lines
        self.width = width
        self.period = line_period if self.lines else 1.0 / hz
        self.clock = clock
        self.label = ""
        self._start = clock()
        self._last = self._start if self.lines else -math.inf  # a bar draws at once
        self._drawn = False  # bar: a line is open; lines: this task has printed a line

    def task(self, label: str) -> ProgressBar:
        """Start a new task: reset the clock and set the label. (Lines keep their own period
        across tasks, so a sweep of many short tasks still reports every few seconds.)"""
        self.label = label
        self._start = self.clock()
        if not self.lines:
            self._last = -math.inf
            return self
        self._drawn = False
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        now = self.clock()
        finished = done >= total
        if now - self._last < self.period and not (finished and (self._drawn or not self.lines)):
            return
        self._last = now
        frac = min(1.0, done / total) if total > 0 else 1.0
        elapsed = now - self._start
        eta = elapsed * (1 - frac) / frac if frac > 0 else 0.0
        if self.lines:
            self._line(frac, elapsed, eta, finished)
        else:
            self._bar(frac, elapsed, eta, finished)
        self.stream.flush()

    def _line(self, frac: float, elapsed: float, eta: float, finished: bool) -> None:
        tail = "done" if finished else f"about {_seconds(eta)} left"
        self.stream.write(
            f"pagedkv simulate: {self.label}: {100 * frac:.0f}% after {_seconds(elapsed)}, {tail}\n"
        )
        self._drawn = not finished

    def _bar(self, frac: float, elapsed: float, eta: float, finished: bool) -> None:
        filled = round(self.width * frac)
        bar = "#" * filled + "-" * (self.width - filled)
        self.stream.write(
            f"\r{self.label[:40]:40s} [{bar}] {100 * frac:5.1f}% {elapsed:6.1f}s eta {eta:5.1f}s"
        )
        self._drawn = not finished
        if finished:
            self.stream.write("\n")

    def close(self) -> None:
        if self.enabled and self._drawn and not self.lines:
            self.stream.write("\n")
            self.stream.flush()
        self._drawn = False
