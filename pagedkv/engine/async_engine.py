"""``AsyncLLMEngine``: submit from any thread or asyncio task, stream outputs, abort any time.

One background thread runs the engine loop and is the only code that steps the engine, so the
manager and storage are never touched concurrently. Submissions and stream aborts never wait
for a step (a step on a CPU takes up to a few hundred ms, and an event loop that waited would
stall every other stream): a request is validated on the caller's thread (validation reads only
what never changes), then handed to the loop through an inbox that the loop drains before each
step; an abort is handed over the same way, so its blocks are freed before the next step.
``abort()`` and ``call()`` from other threads take the engine lock instead. Each stream is an
``asyncio.Queue`` on its caller's event loop, fed with ``call_soon_threadsafe``; leaving the
``async for`` early (a client that disconnected, a cancelled task) aborts the request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from pagedkv.engine.llm_engine import LLMEngine
from pagedkv.engine.outputs import RequestOutput
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.validation import validate_request
from pagedkv.errors import InvalidArgumentError, PagedKVError

log = logging.getLogger("pagedkv.engine")


class EngineDeadError(PagedKVError):
    """The engine loop stopped (shut down or crashed); no request can be served."""


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, idle_wait: float = 0.05) -> None:
        self.engine = engine
        self.lock = threading.RLock()
        self._wake = threading.Event()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        # ("add", request_id, add_validated args) | ("abort", request_id): drained by the loop
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ids = itertools.count()
        self._stop = False
        self._idle_wait = idle_wait
        self._thread = threading.Thread(target=self._loop, name="pagedkv-engine", daemon=True)
        self._thread.start()

    @classmethod
    def from_options(cls, model: Any = None, **options: Any) -> AsyncLLMEngine:
        return cls(LLMEngine(model, **options))

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def submit(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> RequestStream:
        """Validate a request now (typed errors raise here, nothing queued) and hand it to the
        engine loop without waiting for a step; returns its stream. Call from an event loop."""
        if not self.is_running:
            raise EngineDeadError("the engine loop is not running")
        rid = request_id if request_id is not None else f"req-{next(self._ids)}"
        params = params if params is not None else SamplingParams()
        if not isinstance(rid, str) or rid in self._streams or rid in self.engine.requests:
            raise InvalidArgumentError(
                f"request_id: expected a str not already running, got {rid!r}"
            )
        text, ids = validate_request(self.engine, prompt, params, priority, cache_salt)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._streams[rid] = (asyncio.get_running_loop(), queue)
        self._inbox.append(("add", rid, text, ids, params, priority, cache_salt, time.monotonic()))
        self._wake.set()
        return RequestStream(self, rid, queue)

    def abort_soon(self, request_id: str) -> None:
        """Abort a request before the engine's next step, without waiting for the current one
        (what a stream does when its consumer leaves)."""
        self._inbox.append(("abort", request_id))
        self._wake.set()

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: handed over but not taken in, or in the waiting queue
        (read without the lock; exact between steps, a moment old during one)."""
        return len(self._inbox) + len(self.engine.scheduler.waiting)

    async def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Yield the request's output after every step that changed it (``delta_text`` /
        ``delta_token_ids`` hold what is new); the last one has ``finished`` set. Leaving the
        loop early aborts the request."""
        stream = self.submit(prompt, params, request_id, priority=priority, cache_salt=cache_salt)
        try:
            async for out in stream:
                yield out
        finally:  # closing this generator does not close the inner one: abort here, at once
            if not stream.finished:
                self.abort_soon(stream.request_id)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (no-op if it already finished)."""
        with self.lock:
            out = self.engine.abort(request_id)
            stream = self._streams.pop(request_id, None)
        if stream is not None and out is not None:
            _deliver(stream, out)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(engine, *args)`` under the engine lock (for inspection, e.g. metrics)."""
        with self.lock:
            return fn(self.engine, *args)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop (no new step starts), abort every request, wait for the loop."""
        self._stop = True
        self._wake.set()
        with self.lock:
            self._drain_inbox()
            for rid in list(self.engine.requests):
                self.abort(rid)
        self._thread.join(timeout)
        self.engine.close()

    # ----------------------------------------------------------------- loop
    def _drain_inbox(self) -> None:
        """Take in handed-over requests and aborts, in order (caller holds the lock)."""
        while self._inbox:
            kind, rid, *args = self._inbox.popleft()
            if kind == "abort":
                self.abort(rid)
                continue
            try:
                self.engine.add_validated(rid, *args)
            except Exception as exc:
                stream = self._streams.pop(rid, None)
                if stream is not None:
                    _deliver(stream, exc)

    def _loop(self) -> None:
        while not self._stop:
            with self.lock:
                self._drain_inbox()
                busy = self.engine.has_unfinished_requests()
                try:
                    outputs = self.engine.step() if busy else []
                except Exception as exc:
                    log.exception("engine step crashed; stopping the engine loop")
                    self._stop = True
                    self._fail_all(exc)
                    return
                # delivered under the lock (call_soon_threadsafe does not block), so an abort's
                # final output can never overtake this step's outputs on a stream
                for o in outputs:
                    stream = (
                        self._streams.pop(o.request_id, None)
                        if o.finished
                        else self._streams.get(o.request_id)
                    )
                    if stream is not None:
                        _deliver(stream, o)
            if not busy:
                self._wake.wait(self._idle_wait)
                self._wake.clear()

    def _fail_all(self, exc: BaseException) -> None:
        err = EngineDeadError(f"engine loop crashed: {type(exc).__name__}: {exc}")
        for stream in self._streams.values():
            _deliver(stream, err)
        self._streams.clear()


def _deliver(stream: tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]], item: Any) -> None:
    loop, queue = stream
    # RuntimeError: the caller's event loop is closed, nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(queue.put_nowait, item)


class RequestStream:
    """The outputs of one submitted request, as an async iterator (once). Leaving the iteration
    before the final output (break, cancellation, a disconnected client) aborts the request."""

    def __init__(self, owner: AsyncLLMEngine, request_id: str, queue: asyncio.Queue[Any]) -> None:
        self.owner = owner
        self.request_id = request_id
        self._queue = queue
        self.finished = False

    def __aiter__(self) -> AsyncIterator[RequestOutput]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[RequestOutput]:
        try:
            while not self.finished:
                item = await self._queue.get()
                if isinstance(item, BaseException):
                    raise item
                self.finished = item.finished
                yield item
        finally:
            if not self.finished:
                self.abort()

    def abort(self) -> None:
        self.owner.abort_soon(self.request_id)
