"""``AsyncLLMEngine`` request ids: an abort right after ``submit`` is never lost, a duplicate id
is refused to its caller only (atomically, even from two threads at once), and an abort that
arrives after its request ended never stops a new request under the same id. The engine keeps
serving every other client throughout.

Holding ``aeng.lock`` keeps the engine loop from draining its inbox, which makes "before the
loop takes the request in" certain rather than a race."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from engine_helpers import greedy, greedy_ref, make_engine, random_prompts

import pagedkv.engine.async_engine as ae
from pagedkv.engine import AsyncLLMEngine, DuplicateRequestError

PROMPTS = random_prompts([6, 9], seed=71)
TIMEOUT = 30.0  # a stream that never ends fails the test instead of hanging it


@pytest.fixture
def aeng():
    eng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)
    yield eng
    eng.shutdown()


async def _drain(stream):
    async def collect():
        return [o async for o in stream]

    return await asyncio.wait_for(collect(), TIMEOUT)


def _idle(aeng):
    """Nothing left in the engine: no request, no block, integrity holds, loop alive."""
    assert aeng.is_running
    assert not aeng.call(lambda e: e.requests)
    assert aeng.call(lambda e: e.manager.num_used_blocks) == 0
    aeng.call(lambda e: e.check_integrity())


def test_abort_right_after_submit_ends_the_stream_and_the_id_is_free_again(aeng):
    async def main():
        with aeng.lock:  # the loop cannot take "r" in before the abort
            first = aeng.submit(PROMPTS[0], greedy(200), request_id="r")
            aeng.abort("r")
            second = aeng.submit(PROMPTS[1], greedy(5), request_id="r")
        return await _drain(first), await _drain(second)

    first, second = asyncio.run(main())
    assert first[-1].finished
    assert first[-1].outputs[0].finish_reason == "abort"
    assert len(first[-1].outputs[0].token_ids) < 200
    assert second[-1].outputs[0].finish_reason == "length"
    assert second[-1].outputs[0].token_ids == greedy_ref(PROMPTS[1], 5)
    _idle(aeng)


def test_duplicate_id_is_refused_to_its_caller_only(aeng):
    async def main():
        running = aeng.submit(PROMPTS[0], greedy(12), request_id="r")
        with pytest.raises(DuplicateRequestError, match="'r'"):
            aeng.submit(PROMPTS[1], greedy(3), request_id="r")
        with aeng.lock:  # a stream's abort is handed over: the id is taken until it is done
            running.abort()
            with pytest.raises(DuplicateRequestError):
                aeng.submit(PROMPTS[1], greedy(3), request_id="r")
        return await _drain(running)

    outs = asyncio.run(main())
    assert outs[-1].finished
    _idle(aeng)
    again = asyncio.run(_drain_new(aeng, "r"))
    assert again[-1].outputs[0].token_ids == greedy_ref(PROMPTS[1], 4)


async def _drain_new(aeng, rid):
    return await _drain(aeng.submit(PROMPTS[1], greedy(4), request_id=rid))


def test_concurrent_submits_of_one_id_admit_exactly_one(aeng, monkeypatch):
    """Both threads pass validation together (a barrier inside it), then claim the id: exactly
    one wins; the other gets DuplicateRequestError and the winner's stream is exact."""
    barrier = threading.Barrier(2)
    real = ae.validate_request

    def validate_together(*args):
        barrier.wait(10)
        return real(*args)

    monkeypatch.setattr(ae, "validate_request", validate_together)
    results: dict[int, object] = {}

    def client(i):
        try:
            results[i] = asyncio.run(_drain_new(aeng, "dup"))
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
    # The engine lock keeps the winner's request from finishing (and freeing the id) before the
    # loser has claimed it, however the threads are scheduled on a loaded machine.
    with aeng.lock:
        for t in threads:
            t.start()
        deadline = time.monotonic() + TIMEOUT
        while not any(isinstance(r, Exception) for r in results.values()):
            assert time.monotonic() < deadline, f"no submit was refused: {results}"
            time.sleep(0.01)
    for t in threads:
        t.join(TIMEOUT + 10)
    refused = [r for r in results.values() if isinstance(r, DuplicateRequestError)]
    served = [r for r in results.values() if isinstance(r, list)]
    assert len(refused) == 1, results
    assert len(served) == 1, results
    assert served[0][-1].outputs[0].token_ids == greedy_ref(PROMPTS[1], 4)
    monkeypatch.setattr(ae, "validate_request", real)
    _idle(aeng)


def test_late_stream_abort_never_stops_a_new_request_under_its_id(aeng):
    """A consumer that leaves after its final output was queued (but before reading it) aborts
    a request that already ended; by then a new request may hold the id."""

    async def main():
        old = aeng.submit(PROMPTS[0], greedy(3), request_id="r")
        await _drain(old)
        with aeng.lock:  # the new request and the stale abort reach the loop together
            new = aeng.submit(PROMPTS[1], greedy(6), request_id="r")
            old.abort()
        return await _drain(new)

    outs = asyncio.run(main())
    assert outs[-1].outputs[0].finish_reason == "length"
    assert outs[-1].outputs[0].token_ids == greedy_ref(PROMPTS[1], 6)
    _idle(aeng)


def test_abort_from_another_thread_is_not_starved_by_the_loop(aeng):
    """The loop re-takes the engine lock right after each step; ``abort()`` must still get in
    before the next step, not when the request has run to its end."""
    long = greedy(500)  # the model allows 512 tokens in all

    async def main():
        stream = aeng.submit(PROMPTS[0], long, request_id="long")
        outs = []
        async for out in stream:
            outs.append(out)
            if len(outs) == 3:  # the request is running: abort it from another thread
                threading.Thread(target=aeng.abort, args=("long",)).start()
        return outs

    outs = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    final = outs[-1].outputs[0]
    assert final.finish_reason == "abort"
    assert len(final.token_ids) < 100, len(final.token_ids)
    _idle(aeng)
