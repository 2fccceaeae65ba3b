"""``AsyncLLMEngine``: submit from any thread or asyncio task, stream outputs, abort any time.

One background thread runs the engine loop and is the only code that steps the engine, so the
manager and storage are never touched concurrently. Submissions and stream aborts never wait
for a step (a step on a CPU takes up to a few hundred ms, and an event loop that waited would
stall every other stream): a request is validated on the caller's thread (validation reads only
what never changes), then handed to the loop through an inbox that the loop drains before each
step; an abort is handed over the same way, so its blocks are freed before the next step.
``abort()`` and ``call()`` from other threads take the engine lock instead, before the loop's
next step (``held()``: a lock is not fair, so the loop lets waiting callers in first);
``abort()`` first takes in what is in the inbox, so it also stops a request submitted a moment
before. A request
id is in use from ``submit`` until its stream ends: a second submit of it is refused with
``DuplicateRequestError`` (checked and claimed atomically), never handed to the loop, where a
second sequence under one id would fail every request. Each stream is an
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
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from pagedkv._omp import release_thread_pool
from pagedkv.engine.llm_engine import LLMEngine
from pagedkv.engine.outputs import RequestOutput
from pagedkv.engine.prompts import PromptType
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.validation import DuplicateRequestError, check_request_id, validate_request
from pagedkv.errors import PagedKVError

log = logging.getLogger("pagedkv.engine")

# where a request's outputs go: the caller's event loop and its queue
Stream = tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]


class EngineDeadError(PagedKVError):
    """The engine loop stopped (shut down or crashed); no request can be served."""


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine, *, idle_wait: float = 0.05) -> None:
        self.engine = engine
        self.lock = threading.RLock()
        # Threads waiting in ``held()``: the loop lets them in before its next step. A lock is
        # not fair, and the loop re-takes it at once after each step, so without this an
        # ``abort()`` could wait until the request it meant to stop had run to its end.
        self._waiters = 0
        self._waiters_lock = threading.Lock()
        self._wake = threading.Event()
        self._streams: dict[str, Stream] = {}
        # claims a request id: the duplicate check and the stream's registration, as one
        self._ids_lock = threading.Lock()
        # ("add", request_id, stream, add_validated args) | ("abort", request_id, stream or
        # None): drained by the loop in order; the stream names which request an abort meant
        self._inbox: collections.deque[tuple[Any, ...]] = collections.deque()
        self._ids = itertools.count()
        self._stop = False
        self._idle_wait = idle_wait
        # Called with the engine under the lock after every loop turn (each step, and every
        # ``idle_wait`` when idle): readers that must never wait for a step (the server's
        # /metrics) publish a snapshot here.
        self.on_step: Callable[[LLMEngine], None] | None = None
        self._thread = threading.Thread(target=self._loop, name="pagedkv-engine", daemon=True)
        # the steps run in the new thread: this one's OpenMP workers (it loaded the model)
        # would throttle every parallel region of the loop's (pagedkv._omp)
        release_thread_pool()
        self._thread.start()

    @classmethod
    def from_options(cls, model: Any = None, **options: Any) -> AsyncLLMEngine:
        return cls(LLMEngine(model, **options))

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def submit(
        self,
        prompt: PromptType,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        *,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> RequestStream:
        """Validate a request now (typed errors raise here, nothing queued; an id in use raises
        ``DuplicateRequestError``) and hand it to the engine loop without waiting for a step;
        returns its stream. Call from an event loop."""
        if not self.is_running:
            raise EngineDeadError("the engine loop is not running")
        rid = check_request_id(request_id if request_id is not None else f"req-{next(self._ids)}")
        params = params if params is not None else SamplingParams()
        text, ids = validate_request(self.engine, prompt, params, priority, cache_salt)
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stream = (asyncio.get_running_loop(), queue)
        with self._ids_lock:
            # a stream is popped only after its request left engine.requests, so an id is in
            # neither exactly when no request holds it
            if rid in self._streams or rid in self.engine.requests:
                raise DuplicateRequestError(rid)
            self._streams[rid] = stream
            args = (text, ids, params, priority, cache_salt, time.monotonic())
            self._inbox.append(("add", rid, stream, *args))
        self._wake.set()
        return RequestStream(self, rid, stream)

    def abort_soon(self, request_id: str, stream: Stream | None = None) -> None:
        """Abort a request before the engine's next step, without waiting for the current one
        (what a stream does when its consumer leaves; it passes itself as ``stream``, so an
        abort that comes after its request ended never stops a new request under that id)."""
        self._inbox.append(("abort", request_id, stream))
        self._wake.set()

    @property
    def num_waiting(self) -> int:
        """Requests not yet running: handed over but not taken in, or in the waiting queue
        (read without the lock; exact between steps, a moment old during one)."""
        return len(self._inbox) + len(self.engine.scheduler.waiting)

    async def generate(
        self,
        prompt: PromptType,
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
                stream.abort()

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """The engine lock, taken before the loop's next step (at most one step's wait)."""
        with self._waiters_lock:
            self._waiters += 1
        try:
            self.lock.acquire()
        finally:
            with self._waiters_lock:
                self._waiters -= 1
        try:
            yield
        finally:
            self.lock.release()

    def abort(self, request_id: str) -> None:
        """Stop a request and free its blocks (no-op if it already finished); a request still
        in the inbox is taken in first, so an abort right after ``submit`` is never lost."""
        with self.held():
            self._drain_inbox()
            self._abort_now(request_id, None)

    def _abort_now(self, request_id: str, sent_by: Stream | None) -> None:
        """Abort under the lock and end the request's stream with its final output. An abort
        ``sent_by`` a stream that is no longer the id's stream came too late: a no-op."""
        stream = self._streams.get(request_id)
        if sent_by is not None and stream is not sent_by:
            return
        out = self.engine.abort(request_id)
        self._streams.pop(request_id, None)
        if stream is not None and out is not None:
            _deliver(stream, out)

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(engine, *args)`` under the engine lock (for inspection, e.g. metrics)."""
        with self.held():
            return fn(self.engine, *args)

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the loop (no new step starts), abort every request, wait for the loop."""
        self._stop = True
        self._wake.set()
        with self.held():
            self._drain_inbox()
            for rid in list(self.engine.requests):
                self._abort_now(rid, None)
        self._thread.join(timeout)
        self.engine.close()

    # ----------------------------------------------------------------- loop
    def _drain_inbox(self) -> None:
        """Take in handed-over requests and aborts, in order (caller holds the lock)."""
        while self._inbox:
            kind, rid, stream, *args = self._inbox.popleft()
            if kind == "abort":
                self._abort_now(rid, stream)
                continue
            try:
                self.engine.add_validated(rid, *args)
            except Exception as exc:  # fails this request's stream only, never another's
                if self._streams.get(rid) is stream:
                    del self._streams[rid]
                _deliver(stream, exc)

    def _loop(self) -> None:
        while not self._stop:
            while self._waiters:  # a caller of held() goes first (see __init__)
                time.sleep(0.0002)
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
                self._publish()
            if not busy:
                self._wake.wait(self._idle_wait)
                self._wake.clear()

    def _publish(self) -> None:
        """Run the ``on_step`` hook (caller holds the lock); its failure never stops the loop."""
        if self.on_step is not None:
            try:
                self.on_step(self.engine)
            except Exception:
                log.exception("the on_step hook failed")

    def _fail_all(self, exc: BaseException) -> None:
        err = EngineDeadError(f"engine loop crashed: {type(exc).__name__}: {exc}")
        for stream in self._streams.values():
            _deliver(stream, err)
        self._streams.clear()


def _deliver(stream: Stream, item: Any) -> None:
    loop, queue = stream
    # RuntimeError: the caller's event loop is closed, nobody is listening any more.
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(queue.put_nowait, item)


class RequestStream:
    """The outputs of one submitted request, as an async iterator (once). Leaving the iteration
    before the final output (break, cancellation, a disconnected client) aborts the request."""

    def __init__(self, owner: AsyncLLMEngine, request_id: str, stream: Stream) -> None:
        self.owner = owner
        self.request_id = request_id
        self._stream = stream
        self._queue = stream[1]
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
        """Abort this stream's request soon (a no-op once it ended, even if its id was
        reused)."""
        self.owner.abort_soon(self.request_id, self._stream)
