"""Serve a trace through an engine by arrival time, simulated or real, and summarise it with
one set of field names.

The same loop drives both: requests join the engine when the clock reaches their arrival time,
the engine steps while it has work, and when it is idle the clock waits for the next arrival.
With :func:`~pagedkv.simulator.sim_executor.simulated_engine` the clock is a
:class:`~pagedkv.simulator.sim_executor.SimClock` moved by the cost model (``pagedkv simulate``
serving); with ``LLMEngine`` it is the wall clock (``pagedkv replay``). Both summaries carry
the same fields, so their difference is the simulator's error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pagedkv.engine.engine_core import EngineCore
from pagedkv.engine.outputs import RequestOutput
from pagedkv.engine.scheduler_output import StepRecord
from pagedkv.simulator.trace_prompts import TraceRequest

#: fields every replay summary has (simulated and real), in print order
SUMMARY_FIELDS = (
    "requests",
    "duration_s",
    "throughput_tok_s",
    "throughput_req_s",
    "ttft_ms_p50",
    "ttft_ms_p99",
    "tpot_ms_p50",
    "tpot_ms_p99",
    "e2e_ms_p50",
    "e2e_ms_p99",
    "preemptions",
    "prefix_hit_rate",
    "steps",
    "mean_batch",
)


@dataclass
class ReplayRun:
    """Per-request outcomes of one replay (times in seconds since the first arrival)."""

    arrival: list[float] = field(default_factory=list)
    first_token: list[float] = field(default_factory=list)
    finish: list[float] = field(default_factory=list)
    output_tokens: list[int] = field(default_factory=list)
    prompt_tokens: list[int] = field(default_factory=list)
    cached_tokens: list[int] = field(default_factory=list)
    preemptions: int = 0
    steps: int = 0
    batch_sizes: list[int] = field(default_factory=list)
    step_records: list[StepRecord] = field(default_factory=list)  # shape and duration

    def record(self, out: RequestOutput, t0: float) -> None:
        m = out.metrics
        self.arrival.append(m.arrival_time - t0)
        self.first_token.append((m.first_token_time or math.nan) - t0)
        self.finish.append((m.finished_time or math.nan) - t0)
        self.output_tokens.append(len(out.outputs[0].token_ids))
        self.prompt_tokens.append(len(out.prompt_token_ids))
        self.cached_tokens.append(m.num_cached_tokens)
        self.preemptions += m.num_preemptions


def serve_trace(
    engine: EngineCore,
    requests: Sequence[TraceRequest],
    *,
    wait_until: Callable[[float], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    on_step: Callable[[], None] | None = None,
) -> ReplayRun:
    """Run ``requests`` through ``engine`` at their arrival times on the engine's clock.
    ``wait_until(t)``: how to idle until clock time ``t`` (default: sleep, for a wall clock; a
    :class:`SimClock` passes its own ``wait_until``); ``on_step()``: called after every step
    that ran (a timeline of the manager's state reads it there)."""
    clock = engine.clock
    wait = wait_until if wait_until is not None else _sleep_until(clock)
    run = ReplayRun()
    t0 = clock()
    i, n, done = 0, len(requests), 0
    while i < n or engine.has_unfinished_requests():
        now = clock()
        while i < n and t0 + requests[i].arrival_s <= now:
            q = requests[i]
            engine.add_request(
                q.request_id,
                {"prompt_token_ids": q.prompt_token_ids},
                q.params,
                arrival_time=t0 + q.arrival_s,
            )
            i += 1
        if engine.has_unfinished_requests():
            outs = engine.step()
            if engine.last_step is not None:
                run.steps += 1
                run.batch_sizes.append(len(engine.last_step.shapes))
                run.step_records.append(engine.last_step)
                if on_step is not None:
                    on_step()
            for out in outs:
                if out.finished:
                    run.record(out, t0)
                    done += 1
                    if progress is not None:
                        progress(done, n)
        elif i < n:
            wait(t0 + requests[i].arrival_s)
    return run


def _sleep_until(clock: Callable[[], float]) -> Callable[[float], None]:
    def wait(t: float) -> None:
        delay = t - clock()
        if delay > 0:
            time.sleep(delay)

    return wait


def _pct(x: np.ndarray, q: float) -> float:
    x = x[~np.isnan(x)]
    return float(np.percentile(x, q)) if len(x) else math.nan


def summarize(run: ReplayRun) -> dict[str, Any]:
    """The replay's figures under :data:`SUMMARY_FIELDS` (latencies in ms)."""
    arrival, first = np.array(run.arrival), np.array(run.first_token)
    finish, outs = np.array(run.finish), np.array(run.output_tokens, dtype=np.float64)
    ttft = (first - arrival) * 1e3
    multi = outs > 1
    tpot = (finish - first)[multi] / (outs[multi] - 1) * 1e3
    e2e = (finish - arrival) * 1e3
    duration = float(np.nanmax(finish) - np.nanmin(arrival)) if len(finish) else 0.0
    prompt = float(sum(run.prompt_tokens))
    return {
        "requests": len(run.finish),
        "duration_s": duration,
        "throughput_tok_s": float(outs.sum()) / duration if duration else 0.0,
        "throughput_req_s": len(run.finish) / duration if duration else 0.0,
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p99": _pct(ttft, 99),
        "tpot_ms_p50": _pct(tpot, 50),
        "tpot_ms_p99": _pct(tpot, 99),
        "e2e_ms_p50": _pct(e2e, 50),
        "e2e_ms_p99": _pct(e2e, 99),
        "preemptions": run.preemptions,
        "prefix_hit_rate": sum(run.cached_tokens) / prompt if prompt else 0.0,
        "steps": run.steps,
        "mean_batch": float(np.mean(run.batch_sizes)) if run.batch_sizes else 0.0,
    }
