"""Greedy engine output is token-exact against unpadded per-prompt ``model.generate``, whatever
the batch: mixed lengths, staggered arrivals, prefix hits, n > 1 forks, chunked prefill at any
budget, and preemption by recompute or swap on tiny pools."""

from __future__ import annotations

import pytest
from engine_helpers import drive, encode, greedy, greedy_ref, make_engine, random_prompts

from pagedkv.errors import InvalidArgumentError

LENGTHS = [1, 3, 4, 5, 9, 16, 17, 30]


def _check_exact(run, prompts, max_tokens):
    for i, p in enumerate(prompts):
        out = run.final[f"r{i}"]
        assert out.finished
        for c in out.outputs:
            assert c.token_ids == greedy_ref(p, max_tokens), f"r{i} sample {c.index}"
            assert c.finish_reason == "length"


@pytest.mark.parametrize("block_size", [4, 16])
def test_mixed_lengths_one_run(block_size):
    prompts = random_prompts(LENGTHS, seed=1)
    eng = make_engine(block_size=block_size, num_blocks=256)
    # half arrive up front, the rest while the first ones decode
    subs = [((i % 2) * (i + 1), f"r{i}", p, greedy(10)) for i, p in enumerate(prompts)]
    run = drive(eng, subs)
    _check_exact(run, prompts, 10)
    assert eng.manager.num_used_blocks == 0
    assert not eng.requests


def test_text_prompts_and_metrics():
    texts = ["Hello there", "a", "The quick brown fox jumps over the lazy dog"]
    eng = make_engine(block_size=4, num_blocks=128)
    run = drive(eng, [(f"r{i}", t, greedy(6)) for i, t in enumerate(texts)])
    for i, t in enumerate(texts):
        out = run.final[f"r{i}"]
        assert out.prompt == t
        assert out.prompt_token_ids == encode(t)
        assert out.outputs[0].token_ids == greedy_ref(encode(t), 6)
        m = out.metrics
        assert m.queue_time is not None
        assert m.queue_time >= 0
        assert m.ttft is not None
        assert m.ttft >= m.queue_time
        assert m.e2e_latency is not None
        assert m.e2e_latency >= m.ttft
        assert m.tpot(6) is not None


@pytest.mark.parametrize("partial", [False, True])
def test_prefix_hits_resubmit_and_shared_prefix(partial):
    shared = random_prompts([13], seed=7)[0]
    tails = random_prompts([2, 6, 9], seed=8)
    prompts = [shared + t for t in tails]
    eng = make_engine(block_size=4, num_blocks=128, enable_partial_block_hits=partial)
    first = drive(eng, [("r0", prompts[0], greedy(8))])
    assert first.final["r0"].num_cached_tokens == 0
    # same prompt again and two more sharing its first 13 tokens (3 full blocks and, with
    # partial block hits, the first token of r0's 4th block)
    run = drive(
        eng,
        [
            ("again", prompts[0], greedy(8)),
            ("r1", prompts[1], greedy(8)),
            ("r2", prompts[2], greedy(8)),
        ],
    )
    for rid, p in (("again", prompts[0]), ("r1", prompts[1]), ("r2", prompts[2])):
        out = run.final[rid]
        assert out.num_cached_tokens == out.metrics.num_cached_tokens
        assert out.outputs[0].token_ids == greedy_ref(p, 8), rid
    # 15 tokens: the last one recomputed (with partial hits: only the last one)
    assert run.final["again"].num_cached_tokens == (14 if partial else 12)
    assert run.final["r1"].num_cached_tokens == run.final["r2"].num_cached_tokens
    assert run.final["r1"].num_cached_tokens == (13 if partial else 12)
    assert eng.manager.stats().prefix_hit_requests >= 3
    assert eng.manager.stats().partial_hit_tokens == (4 if partial else 0)


@pytest.mark.parametrize("partial", [False, True])
def test_full_prompt_hit_recomputes_last_token(partial):
    p = random_prompts([8], seed=9)[0]  # exactly two blocks of 4: fully cached the 2nd time
    eng = make_engine(block_size=4, num_blocks=64, enable_partial_block_hits=partial)
    drive(eng, [("a", p, greedy(5))])
    run = drive(eng, [("b", p, greedy(5))])
    assert run.final["b"].num_cached_tokens == (7 if partial else 4)
    assert run.final["b"].outputs[0].token_ids == greedy_ref(p, 5)


