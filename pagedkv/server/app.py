"""The FastAPI application: OpenAI routes, health, Prometheus metrics, OpenAI-format errors.

The event loop only routes: a request's checks, chat template and tokenising run in a worker
thread (``serving.prepare``), ``/metrics`` reads a published snapshot, so one large prompt or a
long engine step never stalls other streams or ``/health``. Bodies over ``max_body_bytes`` are
refused with 413 before they are parsed. A non-streaming request whose client disconnects is
aborted in the engine, as a stream is. Errors: see ``errors.py``; shutdown: ``drain.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pagedkv.engine import AsyncLLMEngine
from pagedkv.errors import InvalidArgumentError
from pagedkv.server import serving
from pagedkv.server.body_limit import BodyLimit
from pagedkv.server.drain import InFlight
from pagedkv.server.errors import (
    ModelNotFoundError,
    RequestError,
    UnavailableError,
    error_response,
    install_error_handlers,
)
from pagedkv.server.metrics import ServerMetrics
from pagedkv.server.protocol import ChatCompletionRequest, CompletionRequest
from pagedkv.server.responses import Job

log = logging.getLogger("pagedkv.server")

DEFAULT_MAX_BODY_BYTES = 4 * 1024 * 1024


def check_model(body_model: str, model_name: str) -> None:
    if body_model != model_name:
        raise ModelNotFoundError(
            f"model {body_model!r} does not exist; this server serves {model_name!r}",
            param="model",
            code="model_not_found",
        )


def check_room(engine: AsyncLLMEngine, num_prompts: int, max_waiting: int) -> None:
    """Refuse a request whose prompts would take the waiting queue over ``max_waiting`` (503,
    retry later), or that could never fit it (400)."""
    if num_prompts > max_waiting:
        raise RequestError(
            f"prompt: {num_prompts} prompts in one request, but this server queues at most "
            f"{max_waiting} (--max-waiting); send them in smaller requests",
            param="prompt",
        )
    waiting = engine.num_waiting
    if waiting + num_prompts > max_waiting:
        raise UnavailableError(
            f"server overloaded: {waiting} prompts waiting, {num_prompts} more would pass the "
            f"limit {max_waiting}; retry later",
            retry_after=1,
        )


async def until_disconnected(request: Request) -> None:
    """Return when the client goes away (its body was read: what is left is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def answer_whole(request: Request, job: Job) -> Response:
    """The whole answer, or nothing if the client left first (its requests are aborted)."""
    work = asyncio.ensure_future(serving.collect(job))
    gone = asyncio.ensure_future(until_disconnected(request))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return JSONResponse(work.result())
        log.info("client disconnected: aborting %s", job.id)
        return Response(status_code=499)  # nobody reads it
    finally:
        for task in (work, gone):
            task.cancel()
        await asyncio.gather(work, gone, return_exceptions=True)


def create_app(
    engine: AsyncLLMEngine,
    *,
    model_name: str,
    max_waiting: int = 256,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> FastAPI:
    """The application for one engine; ``model_name`` is the id clients must send;
    ``max_waiting`` bounds the prompts waiting in the engine; ``max_body_bytes`` the body."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
        raise InvalidArgumentError(f"max_body_bytes: expected an int, got {max_body_bytes!r}")
    if max_body_bytes < 1:
        raise InvalidArgumentError(f"max_body_bytes: expected >= 1, got {max_body_bytes}")
    metrics = ServerMetrics(engine, model_name)
    in_flight = InFlight()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        log.info("shutting down: aborting %d requests", len(engine.engine.requests))
        engine.shutdown()

    app = FastAPI(title="pagedkv", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=max_body_bytes)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.in_flight = in_flight
    install_error_handlers(app)

    def model_card() -> dict[str, Any]:
        return {
            "id": model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "pagedkv",
            # what one request may use: the model's length, or the KV pool's if less
            "max_model_len": engine.engine.max_request_tokens,
        }

    async def answer(request: Request, body: CompletionRequest | ChatCompletionRequest) -> Response:
        check_model(body.model, model_name)
        ids = await asyncio.to_thread(serving.prepare, engine, body)
        check_room(engine, len(ids), max_waiting)  # then submit: no await in between
        job = serving.submit(engine, body, model_name, ids)
        if body.stream:
            return StreamingResponse(
                tracked_stream(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        with in_flight.track(job):
            return await answer_whole(request, job)

    async def tracked_stream(job: Job) -> AsyncIterator[str]:
        with in_flight.track(job):
            async for event in serving.stream_events(job):
                yield event

    @app.post("/v1/completions")
    async def completions(request: Request, body: CompletionRequest) -> Response:
        return await answer(request, body)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: ChatCompletionRequest) -> Response:
        return await answer(request, body)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict[str, Any]:
        check_model(model_id, model_name)
        return model_card()

    @app.get("/health")
    async def health() -> Response:
        if not engine.is_running:
            return error_response(503, "engine loop is not running")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def prometheus() -> Response:  # reads a published snapshot: never waits for a step
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
