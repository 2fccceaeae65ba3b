"""The executor interface: runs a :class:`SchedulerOutput` and says how to draw each row's token.

Two executors implement it: :class:`~pagedkv.engine.model_executor.ModelExecutor` (the model,
on the paged KV cache) and :class:`~pagedkv.simulator.sim_executor.SimulatedExecutor` (no model:
a step costs what the cost model says, on a simulated clock). The engine core, the scheduler and
the output processing are the same for both, so a simulation runs the code that serves.

No torch here: the simulator imports this module without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pagedkv.engine.sample_types import Sampled, SampleRow
from pagedkv.engine.scheduler_output import SchedulerOutput


@dataclass
class StepResult:
    """What running a step gives back.

    ``draw(i, row)``: the token of row ``i`` of the step (``scheduled[i]``), under ``row``'s
    sampling parameters. ``seconds``: the step's duration when the executor knows it (a
    simulated clock); ``None``: the engine measures it."""

    draw: Callable[[int, SampleRow], Sampled]
    seconds: float | None = None


class Executor(Protocol):
    """Runs one step: swaps, copy-on-write copies and the forward, in that order."""

    def execute(self, output: SchedulerOutput) -> StepResult: ...
