"""What the caller of a request sees, and how a request ends (finished, aborted or failed).

:func:`snapshot` turns a live :class:`Request` into an immutable :class:`RequestOutput` (the types
are in ``outputs.py``); the deltas start afresh after each one a step returns. A request ends
through :func:`finish_request` exactly once: it leaves the engine's requests, its metrics get a
finish time, and the engine's ``on_finish`` hook (metrics exporters) sees its final output.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pagedkv.engine.outputs import RequestOutput
from pagedkv.engine.request import Request
from pagedkv.engine.scheduler import Scheduler


def snapshot(req: Request, consume: bool = True) -> RequestOutput:
    """An immutable view of the request now; the deltas start afresh afterwards (unless
    ``consume`` is False)."""
    outs = []
    for o in req.outputs:
        outs.append(
            dataclasses.replace(
                o,
                token_ids=list(o.token_ids),
                delta_token_ids=list(o.delta_token_ids),
                logprobs=None if o.logprobs is None else list(o.logprobs),
            )
        )
        if consume:
            o.delta_text, o.delta_token_ids = "", []
    return RequestOutput(
        req.request_id,
        req.prompt,
        req.prompt_token_ids,
        outs,
        req.finished,
        req.metrics,
        req.metrics.num_cached_tokens,
        req.error,
    )


def stop_request(req: Request, scheduler: Scheduler, reason: str) -> None:
    """Take every live sample of ``req`` out of ``scheduler`` (freeing its blocks) and give each
    sample still open the finish reason ``reason`` (``"abort"``, ``"error"``)."""
    for seq in req.live_seqs():
        scheduler.remove(seq)
    for out in req.outputs:
        if out.finish_reason is None:
            out.finish_reason = reason


def fail_request(req: Request, exc: BaseException, scheduler: Scheduler) -> None:
    """Record ``exc`` as the request's error and stop all its samples with ``"error"``."""
    req.error = f"{type(exc).__name__}: {exc}"
    stop_request(req, scheduler, "error")


def finish_request(
    req: Request,
    requests: dict[str, Request],
    totals: dict[str, float],
    on_finish: Callable[[RequestOutput], None] | None,
    now: float,
) -> RequestOutput:
    """Remove a finished request from ``requests`` (once: later calls only snapshot it), count it
    in ``totals`` (finished at ``now``, the engine's clock) and report its final output to
    ``on_finish``."""
    out = snapshot(req, consume=False)  # step() snapshots again: keep the deltas
    if requests.pop(req.request_id, None) is not None:
        req.metrics.finished_time = now
        totals["finished_requests"] += 1
        if on_finish is not None:
            on_finish(out)
    return out