def test_prefix_caching_off_no_hits():
    p = random_prompts([12], seed=3)[0]
    eng = make_engine(block_size=4, num_blocks=64, enable_prefix_caching=False)
    drive(eng, [("a", p, greedy(4))])
    run = drive(eng, [("b", p, greedy(4))])
    assert run.final["b"].num_cached_tokens == 0
    assert run.final["b"].outputs[0].token_ids == greedy_ref(p, 4)


@pytest.mark.parametrize("budget", [5, 2048])
def test_identical_prompts_in_flight_together(budget):
    """Copies of a prompt arrive while the first is still being prefilled (chunk by chunk at
    budget 5): a copy may reuse only blocks whose KV is already written."""
    p = random_prompts([23], seed=4)[0]
    eng = make_engine(block_size=4, num_blocks=64, max_num_batched_tokens=budget)
    run = drive(eng, [(i, f"r{i}", p, greedy(6)) for i in range(4)])
    for i in range(4):
        assert run.final[f"r{i}"].outputs[0].token_ids == greedy_ref(p, 6)
    assert any(o.num_cached_tokens for o in run.final.values())


@pytest.mark.parametrize("prompt_len", [6, 8])
def test_n3_greedy_forks_share_prompt(prompt_len):
    p = random_prompts([prompt_len], seed=5)[0]
    other = random_prompts([5], seed=6)[0]
    eng = make_engine(block_size=4, num_blocks=64)
    run = drive(eng, [("r0", p, greedy(9, n=3)), ("r1", other, greedy(9))])
    out = run.final["r0"]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:
        assert c.token_ids == greedy_ref(p, 9)
        assert c.text == out.outputs[0].text
    assert run.final["r1"].outputs[0].token_ids == greedy_ref(other, 9)
    st = eng.manager.stats()
    assert st.forks == 2
    # the prompt was computed once: 2 forks, not 3 admissions of the same prompt
    assert eng.totals["computed_tokens"] == (prompt_len + 8) + 2 * 8 + (5 + 8)
    if prompt_len % 4:
        assert st.cow_copies >= 2  # the shared partial last block is copied on first write
    assert eng.manager.num_used_blocks == 0


@pytest.mark.parametrize("budget", [3, 8, 64])
def test_chunked_prefill_budgets(budget):
    prompts = random_prompts([1, 7, 19, 26], seed=11)
    eng = make_engine(
        block_size=4, num_blocks=128, max_num_batched_tokens=budget, enable_chunked_prefill=True
    )
    sizes = []
    real_execute = eng.executor.execute

    def spy(output):
        sizes.append(output.num_batched_tokens)
        return real_execute(output)

    eng.executor.execute = spy
    run = drive(eng, [(f"r{i}", p, greedy(7)) for i, p in enumerate(prompts)])
    _check_exact(run, prompts, 7)
    assert max(sizes) <= budget
    if budget < 26:
        assert max(sizes) == budget  # the long prompts really were split into chunks


def test_without_chunked_prefill():
    prompts = random_prompts([2, 14, 29], seed=12)
    eng = make_engine(
        block_size=4,
        num_blocks=128,
        enable_chunked_prefill=False,
        max_num_batched_tokens=512,
        max_model_len=512,
    )
    run = drive(eng, [(f"r{i}", p, greedy(6)) for i, p in enumerate(prompts)])
    _check_exact(run, prompts, 6)


def test_max_num_seqs_limits_batch():
    prompts = random_prompts([3, 4, 5, 6, 7], seed=13)
    eng = make_engine(block_size=4, num_blocks=128, max_num_seqs=2)
    widths = []
    run = drive(
        eng,
        [(f"r{i}", p, greedy(5)) for i, p in enumerate(prompts)],
        on_step=lambda e, _: widths.append(len(e.scheduler.running)),
    )
    _check_exact(run, prompts, 5)
    assert max(widths) <= 2


def test_max_num_seqs_counts_forks_still_to_come():
    """An n=3 request whose prompt is still being chunked will fork 2 more samples; admitting
    others into those seats would run 5 sequences under max_num_seqs=3."""
    prompts = random_prompts([10, 2, 2, 2], seed=14)
    eng = make_engine(block_size=4, num_blocks=128, max_num_seqs=3, max_num_batched_tokens=8)
    widths = []
    run = drive(
        eng,
        [
            ("r0", prompts[0], greedy(4, n=3)),
            *[(f"r{i}", p, greedy(12)) for i, p in enumerate(prompts) if i],
        ],
        on_step=lambda e, _: widths.append(len(e.scheduler.running)),
    )
    _check_exact(run, prompts[:1], 4)
    for i in (1, 2, 3):
        assert run.final[f"r{i}"].outputs[0].token_ids == greedy_ref(prompts[i], 12)
    assert max(widths) == 3


