"""The FastAPI application: OpenAI routes, health, Prometheus metrics, OpenAI-format errors.

Every error leaves as ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for
the client's mistakes (400 malformed body or values, 404 unknown model or route, 503 when the
waiting queue is over ``max_waiting``) and 500 only for a failure inside the engine, without a
traceback.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedkv.engine import AsyncLLMEngine, EngineDeadError
from pagedkv.errors import PagedKVError
from pagedkv.server import serving
from pagedkv.server.metrics import ServerMetrics
from pagedkv.server.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("pagedkv.server")

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
    500: "server_error",
}


def error_response(
    status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "invalid_request_error"),
            "param": param,
            "code": status,
        }
    }
    return JSONResponse(body, status_code=status, headers=headers)


class ModelNotFoundError(PagedKVError):
    pass


class OverloadedError(PagedKVError):
    pass


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    if not errors:
        return "invalid request body", None
    first = errors[0]
    if first.get("type") == "json_invalid":  # loc is ("body", character position)
        detail = (first.get("ctx") or {}).get("error", "JSON decode error")
        return f"invalid JSON body: {detail} at position {first['loc'][-1]}", None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    where = ".".join(loc) or "body"
    return f"{where}: {first.get('msg', 'invalid value')}", where


def create_app(engine: AsyncLLMEngine, *, model_name: str, max_waiting: int = 256) -> FastAPI:
    """The application for one engine; ``model_name`` is the id clients must send."""
    metrics = ServerMetrics(engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        log.info("shutting down: aborting %d requests", len(engine.engine.requests))
        engine.shutdown()

    app = FastAPI(title="pagedkv", lifespan=lifespan)
    app.state.engine = engine
    app.state.metrics = metrics

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(PagedKVError)
    async def on_pagedkv(_: Request, exc: PagedKVError) -> JSONResponse:
        if isinstance(exc, ModelNotFoundError):
            return error_response(404, str(exc), "model")
        if isinstance(exc, OverloadedError):
            return error_response(503, str(exc), headers={"Retry-After": "1"})
        if isinstance(exc, EngineDeadError):  # not the client's fault: the server is down
            return error_response(503, str(exc))
        if isinstance(exc, serving.EngineFailureError):
            return error_response(500, str(exc))
        return error_response(400, str(exc))

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")

    def admit(body: CompletionRequest | ChatCompletionRequest) -> serving.Job:
        if body.model != model_name:
            raise ModelNotFoundError(
                f"model {body.model!r} does not exist; this server serves {model_name!r}"
            )
        waiting = engine.num_waiting
        if waiting >= max_waiting:
            raise OverloadedError(
                f"server overloaded: {waiting} requests waiting (limit {max_waiting}); retry later"
            )
        return serving.submit(engine, body, model_name)

    async def answer(job: serving.Job, stream: bool) -> Response:
        if stream:
            return StreamingResponse(
                serving.stream_events(job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        return JSONResponse(await serving.collect(job))

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        return await answer(admit(body), body.stream)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest) -> Response:
        return await answer(admit(body), body.stream)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": int(time.time()),
                    "owned_by": "pagedkv",
                    "max_model_len": engine.engine.max_model_len,
                }
            ],
        }

    @app.get("/health")
    async def health() -> Response:
        if not engine.is_running:
            return error_response(503, "engine loop is not running")
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    def prometheus() -> Response:  # sync: FastAPI runs it in a thread, the event loop never waits
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
