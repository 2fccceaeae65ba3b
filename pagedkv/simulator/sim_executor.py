"""The simulated executor: the engine's own core, scheduler and block manager, with no model.

A step costs what the cost model says for its shape (``LinearCostModel.step_ms_for``) on a
:class:`SimClock` that the executor advances; each sampled token is a pseudo-random id drawn
from the request's seed, sample index and position, so two requests never produce the same
output blocks (as two seeded samples of a real model would not). Everything else (admission,
chunked prefill, preemption, prefix caching, copy-on-write, finish) is the engine's code, so the
scheduling a simulation shows is the scheduling the engine does.
"""

from __future__ import annotations

from pagedkv.core import BlockManager
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.engine_core import EngineCore
from pagedkv.engine.executor import StepResult
from pagedkv.engine.sample_types import Sampled, SampleRow, mix_seed
from pagedkv.engine.scheduler_output import SchedulerOutput
from pagedkv.errors import ConfigError
from pagedkv.simulator.costmodel import LinearCostModel

#: what the simulated engine calls its vocabulary (token ids only feed the block hashes)
SIM_VOCAB_SIZE = 1 << 16


class SimClock:
    """A clock that moves only when told: seconds since the simulation began."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def wait_until(self, t: float) -> None:
        """Idle until ``t`` (nothing to run before the next arrival)."""
        self.now = max(self.now, t)


class SimulatedExecutor:
    """Charges each step ``cost.step_ms_for(output.shapes)`` on ``clock``."""

    def __init__(self, cost: LinearCostModel, clock: SimClock, vocab_size: int) -> None:
        self.cost, self.clock, self.vocab_size = cost, clock, vocab_size

    def execute(self, output: SchedulerOutput) -> StepResult:
        seconds = self.cost.step_ms_for(output.shapes) / 1e3
        self.clock.advance(seconds)
        vocab = self.vocab_size

        def draw(i: int, row: SampleRow) -> Sampled:
            return Sampled(mix_seed(row.seed, row.index, len(row.output_ids)) % vocab)

        return StepResult(draw, seconds)


def simulated_engine(
    config: EngineConfig,
    cost: LinearCostModel,
    *,
    max_model_len: int,
    kv_bytes_per_block: int | None = None,
    vocab_size: int = SIM_VOCAB_SIZE,
    clock: SimClock | None = None,
) -> EngineCore:
    """An :class:`EngineCore` with ``config``'s scheduling and KV pool and a simulated executor.

    The pool: ``config.num_blocks`` usable blocks, else what ``config.kv_cache_memory`` pays
    for at ``kv_bytes_per_block`` (the real engine's rule, ``engine_cache_config``)."""
    if config.num_blocks is None and not kv_bytes_per_block:
        raise ConfigError(
            "a simulated engine needs num_blocks, or kv_cache_memory with the model's bytes per "
            f"block (got num_blocks=None, kv_bytes_per_block={kv_bytes_per_block})"
        )
    manager = BlockManager(config.cache_config(config.usable_blocks(kv_bytes_per_block)))
    clock = clock if clock is not None else SimClock()
    return EngineCore(
        config,
        manager,
        SimulatedExecutor(cost, clock, vocab_size),
        max_model_len=max_model_len,
        vocab_size=vocab_size,
        clock=clock,
    )