@pytest.mark.parametrize(
    ("mode", "extra"),
    [("recompute", {}), ("swap", {"num_host_blocks": 64})],
)
@pytest.mark.parametrize("budget", [5, 64])
def test_forced_preemption_exact(mode, extra, budget):
    prompts = random_prompts([9, 11, 6, 14, 3], seed=21)
    eng = make_engine(
        block_size=4, num_blocks=14, preemption_mode=mode, max_num_batched_tokens=budget, **extra
    )
    run = drive(eng, [(f"r{i}", p, greedy(16)) for i, p in enumerate(prompts)])
    _check_exact(run, prompts, 16)
    assert eng.scheduler.num_preemptions > 0
    st = eng.manager.stats()
    assert st.preemptions == eng.scheduler.num_preemptions
    assert sum(o.metrics.num_preemptions for o in run.final.values()) == st.preemptions
    if mode == "swap":
        assert st.swapped_out_blocks > 0
        assert st.swapped_in_blocks == st.swapped_out_blocks
    else:
        assert st.swapped_out_blocks == 0
    assert eng.manager.num_used_blocks == 0
    assert eng.manager.num_free_host_blocks == extra.get("num_host_blocks", 0)


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preemption_with_forks(mode):
    prompts = random_prompts([6, 10], seed=22)
    eng = make_engine(block_size=4, num_blocks=14, preemption_mode=mode, num_host_blocks=64)
    run = drive(eng, [("r0", prompts[0], greedy(14, n=3)), ("r1", prompts[1], greedy(14))])
    _check_exact(run, prompts, 14)
    assert eng.scheduler.num_preemptions > 0
    assert eng.manager.num_used_blocks == 0


@pytest.mark.parametrize("mode", ["recompute", "swap"])
def test_preempted_pool_sized_request_comes_back(mode):
    """B needs 13 of the 14 blocks; A's growth preempts it. Swapping B back in must not demand
    more than the whole pool (it used to ask for held + growth + 1 spare = 15 and stayed
    swapped out forever)."""
    a, b = random_prompts([3], seed=25)[0], random_prompts([49], seed=26)[0]
    eng = make_engine(block_size=4, num_blocks=14, preemption_mode=mode, num_host_blocks=32)
    run = drive(eng, [("a", a, greedy(20)), ("b", b, greedy(7))], max_steps=300)
    assert run.final["a"].outputs[0].token_ids == greedy_ref(a, 20)
    assert run.final["b"].outputs[0].token_ids == greedy_ref(b, 7)
    assert run.final["b"].metrics.num_preemptions == 1
    if mode == "swap":
        assert eng.manager.stats().swapped_in_blocks == 13


def test_swap_falls_back_to_recompute_when_host_pool_is_small():
    prompts = random_prompts([9, 11, 6, 14], seed=23)
    eng = make_engine(block_size=4, num_blocks=14, preemption_mode="swap", num_host_blocks=1)
    run = drive(eng, [(f"r{i}", p, greedy(16)) for i, p in enumerate(prompts)])
    _check_exact(run, prompts, 16)
    assert eng.scheduler.num_preemptions > 0


@pytest.mark.parametrize(
    ("policy", "expected"), [("priority", ["r1", "r2", "r0"]), ("fcfs", ["r0", "r1", "r2"])]
)
def test_scheduling_policy_orders_requests(policy, expected):
    prompts = random_prompts([5, 5, 5], seed=24)
    eng = make_engine(block_size=4, num_blocks=64, scheduling_policy=policy, max_num_seqs=1)
    for i, (p, prio) in enumerate(zip(prompts, [5, 0, 1], strict=True)):
        if policy == "fcfs" and prio:  # priorities need priority scheduling (as in vLLM)
            with pytest.raises(InvalidArgumentError, match="scheduling_policy"):
                eng.add_request(f"r{i}", p, greedy(3), priority=prio)
            prio = 0
        eng.add_request(f"r{i}", p, greedy(3), priority=prio)
    order = []
    while eng.has_unfinished_requests():
        order += [o.request_id for o in eng.step() if o.finished]
        eng.check_integrity()
    assert order == expected


def test_priority_preempts_the_least_urgent():
    prompts = random_prompts([9, 11, 6], seed=27)
    eng = make_engine(block_size=4, num_blocks=10, scheduling_policy="priority")
    for i, (p, prio) in enumerate(zip(prompts, [2, 1, 0], strict=True)):
        eng.add_request(f"r{i}", p, greedy(14), priority=prio)
    run = drive(eng)
    _check_exact(run, prompts, 14)
    pre = {rid: o.metrics.num_preemptions for rid, o in run.final.items()}
    assert pre["r2"] == 0  # the most urgent request is never the victim
    assert pre["r0"] > 0


