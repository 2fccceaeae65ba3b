"""Tiny hand-made traces and step records for the simulator tests."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pagedkv.simulator.trace import Request, Trace


def block_trace(paths: Sequence[Sequence[int]], g: int = 4, out: int = 1) -> Trace:
    """One request per path; each hash id is one full ``g``-token block."""
    reqs = [Request(float(i), len(p) * g, out, tuple(p)) for i, p in enumerate(paths)]
    return Trace(reqs, g, name="hand")


Shape = tuple[int, int]


@dataclass
class Rec:
    """A step record as a cost-model fit reads it: ``(start, num_tokens)`` shapes, seconds."""

    shapes: list[Shape]
    seconds: float
