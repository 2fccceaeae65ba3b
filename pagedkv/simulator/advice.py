"""Say when a simulated serving system is overloaded, and what would fit.

A replay whose arrivals outpace service still ends (the trace is finite), with latencies that
only measure how long the queue grew: a median TTFT of hours describes the trace's length, not
the system. A backend is **overloaded** when both

* its median TTFT is at least ``OVERLOAD_FACTOR`` times what a median-length prompt takes alone
  (one prefill step of the cost model) and at least ``OVERLOAD_MIN_MS``: most requests spend
  their time queueing; and
* the queue had not drained when arrivals stopped: the last request finishes more than
  ``DRAIN_FRACTION`` of the arrival span after the last arrival (service slower than arrivals).

The advice names the rate the backend did sustain (with some headroom) and whether more KV
memory would help: admission is limited by free memory unless the batch is already at
``--max-num-seqs``.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from typing import Any

from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.report import format_ms
from pagedkv.simulator.trace import Trace

OVERLOAD_FACTOR = 10.0
OVERLOAD_MIN_MS = 1000.0
DRAIN_FRACTION = 0.05
#: the batch limit, not memory, bounds admission when the mean batch reaches this share of it
SEQ_BOUND = 0.9
#: suggested rate as a fraction of the rate the backend sustained (headroom against queueing)
HEADROOM = 0.8


def alone_ttft_ms(trace: Trace, cost: LinearCostModel) -> float:
    """TTFT of a median-length prompt served alone: one prefill step, no queue, no cache."""
    median = int(statistics.median(r.input_len for r in trace.requests)) if len(trace) else 0
    return cost.step_ms_for([(0, median)]) if median > 0 else cost.step_ms(0, 0)


def _arrival_span_s(trace: Trace, scale: float) -> float:
    return (trace.requests[-1].arrival_ms - trace.requests[0].arrival_ms) / 1e3 / scale


def is_overloaded(row: Mapping[str, Any], alone_ms: float, span_s: float) -> bool:
    ttft = float(row.get("ttft_ms_p50", float("nan")))
    drain_s = float(row.get("duration_s", 0.0)) - span_s
    queued = ttft >= max(OVERLOAD_MIN_MS, OVERLOAD_FACTOR * alone_ms)  # NaN compares False
    return queued and drain_s > DRAIN_FRACTION * span_s


def _rate_hint(trace: Trace, offered: float, target: float, scale: float) -> str:
    spec = trace.meta.get("spec")
    if isinstance(spec, dict) and "rate" in spec:  # synthetic: the rate is a flag
        return f"--rate {float(spec['rate']) * target / offered:.2g}"
    return f"--arrival-scale {scale * target / offered:.2g}"


def _memory_hint(row: Mapping[str, Any], max_num_seqs: int) -> str:
    batch = float(row.get("mean_batch", 0.0))
    if batch >= SEQ_BOUND * max_num_seqs:
        return (
            f"; more KV memory would not help (the batch is at --max-num-seqs "
            f"{max_num_seqs}), a faster step (--cost) or a larger --max-num-seqs would"
        )
    capacity = int(row.get("capacity_tokens", 0))
    return f", or more KV memory (mean batch {batch:.1f}; try --kv-tokens {2 * capacity})"


def overload_warning(
    row: Mapping[str, Any], trace: Trace, alone_ms: float, scale: float, max_num_seqs: int
) -> str:
    """One paragraph: what shows the overload, and what would fit."""
    span_s = _arrival_span_s(trace, scale)
    drain_s = float(row.get("duration_s", 0.0)) - span_s
    text = (
        f"{row.get('backend', '?')} is overloaded: median TTFT "
        f"{format_ms(row['ttft_ms_p50'])} ({format_ms(alone_ms)} for a median prompt alone)"
    )
    sustained = float(row.get("throughput_req_s", 0.0))
    if span_s > 0 and sustained > 0:
        offered = (len(trace) - 1) / span_s
        target = HEADROOM * sustained
        text += (
            f"; it serves {sustained:.3g} of {offered:.3g} requests/s offered and finishes "
            f"{format_ms(1e3 * drain_s)} after the last arrival. What would fit: about "
            f"{target:.3g} requests/s (e.g. {_rate_hint(trace, offered, target, scale)})"
        )
    else:
        text += "; every request arrives at once, so latency measures the batch's length"
    return text + _memory_hint(row, max_num_seqs) + "."


def serving_warnings(
    rows: list[dict[str, Any]],
    trace: Trace,
    cost: LinearCostModel,
    scale: float = 1.0,
    max_num_seqs: int = 64,
) -> list[str]:
    """Mark each serving row ``overloaded`` (True/False) and return a warning per overloaded
    row and per row that rejected requests."""
    if not len(trace):
        return []
    alone = alone_ttft_ms(trace, cost)
    span_s = _arrival_span_s(trace, scale)
    out = []
    for row in rows:
        row["overloaded"] = is_overloaded(row, alone, span_s)
        if row["overloaded"]:
            out.append(overload_warning(row, trace, alone, scale, max_num_seqs))
        out += rejected_warnings([row], trace)
    return out


def rejected_warnings(rows: list[dict[str, Any]], trace: Trace) -> list[str]:
    """A warning per row that rejected requests, with the numbers: an engine row refuses,
    before the replay, requests longer than one request may be (``max_request_tokens``: the
    model's length or the KV pool above the watermark); a baseline rejects prompts that never
    fit its memory."""
    out = []
    for row in rows:
        n = row.get("requests_rejected")
        if not n:
            continue
        if "max_request_tokens" in row:
            out.append(
                f"{row.get('backend')}: {n:,} requests of more than "
                f"{row['max_request_tokens']:,} tokens (prompt + output; the longest has "
                f"{row.get('longest_rejected_tokens', 0):,}) exceed what one request may have "
                f"(the smaller of --max-model-len and the {row.get('capacity_tokens', 0):,}-"
                f"token KV pool above the watermark) and were not replayed"
            )
        else:
            longest = max(r.input_len for r in trace.requests)
            out.append(
                f"{row.get('backend')}: {n:,} requests never fit "
                f"in {row.get('capacity_tokens', 0):,} KV tokens and were rejected "
                f"(longest prompt: {longest:,} tokens; see --kv-tokens)"
            )
    return out
