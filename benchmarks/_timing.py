"""Timing shared by the benchmark scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def interleaved_medians(
    fns: list[Callable[[], object]], repeats: int, warmup: int = 1
) -> list[float]:
    """Median seconds per call of each function. Calls are interleaved (f1, f2, f1, f2, ...)
    so that background load on a shared machine hits every contender alike; ``warmup`` untimed
    calls of each first."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]
