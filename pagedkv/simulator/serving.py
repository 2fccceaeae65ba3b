"""The baselines' serving replay: continuous batching over simulated time, against a pluggable
KV memory backend (``pagedkv simulate --mode baselines``).

Why a scheduler of its own: the baselines compare memory models, and a contiguous reservation
(one chunk per request, sized at admission) cannot run through the engine, whose scheduler
plans over the paged :class:`~pagedkv.core.BlockManager`. ``--mode serve`` runs the engine's own
scheduler instead (:mod:`~pagedkv.simulator.engine_serve`); the baselines take the same knob
values (sequences, token budget, chunked prefill, watermark, memory) but preempt by recompute
only, and their rows use the serve mode's field names where the two measure the same thing.

The scheduler is the simplified vLLM (v0) loop that produced the paper's results: requests wait
FCFS; each step admits waiting requests while the memory backend can hold their prompts (and the
batch limits allow), runs their prefill together with one decode token for every running
sequence, and charges the step a time from the cost model. With ``chunked_prefill`` prompts are
instead computed in chunks that share each step's token budget with decode (vLLM v1, SGLang);
memory for the whole prompt is still taken at admission. When decode growth finds no free
memory, the *newest* running sequence is preempted by recompute and re-queued at the front; on
readmission its prompt plus already generated tokens are prefilled again. The same loop drives
the paged backend (the real :class:`~pagedkv.core.BlockManager`) and the contiguous baselines, so
their numbers differ only by how memory is reserved.

Token accounting: prefill of ``n`` tokens leaves ``n`` tokens of KV and produces one output
token; every decode step appends one token of KV and produces one more. A request with output
length ``o`` (at least 1) therefore ends with ``input + o - 1`` tokens of KV.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.serving_scheduler import ReplayScheduler
from pagedkv.simulator.trace import Trace


class MemoryBackend(Protocol):
    """What the scheduler needs from a KV memory manager (paged or contiguous)."""

    name: str
    capacity_tokens: int

    def fits_ever(self, rid: int, num_tokens: int) -> bool:
        """Could this prompt be admitted into an otherwise empty memory?"""

    def admit(self, rid: int, num_tokens: int) -> int | None:
        """Allocate KV for a prompt of ``num_tokens``; return cached (hit) tokens, or ``None``
        (and change nothing) when memory is short."""

    def grow(self, running: list[int], idle: Sequence[int] = ()) -> list[int]:
        """Append one token of KV to every ``running`` sequence, first preempting (by recompute,
        newest first, among ``running`` and the admitted but ``idle`` ones: partly prefilled
        prompts) as many as memory requires; return the preempted ids (already freed)."""

    def commit(self, computed: Sequence[tuple[int, int]]) -> None:
        """The step just run wrote KV for the first ``n`` tokens of each ``(rid, n)``: only
        now may other requests reuse them (called after every step, before finished requests
        are freed)."""

    def free(self, rid: int) -> None: ...

    def allocated_tokens(self) -> int:
        """KV memory currently held by running sequences, in token slots."""

    def shared_tokens(self) -> int:
        """Token states counted more than once by the running sequences because they share
        the memory holding them (prefix caching): subtracted so that token states never
        exceed the allocated memory."""


@dataclass
class SchedulerLimits:
    """Batch limits of one step.

    Without chunked prefill (vLLM v0's default), ``max_batched_tokens`` caps the prompt tokens
    admitted per step (one longer prompt may run alone) and decode tokens do not count. With
    ``chunked_prefill`` (vLLM v1 / SGLang) it is the whole step's token budget: decode tokens
    first, then chunks of prompts already being prefilled, then new prompts, whose prefill may
    start with a partial chunk; a request's first token comes at the end of its last chunk.
    """

    max_num_seqs: int = 64  # the engine's defaults (EngineConfig), as the CLI passes them
    max_batched_tokens: int = 2048
    chunked_prefill: bool = True

    def __post_init__(self) -> None:
        if self.max_num_seqs <= 0 or self.max_batched_tokens <= 0:
            raise InvalidArgumentError(
                f"scheduler limits must be positive: max_num_seqs={self.max_num_seqs}, "
                f"max_batched_tokens={self.max_batched_tokens}"
            )


@dataclass
class ServingResult:
    backend: str
    summary: dict[str, Any]
    timeline: dict[str, np.ndarray] = field(repr=False)
    ttft_ms: np.ndarray = field(repr=False)
    tpot_ms: np.ndarray = field(repr=False)


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if len(x) else float("nan")


def replay(
    trace: Trace,
    backend: MemoryBackend,
    cost: LinearCostModel | None = None,
    limits: SchedulerLimits | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ServingResult:
    """Replay ``trace`` by arrival time through ``backend``; return latency/memory metrics."""
    s = ReplayScheduler(trace, backend, cost or LinearCostModel(), limits or SchedulerLimits())
    s.run(progress)
    return _summarize(
        backend,
        s.arrival,
        s.first_sched,
        s.first_tok,
        s.finish,
        s.out,
        s.steps,
        s.preemptions,
        s.rejected,
        s.hit_tokens,
        s.prefill_total,
        s.timeline_arrays(),
    )


def _summarize(
    backend: MemoryBackend,
    arrival: np.ndarray,
    first_sched: np.ndarray,
    first_tok: np.ndarray,
    finish: np.ndarray,
    out: list[int],
    steps: int,
    preemptions: int,
    rejected: int,
    hit_tokens: int,
    prefill_tokens: int,
    timeline: dict[str, np.ndarray],
) -> ServingResult:
    ok = ~np.isnan(finish)
    outs = np.array(out, dtype=np.float64)
    ttft = (first_tok - arrival)[ok]
    multi = ok & (outs > 1)
    tpot = ((finish - first_tok)[multi]) / (outs[multi] - 1)
    queue = (first_sched - arrival)[ok]
    t = timeline["t_ms"]
    dt = np.diff(np.concatenate([[float(np.nanmin(arrival)) if len(arrival) else 0.0], t]))
    alloc = timeline["allocated_tokens"].astype(np.float64)
    tokens = timeline["token_states"].astype(np.float64)
    span_s = (float(np.nanmax(finish[ok])) - float(np.nanmin(arrival))) / 1e3 if ok.any() else 0.0
    alloc_area = float((alloc * dt).sum())
    summary: dict[str, float | int | str] = {
        "backend": backend.name,
        "capacity_tokens": backend.capacity_tokens,
        "requests": int(ok.sum()),
        "requests_rejected": rejected,
        "steps": steps,
        "preemptions": preemptions,
        "duration_s": span_s,
        "throughput_req_s": float(ok.sum()) / span_s if span_s else 0.0,
        "throughput_tok_s": float(outs[ok].sum()) / span_s if span_s else 0.0,
        "mean_batch": float(timeline["running"].mean()) if steps else 0.0,
        "kv_utilization": alloc_area / (float(dt.sum()) * backend.capacity_tokens)
        if steps
        else 0.0,
        "token_state_fraction": float((tokens * dt).sum()) / alloc_area if alloc_area else 0.0,
        "prefix_hit_tokens": hit_tokens,
        "prefill_tokens": prefill_tokens,
        "queue_ms_mean": float(queue.mean()) if len(queue) else float("nan"),
        "queue_ms_p99": _pct(queue, 99),
        "ttft_ms_p50": _pct(ttft, 50),
        "ttft_ms_p90": _pct(ttft, 90),
        "ttft_ms_p99": _pct(ttft, 99),
        "tpot_ms_p50": _pct(tpot, 50),
        "tpot_ms_p90": _pct(tpot, 90),
        "tpot_ms_p99": _pct(tpot, 99),
    }
    return ServingResult(backend.name, summary, timeline, ttft, tpot)
