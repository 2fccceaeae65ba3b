"""``AsyncLLMEngine``: streamed deltas add up to the final output, abort mid-stream frees blocks
at once, concurrent streams (tasks and threads) are exact, and shutdown ends everything."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time

import pytest
from engine_helpers import decode, greedy, greedy_ref, make_engine, random_prompts

from pagedkv.engine import AsyncLLMEngine, EngineDeadError, SamplingParams
from pagedkv.errors import InvalidArgumentError

PROMPTS = random_prompts([4, 9, 13, 6], seed=61)


@pytest.fixture
def aengine():
    eng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)
    yield eng
    eng.shutdown()


async def _collect(aeng, prompt, params, **kw):
    return [o async for o in aeng.generate(prompt, params, **kw)]


def _used(aeng):
    return aeng.call(lambda e: e.manager.num_used_blocks)


def _settled_steps(aeng, since):
    """Wait until the loop took in every handed-over abort; returns the engine steps that ran
    meanwhile (an abort is taken in before the next step, so at most the one in flight)."""
    _wait_for(lambda: not aeng._inbox)
    return aeng.call(lambda e: e.totals["steps"]) - since


def _check_stream(outs):
    assert outs
    assert outs[-1].finished
    assert not any(o.finished for o in outs[:-1])
    final = outs[-1]
    for c in final.outputs:
        deltas = [o.outputs[c.index] for o in outs]
        assert "".join(d.delta_text for d in deltas) == c.text
        assert [t for d in deltas for t in d.delta_token_ids] == c.token_ids
        # cumulative fields only grow
        for a, b in itertools.pairwise(deltas):
            assert b.token_ids[: len(a.token_ids)] == a.token_ids
            assert b.text.startswith(a.text)
    return final


@pytest.mark.parametrize("n", [1, 2])
def test_stream_deltas_add_up(aengine, n):
    outs = asyncio.run(_collect(aengine, PROMPTS[1], greedy(12, n=n)))
    final = _check_stream(outs)
    assert len(outs) >= 12  # one output per decode step at least
    for c in final.outputs:
        assert c.token_ids == greedy_ref(PROMPTS[1], 12)
        assert c.text == decode(c.token_ids)


def test_stream_with_stop_string_holds_back_text(aengine):
    ref = greedy_ref(PROMPTS[2], 24)
    text = decode(ref)
    stop = next(
        text[i : i + 3]
        for i in range(2, len(text) - 2)
        if all(" " <= ch <= "~" for ch in text[i : i + 3]) and text.find(text[i : i + 3]) > 0
    )
    outs = asyncio.run(_collect(aengine, PROMPTS[2], greedy(24, stop=[stop])))
    final = _check_stream(outs)
    c = final.outputs[0]
    assert c.finish_reason == "stop"
    assert c.stop_reason == stop
    assert c.text == text[: text.find(stop)]
    # no partial stop string was ever streamed: the text shown is always a prefix of the final
    for o in outs:
        assert c.text.startswith(o.outputs[0].text)


def test_concurrent_streams_gather(aengine):
    seeded = SamplingParams(temperature=0.9, seed=3, max_tokens=10, ignore_eos=True)

    async def main():
        tasks = [_collect(aengine, p, greedy(10)) for p in PROMPTS]
        tasks.append(_collect(aengine, PROMPTS[0], seeded, request_id="seeded"))
        return await asyncio.gather(*tasks)

    results = asyncio.run(main())
    for p, outs in zip(PROMPTS, results, strict=False):
        assert _check_stream(outs).outputs[0].token_ids == greedy_ref(p, 10)
    alone = asyncio.run(_collect(aengine, PROMPTS[0], seeded))
    assert alone[-1].outputs[0].token_ids == results[-1][-1].outputs[0].token_ids
    assert results[-1][-1].request_id == "seeded"
    assert _used(aengine) == 0
    assert not aengine.call(lambda e: e.requests)


def test_streams_from_several_threads(aengine):
    results: dict[int, list] = {}
    errors = []

    def worker(i):
        try:
            results[i] = asyncio.run(_collect(aengine, PROMPTS[i], greedy(8)))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    for i, p in enumerate(PROMPTS):
        assert _check_stream(results[i]).outputs[0].token_ids == greedy_ref(p, 8)


def _wait_for(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_abort_by_leaving_the_stream_frees_blocks_at_once(aengine):
    base = _used(aengine)

    async def main():
        async with contextlib.aclosing(aengine.generate(PROMPTS[2], greedy(200))) as gen:
            seen = 0
            async for out in gen:
                assert not out.finished
                seen += 1
                if seen == 3:
                    assert _used(aengine) > base
                    steps = aengine.call(lambda e: e.totals["steps"])
                    break
        # aclose handed the abort to the loop, which takes it in before its next step
        assert _settled_steps(aengine, steps) <= 1
        assert _used(aengine) == base
        assert not aengine.call(lambda e: e.requests)
        assert aengine.call(lambda e: e.scheduler.has_work()) is False

    asyncio.run(main())
    aengine.call(lambda e: e.check_integrity())


def test_abort_by_break_without_aclosing(aengine):
    base = _used(aengine)

    async def main():
        async for out in aengine.generate(PROMPTS[1], greedy(200), request_id="brk"):
            assert not out.finished
            break
        for _ in range(200):  # the abandoned generator is closed by the event loop
            if not aengine.call(lambda e: e.requests):
                break
            await asyncio.sleep(0.005)

    asyncio.run(main())
    assert not aengine.call(lambda e: e.requests)
    assert _used(aengine) == base
    aengine.call(lambda e: e.check_integrity())


def test_abort_call_ends_stream(aengine):
    base = _used(aengine)

    async def main():
        outs = []
        async for out in aengine.generate(PROMPTS[3], greedy(200, n=2), request_id="victim"):
            outs.append(out)
            if len(outs) == 2:
                aengine.abort("victim")
                assert _used(aengine) == base  # freed before abort returned
        return outs

    outs = asyncio.run(main())
    final = outs[-1]
    assert final.finished
    assert all(c.finish_reason == "abort" for c in final.outputs)
    assert 0 < len(final.outputs[0].token_ids) < 200
    assert final.outputs[0].token_ids == greedy_ref(PROMPTS[3], len(final.outputs[0].token_ids))
    aengine.abort("victim")  # no-op now
    aengine.abort("never-existed")
    aengine.call(lambda e: e.check_integrity())
    # the engine keeps serving
    again = asyncio.run(_collect(aengine, PROMPTS[3], greedy(5)))
    assert again[-1].outputs[0].token_ids == greedy_ref(PROMPTS[3], 5)


def test_submit_returns_a_stream(aengine):
    async def main():
        stream = aengine.submit(PROMPTS[0], greedy(6), request_id="sub")
        assert stream.request_id == "sub"
        outs = [o async for o in stream]
        s2 = aengine.submit(PROMPTS[1], greedy(200))
        async for _ in s2:
            s2.abort()
        return outs, s2

    outs, s2 = asyncio.run(main())
    assert _check_stream(outs).outputs[0].token_ids == greedy_ref(PROMPTS[0], 6)
    assert s2.finished
    _settled_steps(aengine, 0)
    assert not aengine.call(lambda e: e.requests)
    assert _used(aengine) == 0


def test_cancelled_task_aborts(aengine):
    base = _used(aengine)

    async def main():
        started = asyncio.Event()

        async def consume():
            async for _ in aengine.generate(PROMPTS[0], greedy(200)):
                started.set()

        task = asyncio.create_task(consume())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    _settled_steps(aengine, 0)
    assert not aengine.call(lambda e: e.requests)
    assert _used(aengine) == base


def test_invalid_request_raises_before_queueing(aengine):
    async def main():
        with pytest.raises(InvalidArgumentError):
            await _collect(aengine, [], greedy(4))
        with pytest.raises(InvalidArgumentError):
            await _collect(aengine, [5, 400], greedy(4))

    asyncio.run(main())
    assert not aengine.call(lambda e: e.requests)
    assert aengine.is_running


def test_shutdown_ends_streams_and_refuses_new_work():
    aeng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)

    async def main():
        outs = []
        async for out in aeng.generate(PROMPTS[1], greedy(200)):
            outs.append(out)
            if len(outs) == 2:
                threading.Thread(target=aeng.shutdown).start()
        return outs

    outs = asyncio.run(main())
    assert outs[-1].finished
    assert outs[-1].outputs[0].finish_reason == "abort"
    aeng._thread.join(10)
    assert not aeng.is_running
    assert aeng.engine.manager.num_used_blocks == 0

    async def late():
        await _collect(aeng, PROMPTS[0], greedy(3))

    with pytest.raises(EngineDeadError):
        asyncio.run(late())
    aeng.shutdown()  # idempotent


def test_engine_crash_fails_streams(monkeypatch):
    aeng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)

    def broken():
        raise RuntimeError("engine bug")

    async def main():
        with aeng.lock:  # no step can run until the stream is registered and step is broken
            gen = aeng.generate(PROMPTS[0], greedy(5))
            first = asyncio.ensure_future(gen.__anext__())
            await asyncio.sleep(0.05)
            monkeypatch.setattr(aeng.engine, "step", broken)
        with pytest.raises(EngineDeadError, match="engine bug"):
            await first

    try:
        asyncio.run(main())
        aeng._thread.join(10)
        assert not aeng.is_running
    finally:
        aeng.shutdown()


def test_abort_output_comes_after_every_step_output(monkeypatch):
    """The engine loop hands a step's outputs to the streams; an abort racing with that hand-over
    must still be the stream's last item, so the deltas add up to the final output. (The loop
    is slowed down in the hand-over to make the race certain.)"""
    import pagedkv.engine.async_engine as ae

    real = ae._deliver

    def slow(stream, item):
        if threading.current_thread().name == "pagedkv-engine":
            time.sleep(0.03)
        real(stream, item)

    monkeypatch.setattr(ae, "_deliver", slow)
    aeng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)

    async def main():
        outs = []
        async for out in aeng.generate(PROMPTS[1], greedy(200), request_id="r"):
            outs.append(out)
            if len(outs) == 3:
                await asyncio.sleep(0.01)  # the loop is now handing over the next step
                aeng.abort("r")
        return outs

    try:
        outs = asyncio.run(main())
    finally:
        aeng.shutdown()
    final = _check_stream(outs)
    assert final.outputs[0].finish_reason == "abort"


def test_submit_and_stream_abort_never_wait_for_a_step():
    # An event loop that waited for the engine lock would stall every other stream for a whole
    # step (and an unfair lock can starve it for many); submissions and aborts go through the
    # inbox instead.
    aeng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=128), idle_wait=0.005)
    run_step = aeng.engine.runner.run_step

    def slow_run_step(*args):
        time.sleep(0.3)
        return run_step(*args)

    aeng.engine.runner.run_step = slow_run_step

    async def main():
        first = aeng.submit(PROMPTS[0], greedy(50))
        it = first.__aiter__()
        await it.__anext__()  # the engine is now stepping (each step 0.3 s)
        t0 = time.perf_counter()
        second = aeng.submit(PROMPTS[1], greedy(2))
        submitted = time.perf_counter() - t0
        await it.aclose()  # leaving the stream aborts it
        closed = time.perf_counter() - t0 - submitted
        outs = [o async for o in second]
        return submitted, closed, outs

    submitted, closed, outs = asyncio.run(main())
    assert submitted < 0.1
    assert closed < 0.1
    assert outs[-1].finished
    assert outs[-1].outputs[0].token_ids == greedy_ref(PROMPTS[1], 2)
    _settled_steps(aeng, 0)
    assert _used(aeng) == 0
    aeng.shutdown()
