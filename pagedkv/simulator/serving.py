"""Serving replay: continuous batching over simulated time, against a pluggable KV memory backend.

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

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.costmodel import LinearCostModel
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

    max_num_seqs: int = 256
    max_batched_tokens: int = 8192
    chunked_prefill: bool = False

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
    cost = cost or LinearCostModel()
    limits = limits or SchedulerLimits()
    chunked = limits.chunked_prefill
    reqs = sorted(range(len(trace)), key=lambda i: trace.requests[i].arrival_ms)
    arrival = np.array([r.arrival_ms for r in trace.requests], dtype=np.float64)
    inp = [r.input_len for r in trace.requests]
    out = [max(1, r.output_len) for r in trace.requests]
    n = len(inp)
    gen = [0] * n
    first_sched = np.full(n, np.nan)
    first_tok = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    pending = deque(reqs)
    waiting: deque[int] = deque()
    running: list[int] = []  # decoding (prefill done)
    prefilling: list[int] = []  # admitted, prompt partly computed (chunked prefill only), FCFS
    todo = [0] * n  # prompt tokens a prefilling request still has to compute
    rejected = preemptions = done = 0
    steps = hit_tokens = prefill_total = 0
    tl_t: list[float] = []
    tl_alloc: list[int] = []
    tl_tokens: list[int] = []
    tl_run: list[int] = []
    tl_wait: list[int] = []
    kv = [0] * n  # tokens of KV written (cached hit + computed)
    now = float(arrival[reqs[0]]) if n else 0.0
    while pending or waiting or running or prefilling:
        if not waiting and not running and not prefilling and pending:
            now = max(now, float(arrival[pending[0]]))
        while pending and arrival[pending[0]] <= now:
            waiting.append(pending.popleft())
        # 1. decode growth for running sequences; preempt newest (recompute) when memory is
        # short, partly prefilled prompts included
        victims: list[int] = backend.grow(running, prefilling) if running else []
        if victims:
            gone = set(victims)
            running = [r for r in running if r not in gone]
            prefilling = [r for r in prefilling if r not in gone]
            preemptions += len(victims)
            for v in sorted(victims, key=lambda v: -arrival[v]):  # oldest ends up first
                kv[v] = todo[v] = 0
                waiting.appendleft(v)
        # 2. prefill work: chunks of prompts in progress, then admission (FCFS, head-of-line
        # blocking; none in a step that preempted, like vLLM v0)
        budget = limits.max_batched_tokens - (len(running) if chunked else 0)
        chunks: list[tuple[int, int]] = []  # (request, prompt tokens computed this step)
        for rid in prefilling:
            if budget <= 0:
                break
            chunks.append((rid, min(todo[rid], budget)))
            budget -= chunks[-1][1]
        admitted: list[int] = []
        while (not victims and waiting and (budget > 0 or not chunked)
               and len(running) + len(prefilling) + len(admitted) < limits.max_num_seqs):
            rid = waiting[0]
            ntok = inp[rid] + gen[rid]
            if not chunked and admitted and ntok > budget:
                break
            if not backend.fits_ever(rid, ntok):
                waiting.popleft()
                rejected += 1
                continue
            hit = backend.admit(rid, ntok)
            if hit is None:
                break
            waiting.popleft()
            admitted.append(rid)
            hit_tokens += hit
            kv[rid] = hit
            todo[rid] = ntok - hit
            chunks.append((rid, min(todo[rid], budget) if chunked else todo[rid]))
            budget -= chunks[-1][1] if chunked else ntok
            if np.isnan(first_sched[rid]):
                first_sched[rid] = now
        decoding = running
        if not chunks and not decoding:
            if victims:  # everything was preempted: memory is free again, admit next step
                continue
            if pending:
                now = max(now, float(arrival[pending[0]]))
                continue
            if waiting:  # nothing runs and the head cannot be admitted: it never will be
                waiting.popleft()
                rejected += 1
            continue
        prefill = sum(c for _, c in chunks)
        now += cost.step_ms(prefill, len(decoding))
        prefill_total += prefill
        steps += 1
        backend.commit([(rid, kv[rid] + 1) for rid in decoding]
                       + [(rid, kv[rid] + c) for rid, c in chunks])
        still: list[int] = []
        for rid in decoding:
            kv[rid] += 1
            gen[rid] += 1
            if gen[rid] >= out[rid]:
                finish[rid] = now
                backend.free(rid)
                done += 1
            else:
                still.append(rid)
        for rid, c in chunks:
            todo[rid] -= c
            kv[rid] += c
            if todo[rid]:
                continue
            gen[rid] += 1  # the prompt's last chunk yields the first output token
            if np.isnan(first_tok[rid]):
                first_tok[rid] = now
            if gen[rid] >= out[rid]:
                finish[rid] = now
                backend.free(rid)
                done += 1
            else:
                still.append(rid)
        running = still
        prefilling = [r for r in prefilling + admitted if todo[r]]
        tl_t.append(now)
        tl_alloc.append(backend.allocated_tokens())
        tl_tokens.append(sum(kv[r] for r in running) + sum(kv[r] for r in prefilling)
                         - backend.shared_tokens())
        tl_run.append(len(running) + len(prefilling))
        tl_wait.append(len(waiting))
        if progress is not None and steps % 256 == 0:
            progress(done + rejected, n)
    if progress is not None:
        progress(n, n)
    return _summarize(
        backend, arrival, first_sched, first_tok, finish, out, steps, preemptions, rejected,
        hit_tokens, prefill_total,
        {"t_ms": np.array(tl_t), "allocated_tokens": np.array(tl_alloc),
         "token_states": np.array(tl_tokens), "running": np.array(tl_run),
         "waiting": np.array(tl_wait)},
    )


def _summarize(
    backend: MemoryBackend, arrival: np.ndarray, first_sched: np.ndarray, first_tok: np.ndarray,
    finish: np.ndarray, out: list[int], steps: int, preemptions: int, rejected: int,
    hit_tokens: int, prefill_tokens: int, timeline: dict[str, np.ndarray],
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
        "requests_finished": int(ok.sum()),
        "requests_rejected": rejected,
        "steps": steps,
        "preemptions": preemptions,
        "makespan_s": span_s,
        "throughput_req_s": float(ok.sum()) / span_s if span_s else 0.0,
        "throughput_out_tok_s": float(outs[ok].sum()) / span_s if span_s else 0.0,
        "mean_batch": float(timeline["running"].mean()) if steps else 0.0,
        "kv_utilization": alloc_area / (float(dt.sum()) * backend.capacity_tokens)
        if steps else 0.0,
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
