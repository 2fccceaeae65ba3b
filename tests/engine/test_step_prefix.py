"""Prompts sharing a prefix that another sequence computes in the same step wait one step and
find it cached (``pagedkv.engine.step_prefix``): exact ids on a tiny pool, the seat a waiting
prompt keeps, chunked prompts, and the engine's tokens unchanged by it."""

from __future__ import annotations

import pytest
from test_scheduler_output import run_step

from pagedkv.core import BlockManager
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.outputs import RequestMetrics
from pagedkv.engine.request import Request
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.scheduler import Scheduler

SHARED = list(range(100, 108))  # two full blocks of 4


def make(usable: int, budget: int = 32, **options: object) -> Scheduler:
    cfg = EngineConfig(block_size=4, num_blocks=usable, watermark=0.0, **options)
    return Scheduler(BlockManager(cfg.cache_config(usable)), cfg, budget)


def request(rid: str, tokens: list[int], order: int) -> Request:
    return Request(rid, tokens, SamplingParams(max_tokens=8), None, order, RequestMetrics(0.0))


def add(s: Scheduler, *reqs: Request) -> None:
    for r in reqs:
        s.add(r.seqs[0])


def test_a_prompt_sharing_this_steps_blocks_waits_and_hits_the_cache():
    s = make(usable=12)
    a = request("a", [*SHARED, 1, 2, 3], 1)
    b = request("b", [*SHARED, 4, 5], 2)  # shares a's two new blocks
    c = request("c", [50, 51, 52, 53, 54], 3)  # shares nothing: takes b's turn this step
    add(s, a, b, c)
    out = s.schedule()
    assert [(q.seq.seq_id, q.start, q.num_tokens) for q in out.scheduled] == [
        (("a", 0), 0, 11),
        (("c", 0), 0, 5),
    ]
    assert [w.seq_id for w in s.waiting] == [("b", 0)]
    assert s.prefix_query_tokens == 16  # b is not looked up until it is admitted
    run_step(s, out)
    out = s.schedule()  # a and c decode; b finds both shared blocks cached
    assert [(q.seq.seq_id, q.start, q.num_tokens) for q in out.scheduled] == [
        (("a", 0), 11, 1),
        (("c", 0), 5, 1),
        (("b", 0), 8, 2),
    ]
    b_table = out.block_tables[2].tolist()
    a_table = out.block_tables[0].tolist()
    assert b_table[:2] == a_table[:2]  # the very blocks a computed
    assert b.metrics.num_cached_tokens == 8
    assert s.prefix_hit_tokens == 8
    run_step(s, out)


def test_without_the_prefix_cache_nothing_waits():
    s = make(usable=12, enable_prefix_caching=False)
    add(s, request("a", [*SHARED, 1, 2, 3], 1), request("b", [*SHARED, 4, 5], 2))
    out = s.schedule()
    assert out.shapes == [(0, 11), (0, 10)]
    run_step(s, out)


def test_a_partial_shared_block_is_not_waited_for():
    s = make(usable=12)
    add(s, request("a", [100, 101, 102, 1, 2], 1), request("b", [100, 101, 102, 4, 5], 2))
    out = s.schedule()  # no full block in common: nothing to find next step
    assert out.shapes == [(0, 5), (0, 5)]
    run_step(s, out)


def test_a_waiting_prompt_keeps_its_seat():
    s = make(usable=12, max_num_seqs=2)
    a = request("a", [*SHARED, 1], 1)
    b = request("b", [*SHARED, 2], 2)
    c = request("c", [50, 51, 52], 3)
    add(s, a, b, c)
    out = s.schedule()  # b waits; c may not take the second seat, which is b's
    assert [q.seq.seq_id for q in out.scheduled] == [("a", 0)]
    assert [w.seq_id for w in s.waiting] == [("b", 0), ("c", 0)]
    run_step(s, out)
    out = s.schedule()
    assert [(q.seq.seq_id, q.start, q.num_tokens) for q in out.scheduled] == [
        (("a", 0), 9, 1),
        (("b", 0), 8, 1),
    ]
    run_step(s, out)


def test_no_chunked_prompt_overtakes_one_that_waits():
    """Behind a waiting prompt only prompts this step completes are admitted: a long one would
    be running next step and take the budget before the waiting prompt is looked at."""
    s = make(usable=24, budget=16)
    a = request("a", [*SHARED, 1], 1)  # 9 tokens
    b = request("b", [*SHARED, 4, 5], 2)  # waits for a's two blocks
    c = request("c", list(range(50, 90)), 3)  # 40 tokens: would be chunked
    d = request("d", [60, 61, 62], 4)  # behind c: the queue stops at c
    add(s, a, b, c, d)
    out = s.schedule()
    assert [q.seq.seq_id[0] for q in out.scheduled] == ["a"]
    assert [w.seq_id[0] for w in s.waiting] == ["b", "c", "d"]
    run_step(s, out)
    out = s.schedule()
    assert [(q.seq.seq_id[0], q.start, q.num_tokens) for q in out.scheduled] == [
        ("a", 9, 1),
        ("b", 8, 2),
        ("c", 0, 13),
    ]
    run_step(s, out)


def test_a_chunked_prompt_is_followed_block_by_block():
    """b shares a's first three blocks while a is computed in chunks of the step budget: in
    the step that completes a's third block b waits (budget left over), then finds all three
    cached and computes only its last token."""
    s = make(usable=16, budget=10)
    shared = list(range(100, 112))
    a = request("a", [*shared, 1, 2, 3, 4], 1)
    b = request("b", [*shared, 9], 2)
    add(s, a, b)
    plans = []
    while s.waiting:
        out = s.schedule()
        plans.append([(q.seq.seq_id[0], q.start, q.num_tokens) for q in out.scheduled])
        run_step(s, out)
    assert plans == [
        [("a", 0, 10)],  # the budget is spent: b is not looked at
        [("a", 10, 6)],  # 4 tokens of budget left, but a computes b's next block: b waits
        [("a", 16, 1), ("b", 12, 1)],
    ]
    assert b.metrics.num_cached_tokens == 12


@pytest.mark.parametrize("wait", [True, False])
def test_the_engines_tokens_do_not_depend_on_it(wait, monkeypatch):
    """Greedy tokens of a burst of prompts sharing a 32-token system prompt are those of each
    prompt alone, with the waits and without; with them the burst computes the shared blocks
    once (the later prompts find them cached)."""
    pytest.importorskip("torch")
    from pagedkv.engine import LLM, SamplingParams, step_prefix
    from pagedkv.models import tiny_random_llama

    if not wait:
        monkeypatch.setattr(step_prefix.StepBlocks, "computes_next_block_of", lambda *a: False)
    system = list(range(40, 72))  # 32 tokens: two blocks of 16
    prompts = [[*system, 80 + i, 81 + i, 82 + i] for i in range(5)]
    params = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    burst = LLM(tiny_random_llama(0)).generate([{"prompt_token_ids": p} for p in prompts], params)
    alone = LLM(tiny_random_llama(0), enable_prefix_caching=False)
    for p, got in zip(prompts, burst, strict=True):
        want = alone.generate([{"prompt_token_ids": p}], params)[0]
        assert got.outputs[0].token_ids == want.outputs[0].token_ids
    cached = [o.num_cached_tokens for o in burst]
    assert cached == ([0, 32, 32, 32, 32] if wait else [0] * 5)
