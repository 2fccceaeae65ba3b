"""OpenAI-format errors: ``{"error": {"message", "type", "param", "code"}}`` and the handlers that
turn every failure into one.

The client's mistakes are 4xx (400 malformed body or values, 404 unknown model or route, 413 a
body over the size limit), an overloaded or stopping server 503, and a failure inside the engine
500, never with a traceback. ``param`` names the request field at fault: pagedkv's value errors
start with the field's name (``"temperature: expected ..."``), which is read back here when it is
a field of the request body. ``code`` is a string or null as OpenAI's (``"model_not_found"``,
``"context_length_exceeded"``), not the HTTP status.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from pagedkv.engine import EngineDeadError
from pagedkv.errors import InvalidArgumentError, PagedKVError
from pagedkv.server.protocol import ChatCompletionRequest, CompletionRequest

log = logging.getLogger("pagedkv.server")

_TYPES = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
    500: "server_error",
}
_FIELDS = frozenset(CompletionRequest.model_fields) | frozenset(ChatCompletionRequest.model_fields)
_PARAM = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?(?:\.[\w.\[\]]+)?: ")


class RequestError(InvalidArgumentError):
    """A request the server refuses, with OpenAI's ``param`` and ``code`` (HTTP ``status``)."""

    status = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.param = param
        self.code = code


class ModelNotFoundError(RequestError):
    status = 404


class UnavailableError(PagedKVError):
    """The server cannot take or finish the request now (overloaded, shutting down): 503."""

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class EngineFailureError(PagedKVError):
    """The engine failed a request after accepting it (not the client's fault: HTTP 500)."""


def error_body(status: int, message: str, param: str | None, code: str | None) -> dict[str, object]:
    kind = _TYPES.get(status, "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, code), status, headers=headers)


def param_of(message: str) -> str | None:
    """The request field a ``"<field>: ..."`` message names, if it is one (else None)."""
    m = _PARAM.match(message)
    return m.group(1) if m and m.group(1) in _FIELDS else None


def status_of(exc: PagedKVError) -> int:
    """The HTTP status of a pagedkv error raised while serving a request."""
    if isinstance(exc, RequestError):
        return exc.status
    if isinstance(exc, UnavailableError | EngineDeadError):  # not the client's fault
        return 503
    if isinstance(exc, EngineFailureError):
        return 500
    return 400


def pagedkv_error_response(exc: PagedKVError) -> JSONResponse:
    message = str(exc)
    param = exc.param if isinstance(exc, RequestError) and exc.param else param_of(message)
    code = exc.code if isinstance(exc, RequestError) else None
    retry = exc.retry_after if isinstance(exc, UnavailableError) else None
    headers = {"Retry-After": str(retry)} if retry is not None else None
    return error_response(status_of(exc), message, param, code, headers)


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


def install_error_handlers(app: FastAPI) -> None:
    """Every failure of ``app`` leaves as an OpenAI error body."""

    @app.exception_handler(RequestValidationError)
    async def on_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(400, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(PagedKVError)
    async def on_pagedkv(_: Request, exc: PagedKVError) -> JSONResponse:
        return pagedkv_error_response(exc)

    @app.exception_handler(Exception)
    async def on_bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(exc).__name__}")