@pytest.mark.parametrize("policy", ["lru", "longest", "newest", "priority"])
def test_preemption_policy_picks_victims_and_tokens_stay_exact(policy):
    prompts = random_prompts([9, 21, 6, 14, 3], seed=29)
    eng = make_engine(block_size=4, num_blocks=14, preemption_policy=policy)
    victims = []
    preempt = eng.scheduler._preempt

    def spy(seq):
        victims.append((seq.seq_id, len(seq.tokens), seq.num_computed))
        preempt(seq)

    eng.scheduler._preempt = spy
    run = drive(eng, [(f"r{i}", p, greedy(16)) for i, p in enumerate(prompts)])
    _check_exact(run, prompts, 16)
    assert victims, "the pool is small enough to force preemption"


def test_unknown_preemption_policy_is_refused():
    from pagedkv.errors import ConfigError

    with pytest.raises(ConfigError, match="preemption_policy"):
        make_engine(block_size=4, num_blocks=14, preemption_policy="random")


def test_each_prompt_block_is_hashed_once_through_chunked_prefill():
    """The scheduler hashes a prompt once (lookup, admission of the first chunk, and the blocks
    later chunks fill all use that ``HashedPrompt``): a prompt of ``k`` full blocks costs ``k``
    block hashes plus its root, however many chunks it is computed in."""
    eng = make_engine(
        block_size=4, num_blocks=64, enable_chunked_prefill=True, max_num_batched_tokens=6
    )
    cache = eng.manager.prefix_cache.hasher
    digests: list[bytes] = []
    real = cache.hash_fn

    def counting(data: bytes) -> bytes:
        digests.append(data)
        return real(data)

    cache.hash_fn = counting
    prompt = random_prompts([27], seed=11)[0]  # 6 full blocks of 4, then 3 tokens
    run = drive(eng, [("r", prompt, greedy(1))])  # one new token: fills no block
    assert run.final["r"].outputs[0].token_ids == greedy_ref(prompt, 1)
    assert len(digests) == 6 + 1, len(digests)  # chunked over 5 steps of <= 6 tokens
    assert run.steps >= 5


def test_prompts_are_not_hashed_when_nothing_uses_the_hashes():
    """No prefix cache and no KV tier: the scheduler admits the tokens as they are."""
    eng = make_engine(block_size=4, num_blocks=64, enable_prefix_caching=False)
    hasher = eng.manager.prefix_cache.hasher
    calls: list[bytes] = []
    real = hasher.hash_fn
    hasher.hash_fn = lambda data: calls.append(data) or real(data)
    prompt = random_prompts([27], seed=12)[0]
    run = drive(eng, [("r", prompt, greedy(2))])
    assert run.final["r"].outputs[0].token_ids == greedy_ref(prompt, 2)
    assert calls == []


def test_runner_refuses_a_second_salt_for_a_hashed_prompt():
    eng = make_engine(block_size=4, num_blocks=64)
    hashed = eng.manager.hash_prompt(random_prompts([9], seed=3)[0], cache_salt="a")
    with pytest.raises(InvalidArgumentError, match="hash_prompt"):
        eng.runner.admit("x", hashed, cache_salt="b")
    assert "x" not in eng.manager
    assert eng.runner.admit("x", hashed) == 0


def test_priority_preemption_policy_spares_the_important_late_arrival():
    """``preemption_policy="priority"`` orders victims by the manager's per-sequence priority:
    the engine must hand each request's priority to the manager, or every sequence has
    priority 0 and the newest one (here the most important) is preempted first."""
    low_p, high_p = random_prompts([8, 11], seed=31)
    eng = make_engine(
        block_size=4, num_blocks=10, scheduling_policy="priority", preemption_policy="priority"
    )
    eng.add_request("low", low_p, greedy(20), priority=5)
    eng.step()  # "low" is admitted first, so "high" is the newer sequence
    eng.add_request("high", high_p, greedy(20), priority=0)
    eng.step()
    victims = []
    preempt = eng.scheduler._preempt

    def spy(seq):
        victims.append(seq.request.request_id)
        preempt(seq)

    eng.scheduler._preempt = spy
    run = drive(eng)
    assert victims, "the pool is small enough to force preemption"
    assert set(victims) == {"low"}
    assert run.final["high"].metrics.num_preemptions == 0
    assert run.final["high"].outputs[0].token_ids == greedy_ref(high_p, 20)
    assert run.final["low"].outputs[0].token_ids == greedy_ref(low_p, 20)
