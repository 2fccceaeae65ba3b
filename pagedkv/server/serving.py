"""Serve one OpenAI completion or chat request: tokenise, submit, then answer whole or stream.

A request with several prompts and/or ``n`` samples becomes one engine request per prompt
(``n`` samples each, forked from one computed prompt); choice ``i`` of prompt ``p`` is choice
``p * n + i`` in the answer, as OpenAI numbers them.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pagedkv.engine import AsyncLLMEngine, CompletionOutput, RequestOutput
from pagedkv.engine.async_engine import RequestStream
from pagedkv.engine.llm import apply_chat_template
from pagedkv.errors import InvalidArgumentError, PagedKVError
from pagedkv.server.protocol import ChatCompletionRequest, CompletionRequest

FINISH = {"stop": "stop", "length": "length", "abort": "stop", "error": "stop"}


class EngineFailureError(PagedKVError):
    """The engine failed a request after accepting it (not the client's fault: HTTP 500)."""


@dataclass
class Job:
    """One OpenAI request in flight: its engine streams, kind and formatting context."""

    kind: str  # "completion" | "chat"
    id: str
    model: str
    streams: list[RequestStream]
    n: int
    num_logprobs: int | None
    include_usage: bool
    tokenizer: Any
    created: int = 0

    def __post_init__(self) -> None:
        self.created = int(time.time())


def submit(
    engine: AsyncLLMEngine, body: CompletionRequest | ChatCompletionRequest, model_name: str
) -> Job:
    """Tokenise and queue every prompt of ``body`` (all or none: a refused prompt aborts the
    ones already queued). Raises InvalidArgumentError for bad input."""
    eng = engine.engine
    body.check_supported()
    if isinstance(body, ChatCompletionRequest):
        kind, prefix = "chat", "chatcmpl"
        prompts: list[list[int] | str] = [
            apply_chat_template(eng.tokenizer, body.conversation(), body.add_generation_prompt)
        ]
        asked, logprobs = body.requested_max_tokens, body.num_logprobs
    else:
        kind, prefix = "completion", "cmpl"
        prompts, asked, logprobs = body.prompts(), body.max_tokens, body.logprobs
    ids = [eng.tokenizer.encode(p) if isinstance(p, str) else p for p in prompts]
    job = Job(
        kind,
        f"{prefix}-{uuid.uuid4().hex}",
        model_name,
        [],
        body.n,
        logprobs,
        body.include_usage,
        eng.tokenizer,
    )
    try:
        for i, toks in enumerate(ids):
            room = eng.max_request_tokens - len(toks)
            max_tokens = asked if asked is not None else (16 if kind == "completion" else room)
            if max_tokens < 1:
                raise InvalidArgumentError(
                    f"prompt has {len(toks)} tokens; this server serves at most "
                    f"{eng.max_request_tokens} tokens per request (prompt + max_tokens)"
                )
            params = body.sampling_params(max_tokens, logprobs)
            job.streams.append(
                engine.submit(
                    [int(t) for t in toks],
                    params,
                    f"{job.id}-{i}",
                    priority=body.priority,
                    cache_salt=body.salt,
                )
            )
    except Exception:
        for s in job.streams:
            s.abort()
        raise
    return job


async def merged(job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
    """``(prompt index, output)`` from all of the job's streams as they come. Leaving early
    cancels the pumps, which aborts every unfinished engine request."""
    queue: asyncio.Queue[tuple[int, RequestOutput] | BaseException | None] = asyncio.Queue()

    async def pump(i: int, stream: RequestStream) -> None:
        try:
            async for out in stream:
                await queue.put((i, out))
        except Exception as exc:
            await queue.put(exc)
        await queue.put(None)

    tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(job.streams)]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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


def logprobs_json(job: Job, c: CompletionOutput, tokens: list[int], first: int) -> Any:
    """OpenAI's logprobs object for ``tokens`` (positions ``first..``) of one choice."""
    if job.num_logprobs is None or c.logprobs is None:
        return None
    tok = job.tokenizer
    entries = list(zip(tokens, c.logprobs[first : first + len(tokens)], strict=False))
    if job.kind == "chat":
        content = []
        for t, top in entries:
            s = _token_text(tok, t)
            content.append(
                {
                    "token": s,
                    "logprob": top[t],
                    "bytes": list(s.encode()),
                    "top_logprobs": [
                        {
                            "token": _token_text(tok, k),
                            "logprob": v,
                            "bytes": list(_token_text(tok, k).encode()),
                        }
                        for k, v in sorted(top.items(), key=lambda kv: -kv[1])
                    ][: job.num_logprobs],
                }
            )
        return {"content": content}
    return {
        "tokens": [_token_text(tok, t) for t, _ in entries],
        "token_logprobs": [top[t] for t, top in entries],
        "top_logprobs": [{_token_text(tok, k): v for k, v in top.items()} for _, top in entries],
        "text_offset": [],
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
        "logprobs": logprobs_json(job, c, tokens, first),
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


async def collect(job: Job) -> dict[str, Any]:
    finals: dict[int, RequestOutput] = {}
    async for i, out in merged(job):
        if out.finished:
            finals[i] = out
    return full_response(job, [finals[i] for i in range(len(job.streams))])


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


async def stream_events(job: Job) -> AsyncIterator[str]:
    """Server-sent events: one chunk per choice per engine output, an optional usage chunk,
    then ``[DONE]``. An engine failure mid-stream is sent as an OpenAI error event."""
    obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
    head = {"id": job.id, "object": obj, "created": job.created, "model": job.model}
    finals: dict[int, RequestOutput] = {}
    started: set[int] = set()
    done: set[int] = set()  # choices whose finish chunk was sent (a later output of the same
    # request, for another of its n samples, still carries this one's finish_reason)
    async for i, out in merged(job):
        if out.error:
            yield _sse(
                {
                    "error": {
                        "message": f"the engine failed this request: {out.error}",
                        "type": "server_error",
                        "param": None,
                        "code": 500,
                    }
                }
            )
            return
        for c in out.outputs:
            index = i * job.n + c.index
            if index in done or not (c.delta_text or c.delta_token_ids or c.finish_reason):
                continue
            if c.finish_reason is not None:
                done.add(index)
            if (
                c.finish_reason is None
                and not c.delta_text
                and index in started
                and job.num_logprobs is None
            ):  # held-back text: keep its tokens' logprobs
                continue
            first = job.kind == "chat" and index not in started
            started.add(index)
            chunk = dict(head, choices=[choice_json(job, index, c, delta=True, first_chunk=first)])
            if job.include_usage:
                chunk["usage"] = None
            yield _sse(chunk)
        if out.finished:
            finals[i] = out
    if job.include_usage:
        yield _sse(dict(head, choices=[], usage=usage([finals[i] for i in sorted(finals)])))
    yield "data: [DONE]\n\n"
