"""Run independent sweep points in worker processes (``pagedkv simulate --jobs N``).

A hit-rate replay is one sequential pass through a block manager and cannot be split, but a
sweep (capacities x policies x block sizes) is a set of independent replays. With ``jobs > 1``
they run in a process pool; each worker receives the shared inputs (the block streams) once, at
start-up, and the results come back in sweep order whatever order the workers finish in, so the
report is identical to a ``jobs=1`` run except for the measured seconds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any, TypeVar

from pagedkv.errors import InvalidArgumentError

P = TypeVar("P")
R = TypeVar("R")
Done = Callable[[int, int], None]

_shared: Any = None  # the worker's copy of the shared inputs (set by _init)


def _init(shared: Any) -> None:
    global _shared
    _shared = shared


def _call(fn: Callable[[Any, P], R], point: P) -> R:
    return fn(_shared, point)


def resolve_jobs(jobs: int) -> int:
    """``jobs`` worker processes; 0 means one per CPU core."""
    if jobs < 0:
        raise InvalidArgumentError(f"jobs must be >= 0 (0 = one per core), got {jobs}")
    return jobs or os.cpu_count() or 1


def run_points(
    fn: Callable[[Any, P], R], shared: Any, points: Sequence[P], jobs: int, done: Done | None = None
) -> list[R]:
    """``[fn(shared, p) for p in points]``, in up to ``jobs`` processes.

    ``fn`` must be a module-level function (workers import it by name); ``shared`` and each
    point must pickle. ``done(k, total)`` is called as results arrive. With one job or one
    point everything runs here, in this process.
    """
    jobs = min(resolve_jobs(jobs), len(points))
    if jobs <= 1:
        out = []
        for k, p in enumerate(points):
            out.append(fn(shared, p))
            if done is not None:
                done(k + 1, len(points))
        return out
    results: list[Any] = [None] * len(points)
    with ProcessPoolExecutor(jobs, initializer=_init, initargs=(shared,)) as pool:
        futures = {pool.submit(_call, fn, p): i for i, p in enumerate(points)}
        try:
            for k, fut in enumerate(as_completed(futures)):
                results[futures[fut]] = fut.result()
                if done is not None:
                    done(k + 1, len(points))
        except BaseException:  # a failed point (or Ctrl-C): don't wait for the queued ones
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results
