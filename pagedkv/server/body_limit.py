"""A request body limit answered in OpenAI's error shape (413).

A body is refused before it is parsed: at once when its ``Content-Length`` is over the limit,
else (a chunked body) as soon as the bytes received pass it. Starlette's own limit answers in
plain text, which OpenAI clients cannot read as an error.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pagedkv.server.errors import error_body


def too_large_message(limit: int) -> str:
    return f"request body is over this server's limit of {limit} bytes"


class BodyLimit:
    """ASGI middleware: HTTP request bodies of at most ``limit`` bytes."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.limit:
            body = error_body(413, too_large_message(self.limit), None, None)
            await JSONResponse(body, 413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:  # FastAPI re-raises it from its body read
                    raise HTTPException(413, too_large_message(self.limit))
            return message

        await self.app(scope, counted, send)
