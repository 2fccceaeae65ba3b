"""A trace's requests as token prompts an engine can run, the same for the simulated engine and
the real one.

Traces give lengths, arrival times and (Mooncake) chained block hash ids, not text. Each prompt
block becomes ``block_size`` token ids drawn from the block's chained key
(:func:`~pagedkv.simulator.blocks.build_block_stream`), so two prompts share exactly the full
blocks the trace says they share, and the engine's own hashing finds those prefix hits. Every
request samples ``output_len`` tokens (EOS ignored) with a seed of its own: no two requests
produce the same output blocks, in the model or in the simulation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.trace import Trace

#: token ids below this are left out of prompts (special tokens sit there in most vocabularies;
#: a vocabulary under twice this size keeps its upper half)
FIRST_TOKEN_ID = 256


@dataclass(frozen=True)
class TraceRequest:
    """One request of a replay: arrives ``arrival_s`` after the first one."""

    request_id: str
    arrival_s: float
    prompt_token_ids: list[int]
    params: SamplingParams


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser over uint64 ``[n]`` (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) * np.uint64(1)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        out: np.ndarray = x ^ (x >> np.uint64(31))
        return out


def trace_requests(
    trace: Trace,
    *,
    block_size: int,
    vocab_size: int,
    arrival_scale: float = 1.0,
    max_model_len: int | None = None,
) -> list[TraceRequest]:
    """``trace`` as engine requests, by arrival time. ``arrival_scale`` divides the
    inter-arrival times (2 = twice the rate). A request longer than ``max_model_len`` (prompt
    plus output) is refused with its numbers: trim the trace (``--max-len``) instead."""
    if vocab_size < 2:
        raise InvalidArgumentError(f"vocab_size: expected >= 2, got {vocab_size}")
    if not arrival_scale > 0:
        raise InvalidArgumentError(f"arrival_scale: expected > 0, got {arrival_scale}")
    stream = build_block_stream(trace, block_size)
    lo = min(FIRST_TOKEN_ID, vocab_size // 2)
    span = np.uint64(vocab_size - lo)
    offsets = np.arange(block_size, dtype=np.uint64)
    t0 = min(r.arrival_ms for r in trace.requests)
    out: list[TraceRequest] = []
    for i, r in enumerate(trace.requests):
        if max_model_len is not None and r.input_len + max(1, r.output_len) > max_model_len:
            raise InvalidArgumentError(
                f"trace request {i}: {r.input_len} prompt + {r.output_len} output tokens exceed "
                f"max_model_len ({max_model_len})"
            )
        keys = stream.request_keys(i).astype(np.uint64)
        ids = _mix(keys[:, None] * np.uint64(block_size) + offsets[None, :]) % span
        prompt = (ids.reshape(-1)[: r.input_len] + np.uint64(lo)).tolist()
        params = SamplingParams(
            max_tokens=max(1, r.output_len), ignore_eos=True, temperature=1.0, seed=i
        )
        out.append(TraceRequest(f"t{i}", (r.arrival_ms - t0) / 1e3 / arrival_scale, prompt, params))
    out.sort(key=lambda q: q.arrival_s)
    return out
