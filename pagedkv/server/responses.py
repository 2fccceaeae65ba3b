"""OpenAI response bodies of one job: choices, logprobs, usage, whole responses and stream chunks.

A :class:`Job` is one OpenAI request in flight: its engine streams (one per prompt) and what
formatting its answer needs. Choice ``i`` of prompt ``p`` is choice ``p * n + i``, as OpenAI
numbers them.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

from pagedkv.engine import CompletionOutput, RequestOutput
from pagedkv.engine.async_engine import RequestStream
from pagedkv.server.errors import EngineFailureError

FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "stop"}


@dataclass(eq=False)  # compared and hashed by identity (InFlight holds a set of jobs)
class Job:
    """One OpenAI request in flight: its engine streams, kind and formatting context.

    ``events`` carries the streams' outputs to :func:`pagedkv.server.serving.merged`;
    :meth:`interrupt` puts an exception there, which ends the job with that error (its engine
    requests are aborted). ``text_offsets`` is, per choice, the length of the token texts sent so
    far (completions' ``logprobs.text_offset`` continues from it in the next chunk)."""

    kind: str  # "completion" | "chat"
    id: str
    model: str
    streams: list[RequestStream]
    n: int
    num_logprobs: int | None
    include_usage: bool
    tokenizer: Any
    created: int = 0
    text_offsets: dict[int, int] = field(default_factory=dict)
    events: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = field(
        default_factory=asyncio.Queue
    )

    def __post_init__(self) -> None:
        self.created = int(time.time())

    def interrupt(self, exc: BaseException) -> None:
        """End the job with ``exc`` (call on its event loop)."""
        self.events.put_nowait(exc)


def usage(finals: list[RequestOutput]) -> dict[str, Any]:
    prompt = sum(len(o.prompt_token_ids) for o in finals)
    completion = sum(len(c.token_ids) for o in finals for c in o.outputs)
    cached = sum(o.num_cached_tokens for o in finals)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def _token_text(tokenizer: Any, token: int) -> str:
    return str(tokenizer.decode([token])) if tokenizer is not None else str(token)


def _chat_entry(tokenizer: Any, token: int, logprob: float) -> dict[str, Any]:
    s = _token_text(tokenizer, token)
    return {"token": s, "logprob": logprob, "bytes": list(s.encode())}


def _chat_logprobs(job: Job, entries: list[tuple[int, dict[int, float]]]) -> Any:
    content = []
    for t, top in entries:
        tops = sorted(top.items(), key=lambda kv: -kv[1])[: job.num_logprobs]
        entry = _chat_entry(job.tokenizer, t, top[t])
        entry["top_logprobs"] = [_chat_entry(job.tokenizer, k, v) for k, v in tops]
        content.append(entry)
    return {"content": content}


def logprobs_json(job: Job, index: int, c: CompletionOutput, tokens: list[int], first: int) -> Any:
    """OpenAI's logprobs object for ``tokens`` (positions ``first..``) of choice ``index``."""
    if job.num_logprobs is None or c.logprobs is None:
        return None
    entries = list(zip(tokens, c.logprobs[first : first + len(tokens)], strict=False))
    if job.kind == "chat":
        return _chat_logprobs(job, entries)
    texts = [_token_text(job.tokenizer, t) for t, _ in entries]
    start = job.text_offsets.get(index, 0) if first else 0
    offsets = list(itertools.accumulate((len(s) for s in texts), initial=start))
    job.text_offsets[index] = offsets[-1]
    return {
        "tokens": texts,
        "token_logprobs": [top[t] for t, top in entries],
        "top_logprobs": [
            {_token_text(job.tokenizer, k): v for k, v in top.items()} for _, top in entries
        ],
        "text_offset": offsets[:-1],  # where each token's text starts in the choice's text
    }


def choice_json(
    job: Job, index: int, c: CompletionOutput, *, delta: bool, first_chunk: bool = False
) -> dict[str, Any]:
    tokens = c.delta_token_ids if delta else c.token_ids
    first = len(c.token_ids) - len(tokens)
    text = c.delta_text if delta else c.text
    finish = FINISH.get(c.finish_reason or "") if c.finish_reason else None
    out: dict[str, Any] = {
        "index": index,
        "logprobs": logprobs_json(job, index, c, tokens, first),
        "finish_reason": finish,
    }
    if job.kind == "completion":
        out["text"] = text
    elif delta:
        out["delta"] = (
            {"role": "assistant", "content": text}
            if first_chunk
            else {"content": text}
            if text or not finish
            else {}
        )
    else:
        out["message"] = {"role": "assistant", "content": text}
    return out


def full_response(job: Job, finals: list[RequestOutput]) -> dict[str, Any]:
    errors = [o.error for o in finals if o.error]
    if errors:
        raise EngineFailureError(f"the engine failed this request: {errors[0]}")
    choices = [
        choice_json(job, p * job.n + c.index, c, delta=False)
        for p, o in enumerate(finals)
        for c in o.outputs
    ]
    obj = "chat.completion" if job.kind == "chat" else "text_completion"
    return {
        "id": job.id,
        "object": obj,
        "created": job.created,
        "model": job.model,
        "choices": choices,
        "usage": usage(finals),
    }


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"
