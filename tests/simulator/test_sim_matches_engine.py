"""The simulator runs the engine's own scheduling: given the step times the cost model gives,
a simulated replay and the real engine (a real model computing every token, on a clock that
the same cost model moves) admit, chunk, preempt, hit the prefix cache and finish identically.

This is the "same scheduler" claim of issue 18 as a test: any scheduling difference between
the two paths (a policy, a default, a knob read differently) changes at least one figure."""

from __future__ import annotations

import pytest

from pagedkv.engine import EngineConfig, LLMEngine
from pagedkv.engine.executor import StepResult
from pagedkv.engine.model_executor import ModelExecutor
from pagedkv.engine.scheduler_output import SchedulerOutput
from pagedkv.models import tiny_random_llama
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_replay import SUMMARY_FIELDS, serve_trace, summarize
from pagedkv.simulator.sim_executor import SimClock, simulated_engine
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace_prompts import trace_requests

COST = LinearCostModel(4.0, 0.05, 0.5, attention_ms_per_kpair=0.01, mixed_step_ms=3.0)


class CostClockExecutor:
    """The real model executor, but the step takes the cost model's time on a SimClock."""

    def __init__(self, inner: ModelExecutor, clock: SimClock) -> None:
        self.inner, self.clock = inner, clock

    def execute(self, output: SchedulerOutput) -> StepResult:
        result = self.inner.execute(output)
        seconds = COST.step_ms_for(output.shapes) / 1e3
        self.clock.advance(seconds)
        return StepResult(result.draw, seconds)


@pytest.fixture(scope="module")
def lm():
    return tiny_random_llama(0)


@pytest.mark.parametrize(
    ("options", "spec"),
    [
        # few blocks: recompute preemptions; shared system prompt: prefix hits; small budget:
        # chunked prefill
        (
            {"num_blocks": 40, "max_num_seqs": 8, "max_num_batched_tokens": 48},
            SyntheticSpec(
                num_requests=24,
                rate=40.0,
                mean_turns=2,
                system_prompt_tokens=40,
                max_len=200,
                dataset="alpaca",
                seed=1,
            ),
        ),
        (
            {
                "num_blocks": 48,
                "max_num_seqs": 6,
                "preemption_mode": "swap",
                "num_host_blocks": 64,
                "enable_chunked_prefill": False,
                "max_num_batched_tokens": 512,
            },
            SyntheticSpec(
                num_requests=20,
                rate=60.0,
                system_prompt_tokens=32,
                max_len=160,
                dataset="alpaca",
                seed=2,
            ),
        ),
    ],
)
def test_simulated_replay_equals_engine_under_the_same_step_times(lm, options, spec):
    trace = generate(spec)
    cfg = EngineConfig(block_size=8, **options)
    reqs = trace_requests(
        trace, block_size=8, vocab_size=lm.model.config.vocab_size, max_model_len=512
    )

    real_clock = SimClock()
    real = LLMEngine(lm, cfg, clock=real_clock)
    real.executor = CostClockExecutor(real.executor, real_clock)
    real_run = serve_trace(real, reqs, wait_until=real_clock.wait_until)
    real.check_integrity()

    sim_clock = SimClock()
    sim = simulated_engine(cfg, COST, max_model_len=real.max_model_len, clock=sim_clock)
    sim_run = serve_trace(sim, reqs, wait_until=sim_clock.wait_until)
    sim.check_integrity()

    got, want = summarize(sim_run), summarize(real_run)
    assert set(SUMMARY_FIELDS) == set(want)
    assert want["requests"] == len(reqs)
    assert want["preemptions"] > 0 or options.get("preemption_mode") == "swap"
    assert want["prefix_hit_rate"] > 0
    assert got == pytest.approx(want, rel=1e-12)
    assert real.scheduler.num_preemptions == sim.scheduler.num_preemptions
    assert real.manager.stats() == sim.manager.stats()  # hits, evictions, blocks: all equal
