"""Serving a trace through the engine's own scheduler: ``pagedkv simulate --mode serve`` (the
simulated executor) and the parts ``pagedkv replay`` (the real model) shares with it.

Both commands give the engine the same requests (:func:`~pagedkv.simulator.trace_prompts.
trace_requests`), refuse the same ones beforehand (:func:`admit_requests`: a request the engine
would refuse must not end the replay halfway, so it is counted and reported instead), record
the same per-step timeline of the block manager, and build their result row with one function
(:func:`serve_row`): the fields of :data:`~pagedkv.simulator.engine_replay.SUMMARY_FIELDS` plus
the pool, the rejections, queueing and KV utilisation. A simulated row and a real one therefore
compare field by field.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pagedkv.engine.config import EngineConfig
from pagedkv.engine.engine_core import EngineCore
from pagedkv.engine.outputs import RequestOutput
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_replay import ReplayRun, serve_trace, summarize
from pagedkv.simulator.sim_executor import SimClock, simulated_engine
from pagedkv.simulator.trace import Trace
from pagedkv.simulator.trace_prompts import TraceRequest, trace_requests

#: the per-step timeline's series (what ``--plot`` draws for an engine row)
TIMELINE = ("t_ms", "allocated_tokens", "running", "waiting")


def backend_name(config: EngineConfig, prefix: str = "sim") -> str:
    """The row's name: ``sim`` (simulated executor) or ``real`` (the model), then block size,
    prefix caching and swap."""
    name = f"{prefix}-bs{config.block_size}"
    name += "+prefix" if config.enable_prefix_caching else ""
    return name + ("+swap" if config.preemption_mode == "swap" else "")


@dataclass
class Admitted:
    """The requests an engine accepts, and how many (and how long) the refused ones were."""

    requests: list[TraceRequest]
    rejected: int = 0
    longest_rejected: int = 0  # prompt + output tokens of the longest refused request


def admit_requests(requests: Sequence[TraceRequest], max_request_tokens: int) -> Admitted:
    """Keep the requests whose prompt + output fit ``max_request_tokens`` (the engine's
    :attr:`~pagedkv.engine.engine_core.EngineCore.max_request_tokens`); the rest would be
    refused by ``add_request`` in the middle of the replay."""
    out = Admitted([])
    for q in requests:
        total = len(q.prompt_token_ids) + q.params.max_tokens
        if total > max_request_tokens:
            out.rejected += 1
            out.longest_rejected = max(out.longest_rejected, total)
        else:
            out.requests.append(q)
    return out


@dataclass
class StepTimeline:
    """After each step: time since the start (ms), KV blocks in use (as tokens), sequences
    running and waiting. ``record`` is ``serve_trace``'s ``on_step``."""

    engine: EngineCore
    t0: float = 0.0
    series: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in TIMELINE})

    def __post_init__(self) -> None:
        self.t0 = self.engine.clock()

    def record(self) -> None:
        s = self.engine.scheduler
        self.series["t_ms"].append(1e3 * (self.engine.clock() - self.t0))
        self.series["allocated_tokens"].append(
            self.engine.manager.num_used_blocks * self.engine.config.block_size
        )
        self.series["running"].append(len(s.running))
        self.series["waiting"].append(len(s.waiting) + len(s.swapped))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.series.items()}


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else math.nan


def run_engine(
    engine: EngineCore,
    requests: Sequence[TraceRequest],
    *,
    wait_until: Callable[[float], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Serve ``requests`` on ``engine`` (refusing beforehand what it cannot hold); return the
    result row without its name and the per-step timeline."""
    admitted = admit_requests(requests, engine.max_request_tokens)
    queue_ms: list[float] = []

    def finished(out: RequestOutput) -> None:
        if out.metrics.queue_time is not None:
            queue_ms.append(1e3 * out.metrics.queue_time)

    engine.on_finish = finished
    timeline = StepTimeline(engine)
    run = serve_trace(
        engine,
        admitted.requests,
        wait_until=wait_until,
        progress=progress,
        on_step=timeline.record,
    )
    engine.on_finish = None
    arrays = timeline.arrays()
    return serve_row(run, engine, admitted, np.asarray(queue_ms), arrays), arrays


def serve_row(
    run: ReplayRun,
    engine: EngineCore,
    admitted: Admitted,
    queue_ms: np.ndarray,
    timeline: dict[str, np.ndarray],
) -> dict[str, Any]:
    """One result row: the pool, the refused requests, :func:`summarize`'s fields, then
    queueing (arrival to first scheduled), prompt and cached tokens, and KV utilisation (blocks
    in use over the usable ones, averaged over the steps weighted by their duration: the time
    the engine computed)."""
    usable, bs = engine.num_usable_blocks, engine.config.block_size
    seconds = np.array([r.seconds for r in run.step_records], dtype=np.float64)
    used = np.asarray(timeline["allocated_tokens"], dtype=np.float64)
    busy = float(seconds.sum())
    row: dict[str, Any] = {
        "num_blocks": usable,
        "block_size": bs,
        "capacity_tokens": usable * bs,
        "max_request_tokens": engine.max_request_tokens,
        "requests_rejected": admitted.rejected,
        "longest_rejected_tokens": admitted.longest_rejected,
        **summarize(run),
        "queue_ms_mean": float(queue_ms.mean()) if len(queue_ms) else math.nan,
        "queue_ms_p99": _pct(queue_ms, 99),
        "prompt_tokens": int(sum(run.prompt_tokens)),
        "prefix_hit_tokens": int(sum(run.cached_tokens)),
        "kv_utilization": float((used * seconds).sum()) / (busy * usable * bs) if busy else 0.0,
    }
    return row


def engine_settings(engine: EngineCore) -> dict[str, Any]:
    """The configuration a run used, by :class:`EngineConfig`'s names (``num_blocks``: usable
    blocks; ``max_num_batched_tokens``: the budget in force), so another run can be given the
    same: ``pagedkv simulate --num-blocks N --max-num-batched-tokens B ...``."""
    c = engine.config
    return {
        "num_blocks": engine.num_usable_blocks,
        "block_size": c.block_size,
        "max_num_seqs": c.max_num_seqs,
        "max_num_batched_tokens": engine.scheduler.token_budget,
        "enable_chunked_prefill": c.enable_chunked_prefill,
        "watermark": c.watermark,
        "preemption_mode": c.preemption_mode,
        "num_host_blocks": c.num_host_blocks,
        "eviction_policy": c.eviction_policy,
        "enable_prefix_caching": c.enable_prefix_caching,
        "enable_partial_block_hits": c.enable_partial_block_hits,
        "max_model_len": engine.max_model_len,
    }


def simulate_serve(
    trace: Trace,
    config: EngineConfig,
    cost: LinearCostModel,
    *,
    max_model_len: int,
    arrival_scale: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """``trace`` through a :func:`simulated_engine` of ``config``: the result row (named by
    :func:`backend_name`), its timeline, and the engine settings used."""
    clock = SimClock()
    engine = simulated_engine(config, cost, max_model_len=max_model_len, clock=clock)
    requests = trace_requests(
        trace,
        block_size=config.block_size,
        vocab_size=engine.vocab_size,
        arrival_scale=arrival_scale,
    )
    row, timeline = run_engine(engine, requests, wait_until=clock.wait_until, progress=progress)
    return {"backend": backend_name(config), **row}, timeline, engine_settings(engine)
