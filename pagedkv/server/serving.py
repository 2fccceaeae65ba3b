"""Serve one OpenAI completion or chat request: prepare, submit, then answer whole or stream.

:func:`prepare` does the CPU-heavy part (checks, the chat template, tokenising), which the app
runs in a worker thread: a megabyte prompt takes seconds to tokenise, and the event loop must
keep serving every other stream and ``/health`` meanwhile. :func:`submit` then queues the
token ids on the event loop. A request with several prompts and/or ``n`` samples becomes one
engine request per prompt (``n`` samples each, forked from one computed prompt).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pagedkv.engine import AsyncLLMEngine, LLMEngine, RequestOutput
from pagedkv.engine.llm import apply_chat_template
from pagedkv.errors import InvalidArgumentError, PagedKVError
from pagedkv.server.errors import RequestError, error_body, status_of
from pagedkv.server.protocol import ChatCompletionRequest, CompletionRequest
from pagedkv.server.responses import Job, choice_json, full_response, sse, usage

Body = CompletionRequest | ChatCompletionRequest
_COMPLETION_DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def prepare(engine: AsyncLLMEngine, body: Body) -> list[list[int]]:
    """Check ``body`` and return every prompt's token ids (thread-safe: reads only what never
    changes). Raises InvalidArgumentError for bad input."""
    tokenizer = engine.engine.tokenizer
    body.check_supported()
    body.check_text()
    if isinstance(body, ChatCompletionRequest):
        return [apply_chat_template(tokenizer, body.conversation(), body.add_generation_prompt)]
    prompts = body.prompts()
    if tokenizer is None and any(isinstance(p, str) for p in prompts):
        raise InvalidArgumentError("prompt: this model has no tokenizer; send token ids")
    return [
        [int(t) for t in tokenizer.encode(p)] if isinstance(p, str) else list(p) for p in prompts
    ]


def too_long(eng: LLMEngine, body: Body, prompt_len: int, max_tokens: int | None) -> RequestError:
    """The 400 for a request over the per-request limit, saying which limit and how to raise it
    (the KV pool's is raised at start-up)."""
    limit, model_len = eng.max_request_tokens, eng.max_model_len
    asked = (
        f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {prompt_len + max_tokens} "
        "tokens"
        if max_tokens is not None
        else f"the prompt ({prompt_len} tokens) leaves no room for an answer:"
    )
    why = (
        f"the KV pool holds at most {limit} tokens for one request (the model's max_model_len "
        f"is {model_len}); start the server with a larger --kv-cache-memory or --num-blocks"
        if limit < model_len
        else f"this server serves at most {limit} tokens per request (prompt + max_tokens), "
        "the model's max_model_len"
    )
    over = " exceed the limit:" if max_tokens is not None else ""
    param = "messages" if isinstance(body, ChatCompletionRequest) else "prompt"
    return RequestError(f"{asked}{over} {why}", param=param, code="context_length_exceeded")


def submit(engine: AsyncLLMEngine, body: Body, model_name: str, ids: list[list[int]]) -> Job:
    """Queue every prompt's ``ids`` (all or none: a refused prompt aborts the ones already
    queued); call on the event loop. Raises InvalidArgumentError for bad input."""
    eng = engine.engine
    if isinstance(body, ChatCompletionRequest):
        kind, prefix = "chat", "chatcmpl"
        asked, logprobs = body.requested_max_tokens, body.num_logprobs
    else:
        kind, prefix = "completion", "cmpl"
        asked, logprobs = body.max_tokens, body.logprobs
    job_id = f"{prefix}-{uuid.uuid4().hex}"
    job = Job(kind, job_id, model_name, [], body.n, logprobs, body.include_usage, eng.tokenizer)
    try:
        for i, toks in enumerate(ids):
            room = eng.max_request_tokens - len(toks)
            default = _COMPLETION_DEFAULT_MAX_TOKENS if kind == "completion" else room
            max_tokens = asked if asked is not None else default
            if max_tokens < 1 or max_tokens > room:
                raise too_long(eng, body, len(toks), asked)
            params = body.sampling_params(max_tokens, logprobs)
            job.streams.append(
                engine.submit(
                    toks, params, f"{job.id}-{i}", priority=body.priority, cache_salt=body.salt
                )
            )
    except Exception:
        for s in job.streams:
            s.abort()
        raise
    return job


async def merged(job: Job) -> AsyncIterator[tuple[int, RequestOutput]]:
    """``(prompt index, output)`` from all of the job's streams as they come. An error from a
    stream, or one :meth:`Job.interrupt` puts in, is raised; leaving early cancels the pumps,
    which aborts every unfinished engine request."""
    queue = job.events

    async def pump(i: int, stream: Any) -> None:
        try:
            async for out in stream:
                queue.put_nowait((i, out))
        except Exception as exc:
            queue.put_nowait(exc)
        queue.put_nowait(None)

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


async def collect(job: Job) -> dict[str, Any]:
    finals: dict[int, RequestOutput] = {}
    async for i, out in merged(job):
        if out.finished:
            finals[i] = out
    return full_response(job, [finals[i] for i in range(len(job.streams))])


def _error_event(exc: PagedKVError) -> str:
    return sse(error_body(status_of(exc), str(exc), None, None))


async def stream_events(job: Job) -> AsyncIterator[str]:
    """Server-sent events: one chunk per choice per engine output, an optional usage chunk,
    then ``[DONE]``. A failure mid-stream (the engine failed the request, the engine stopped,
    the server's shutdown deadline passed) is sent as an OpenAI error event, then ``[DONE]``."""
    try:
        async for chunk in _chunks(job):
            yield chunk
    except PagedKVError as exc:
        yield _error_event(exc)
    yield "data: [DONE]\n\n"


async def _chunks(job: Job) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if job.kind == "chat" else "text_completion"
    head = {"id": job.id, "object": obj, "created": job.created, "model": job.model}
    finals: dict[int, RequestOutput] = {}
    started: set[int] = set()
    done: set[int] = set()  # choices whose finish chunk was sent (a later output of the same
    # request, for another of its n samples, still carries this one's finish_reason)
    async for i, out in merged(job):
        if out.error:
            yield sse(error_body(500, f"the engine failed this request: {out.error}", None, None))
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
            yield sse(chunk)
        if out.finished:
            finals[i] = out
    if job.include_usage:
        yield sse(dict(head, choices=[], usage=usage([finals[i] for i in sorted(finals)])))
