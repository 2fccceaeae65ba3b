"""Graceful shutdown: in-flight requests get ``graceful_timeout`` seconds, then each ends cleanly.

uvicorn's own deadline cancels the request tasks: a stream is cut mid-body with no ``[DONE]``, a
non-streaming client gets a plain-text 500, and the log gets a ``CancelledError`` traceback per
request. So :class:`DrainingServer` starts our deadline when uvicorn's shutdown begins; when it
passes, :class:`InFlight` interrupts every job still running with :class:`ShuttingDownError`: a
stream sends an OpenAI error event and ``[DONE]``, a non-streaming request answers 503 in
OpenAI's shape, and the engine requests are aborted. uvicorn's deadline is set a few seconds
later, a backstop that then has nothing left to cancel.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from pagedkv.server.errors import UnavailableError
from pagedkv.server.responses import Job

log = logging.getLogger("pagedkv.server")

BACKSTOP_S = 5.0  # uvicorn cancels what is left this long after our deadline


class ShuttingDownError(UnavailableError):
    """The server is stopping and the request did not finish within the graceful timeout."""


class InFlight:
    """The jobs being answered; :meth:`expire_after` ends them all at a deadline."""

    def __init__(self) -> None:
        self.jobs: set[Job] = set()
        self.expired: ShuttingDownError | None = None

    @contextlib.contextmanager
    def track(self, job: Job) -> Iterator[Job]:
        """Hold ``job`` while it is answered (a job that starts after the deadline ends at
        once)."""
        self.jobs.add(job)
        if self.expired is not None:
            job.interrupt(self.expired)
        try:
            yield job
        finally:
            self.jobs.discard(job)

    def expire_after(self, timeout: float) -> None:
        """Interrupt every job still in flight ``timeout`` seconds from now (call on the
        event loop)."""
        asyncio.get_running_loop().call_later(timeout, self.expire, timeout)

    def expire(self, timeout: float) -> None:
        self.expired = ShuttingDownError(
            f"the server is shutting down and this request did not finish within the graceful "
            f"timeout ({timeout:g} s)"
        )
        if self.jobs:
            log.warning("graceful timeout passed: ending %d requests", len(self.jobs))
        for job in list(self.jobs):
            job.interrupt(self.expired)


class DrainingServer(uvicorn.Server):
    """uvicorn's server, whose shutdown first starts the app's graceful deadline."""

    def __init__(self, config: uvicorn.Config, in_flight: InFlight, graceful_timeout: float):
        super().__init__(config)
        self.in_flight = in_flight
        self.graceful_timeout = graceful_timeout

    def run(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until SIGINT/SIGTERM; after a graceful shutdown uvicorn re-raises the signal,
        which for SIGINT is a KeyboardInterrupt: swallowed here, as ``uvicorn.run`` does."""
        with contextlib.suppress(KeyboardInterrupt):
            super().run(sockets)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.in_flight.expire_after(self.graceful_timeout)
        await super().shutdown(sockets)


def draining_server(app: FastAPI, *, graceful_timeout: float, **config: Any) -> uvicorn.Server:
    """A uvicorn server for an app of :func:`pagedkv.server.app.create_app`: in-flight requests
    get ``graceful_timeout`` seconds at shutdown, then end with an OpenAI error. ``config``:
    more ``uvicorn.Config`` arguments (host, port, log_level, ...)."""
    backstop = math.ceil(graceful_timeout + BACKSTOP_S)  # uvicorn takes whole seconds
    cfg = uvicorn.Config(app, timeout_graceful_shutdown=backstop, **config)
    return DrainingServer(cfg, app.state.in_flight, graceful_timeout)
