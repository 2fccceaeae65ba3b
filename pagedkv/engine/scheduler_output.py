"""What the scheduler decided for one step, as plain data an executor can run.

vLLM v1's split: the :class:`~pagedkv.engine.scheduler.Scheduler` touches only the block
manager and emits a :class:`SchedulerOutput`; an executor (the model, or the simulator's cost
model) runs it; the scheduler then updates its state from the result. Everything an executor
needs is here, so the same scheduler drives the real model and the simulated one.

The order an executor must follow (each reads blocks before anything later writes them)::

    swap_out  (device -> host, blocks of sequences preempted by swap this step)
    swap_in   (host -> device)
    copies    (copy-on-write: src -> dst, before the step writes dst)
    forward   (writes every scheduled token's K/V at slot_mapping, reads block_tables)

This module imports neither torch nor the model: the simulator uses it without them.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pagedkv.engine.request import EngineSeq


@dataclass
class ScheduledSeq:
    """One sequence's part of a step: positions ``[start, start + num_tokens)`` of
    ``seq.tokens`` are computed (their K/V written, the last one's logits sampled from when
    it is the sequence's last token)."""

    seq: EngineSeq
    num_tokens: int
    start: int

    @property
    def completes(self) -> bool:
        """Whether this step computes the sequence's last pending token (so it samples)."""
        return self.start + self.num_tokens == len(self.seq.tokens)

    @property
    def token_ids(self) -> list[int]:
        return self.seq.tokens[self.start : self.start + self.num_tokens]


@dataclass
class SchedulerOutput:
    """One step. ``scheduled`` is in batch order (row ``i`` of the step's logits belongs to
    ``scheduled[i]``).

    Attributes:
        scheduled: the sequences computed this step and how many tokens each.
        block_tables: int64 ``[B, M]``, each scheduled sequence's block ids, padded with the
            null block 0 (``B = len(scheduled)``).
        slot_mapping: int64 ``[T]``, the cache slot of every computed token in batch order
            (``T = num_batched_tokens``).
        swap_out, swap_in: ``(src, dst)`` block pairs (device -> host, host -> device).
        copies: copy-on-write ``(src, dst)`` device block pairs.
        preempted: ids of the sequences preempted while scheduling this step.
    """

    scheduled: list[ScheduledSeq]
    block_tables: np.ndarray
    slot_mapping: np.ndarray
    swap_out: list[tuple[int, int]] = field(default_factory=list)
    swap_in: list[tuple[int, int]] = field(default_factory=list)
    copies: list[tuple[int, int]] = field(default_factory=list)
    preempted: list[Hashable] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_tokens for s in self.scheduled)

    @property
    def seq_ids(self) -> list[Hashable]:
        return [s.seq.seq_id for s in self.scheduled]

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """``(start, num_tokens)`` per scheduled sequence: what a step-cost model reads."""
        return [(s.start, s.num_tokens) for s in self.scheduled]


@dataclass
class StepRecord:
    """What one engine step did and how long it took (for cost-model fitting and replays).

    ``shapes``: ``(start, num_tokens)`` per scheduled sequence (tokens already computed before
    the step, tokens computed in it); ``seconds``: the step's duration on the engine's clock
    (wall time for the model executor, the cost model's figure for the simulated one)."""

    shapes: Sequence[tuple[int, int]]
    seconds: float
