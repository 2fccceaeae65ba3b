"""Bad input gets a typed ``InvalidArgumentError`` at submission and changes nothing; an exception
inside a step fails only the requests it concerns and the engine keeps serving."""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import drive, greedy, greedy_ref, make_engine, random_prompts, tiny_model

from pagedkv.engine import LLM, DuplicateRequestError, SamplingParams
from pagedkv.errors import InvalidArgumentError

PROMPTS = random_prompts([5, 9, 14], seed=51)


def _state(eng):
    sch = eng.scheduler
    return (
        dict(eng.requests),
        [s.seq_id for s in sch.waiting],
        [s.seq_id for s in sch.running],
        [s.seq_id for s in sch.swapped],
        eng.manager.num_used_blocks,
        sorted(map(str, eng.manager.seq_ids)),
        eng.totals["prompt_tokens"],
        eng._arrivals,
    )


@pytest.fixture
def busy_engine():
    """An engine part-way through serving two requests (one waiting on a small budget)."""
    eng = make_engine(
        block_size=4, num_blocks=16, max_model_len=128, max_num_batched_tokens=6, max_num_seqs=4
    )
    eng.add_request("a", PROMPTS[0], greedy(8))
    eng.add_request("b", PROMPTS[2], greedy(8))
    eng.step()
    eng.check_integrity()
    assert eng.scheduler.running
    return eng


BAD_SUBMISSIONS = [
    pytest.param("x", "", None, {}, id="empty-text"),
    pytest.param("x", [], None, {}, id="empty-ids"),
    pytest.param("x", [5, 320], None, {}, id="id-eq-vocab"),
    pytest.param("x", [5, 10_000], None, {}, id="id-over-vocab"),
    pytest.param("x", [-1, 5], None, {}, id="negative-id"),
    pytest.param("x", [5, True], None, {}, id="bool-id"),
    pytest.param("x", [5, 6.0], None, {}, id="float-id"),
    pytest.param("x", None, None, {}, id="none-prompt"),
    pytest.param("x", 7, None, {}, id="int-prompt"),
    pytest.param("x", [5] * 125, greedy(5), {}, id="over-max-model-len"),
    pytest.param("x", [5] * 31, greedy(98), {}, id="over-max-model-len-by-one"),
    pytest.param("x", [5] * 50, greedy(15), {}, id="over-kv-pool-by-one"),
    pytest.param("x", [5] * 100, greedy(1), {}, id="prompt-over-kv-pool"),
    pytest.param("x", [5], greedy(4, n=5), {}, id="n-over-max-num-seqs"),
    pytest.param("x", [5], {"temperature": 0}, {}, id="params-dict"),
    pytest.param("a", [5], None, {}, id="duplicate-request-id"),
    pytest.param("x", {"prompt_token_ids": []}, None, {}, id="tokens-prompt-empty"),
    pytest.param("x", {"prompt_token_ids": [5, 320]}, None, {}, id="tokens-prompt-over-vocab"),
    pytest.param("x", {"prompt_token_ids": "ab"}, None, {}, id="tokens-prompt-str"),
    pytest.param("x", {"prompt": [5]}, None, {}, id="text-prompt-ids"),
    pytest.param("x", {"prompt": "a", "prompt_token_ids": [5]}, None, {}, id="both-keys"),
    pytest.param("x", {"prompt": "a", "multi_modal_data": {}}, None, {}, id="unknown-key"),
    pytest.param("x", {}, None, {}, id="empty-dict"),
    pytest.param(7, [5], None, {}, id="int-request-id"),
    pytest.param(None, [5], None, {}, id="none-request-id"),
    pytest.param("x", [5], None, {"priority": "high"}, id="priority-str"),
    pytest.param("x", [5], None, {"priority": 1.5}, id="priority-float"),
    pytest.param("x", [5], None, {"priority": True}, id="priority-bool"),
    pytest.param("x", [5], None, {"cache_salt": 5}, id="cache-salt-int"),
    pytest.param("x", [5], None, {"cache_salt": b"salt"}, id="cache-salt-bytes"),
]


@pytest.mark.parametrize(("rid", "prompt", "params", "kw"), BAD_SUBMISSIONS)
def test_bad_submission_is_refused_and_changes_nothing(busy_engine, rid, prompt, params, kw):
    eng = busy_engine
    before = _state(eng)
    with pytest.raises(InvalidArgumentError):
        eng.add_request(rid, prompt, params, **kw)
    assert _state(eng) == before
    eng.check_integrity()
    eng.step()
    eng.check_integrity()


def test_engine_serves_exactly_after_every_refusal(busy_engine):
    eng = busy_engine
    for rid, prompt, params, kw in (p.values for p in BAD_SUBMISSIONS):
        with pytest.raises(InvalidArgumentError):
            eng.add_request(rid, prompt, params, **kw)
        eng.check_integrity()
    run = drive(eng)
    assert run.final["a"].outputs[0].token_ids == greedy_ref(PROMPTS[0], 8)
    assert run.final["b"].outputs[0].token_ids == greedy_ref(PROMPTS[2], 8)
    assert eng.manager.num_used_blocks == 0
    assert eng.totals["prompt_tokens"] == len(PROMPTS[0]) + len(PROMPTS[2])


def test_limits_are_inclusive():
    eng = make_engine(block_size=4, num_blocks=16, max_model_len=64)
    eng.add_request("fits-len", [5] * 60, greedy(4))  # 64 == max_model_len
    eng.abort("fits-len")
    eng.add_request("fits-pool", [5] * 50, greedy(14))  # 64 tokens == the 16 blocks of 4
    run = drive(eng)
    assert run.final["fits-pool"].outputs[0].token_ids == greedy_ref([5] * 50, 14)


def test_duplicate_request_id_is_refused_where_requests_are_taken_in(busy_engine):
    """``add_validated`` (the async engine's way in, after validation on another thread) checks
    the id itself: a second request under a running id would make the next step raise for
    every request."""
    eng = busy_engine
    before = _state(eng)
    for add in (
        lambda: eng.add_request("a", PROMPTS[1], greedy(3)),
        lambda: eng.add_validated("a", None, PROMPTS[1], greedy(3), 0, None),
    ):
        with pytest.raises(DuplicateRequestError, match="'a' is already in use"):
            add()
        assert _state(eng) == before
    run = drive(eng)
    assert run.final["a"].outputs[0].token_ids == greedy_ref(PROMPTS[0], 8)
    assert run.final["b"].outputs[0].token_ids == greedy_ref(PROMPTS[2], 8)


def test_request_id_reusable_after_finish():
    eng = make_engine(block_size=4, num_blocks=16)
    drive(eng, [("a", PROMPTS[0], greedy(2))])
    run = drive(eng, [("a", PROMPTS[1], greedy(3))])
    assert run.final["a"].outputs[0].token_ids == greedy_ref(PROMPTS[1], 3)


BAD_PARAMS = [
    {"temperature": -1},
    {"temperature": math.nan},
    {"temperature": math.inf},
    {"temperature": True},
    {"temperature": "0.5"},
    {"temperature": None},
    {"top_p": 0},
    {"top_p": 1.5},
    {"top_p": math.nan},
    {"top_p": -0.1},
    {"top_k": -2},
    {"top_k": 2.0},
    {"top_k": "3"},
    {"top_k": True},
    {"min_p": -0.1},
    {"min_p": 1.1},
    {"min_p": math.nan},
    {"n": 0},
    {"n": -1},
    {"n": 1.0},
    {"n": True},
    {"n": "2"},
    {"n": 65},
    {"max_tokens": 0},
    {"max_tokens": -3},
    {"max_tokens": True},
    {"max_tokens": 2.5},
    {"max_tokens": None},
    {"min_tokens": -1},
    {"min_tokens": 5, "max_tokens": 4},
    {"seed": -1},
    {"seed": 1.5},
    {"seed": "1"},
    {"seed": True},
    {"stop": [""]},
    {"stop": [1]},
    {"stop": ""},
    {"stop": 5},
    {"stop": ["ok", None]},
    {"stop_token_ids": [-1]},
    {"stop_token_ids": ["2"]},
    {"stop_token_ids": 2},
    {"stop_token_ids": [True]},
    {"repetition_penalty": 0},
    {"repetition_penalty": -1},
    {"repetition_penalty": math.nan},
    {"presence_penalty": 2.5},
    {"presence_penalty": math.nan},
    {"frequency_penalty": -3},
    {"frequency_penalty": "1"},
    {"logprobs": -1},
    {"logprobs": 21},
    {"logprobs": 1.0},
    {"logprobs": True},
]


@pytest.mark.parametrize("kw", BAD_PARAMS, ids=repr)
def test_invalid_sampling_params(kw):
    with pytest.raises(InvalidArgumentError):
        SamplingParams(**kw)


def test_valid_sampling_param_edges():
    assert SamplingParams(top_k=-1).top_k == 0  # vLLM's "no top-k"
    assert SamplingParams(stop="ab").stop == ["ab"]
    assert SamplingParams(stop=("a", "b")).stop == ["a", "b"]
    assert SamplingParams(temperature=0).greedy
    SamplingParams(top_p=1.0, min_p=1.0, temperature=100, n=64, logprobs=20, seed=2**63 - 1)


def test_llm_generate_refuses_batch_atomically():
    llm = LLM(tiny_model(), block_size=4, num_blocks=32)
    eng = llm.engine
    with pytest.raises(InvalidArgumentError):
        llm.generate([PROMPTS[0], PROMPTS[1], [999]], greedy(4))
    assert not eng.requests
    assert not eng.scheduler.waiting
    assert eng.manager.num_used_blocks == 0
    eng.check_integrity()
    with pytest.raises(InvalidArgumentError):
        llm.generate([PROMPTS[0]], [greedy(4), greedy(4)])
    with pytest.raises(InvalidArgumentError):
        llm.generate([])
    outs = llm.generate([PROMPTS[0], PROMPTS[1]], greedy(4))
    assert [o.outputs[0].token_ids for o in outs] == [
        greedy_ref(PROMPTS[0], 4),
        greedy_ref(PROMPTS[1], 4),
    ]


# --------------------------------------------------------------- failures inside a step
def _fail_once(monkeypatch, obj, name):
    real = getattr(obj, name)
    calls = {"n": 0}

    def wrapper(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return real(*a, **k)

    monkeypatch.setattr(obj, name, wrapper)
    return calls


@pytest.mark.parametrize("where", ["runner", "model"])
def test_forward_failure_fails_its_requests_only(monkeypatch, where):
    eng = make_engine(block_size=4, num_blocks=32)
    if where == "runner":
        _fail_once(monkeypatch, eng.runner, "run_step")
    else:  # inside the model, after copy-on-write copies ran and KV writes may have begun
        _fail_once(monkeypatch, eng.runner.model, "forward")
    eng.add_request("a", PROMPTS[1], greedy(6, n=2))
    eng.add_request("b", PROMPTS[2], greedy(6))
    outs = {o.request_id: o for o in eng.step()}
    eng.check_integrity()
    assert set(outs) == {"a", "b"}
    for o in outs.values():
        assert o.finished
        assert o.error is not None
        assert "boom" in o.error
        assert all(c.finish_reason == "error" for c in o.outputs)
    assert not eng.requests
    assert eng.manager.num_used_blocks == 0
    # later requests succeed, including the very same prompts (no half-written cache hits)
    run = drive(
        eng,
        [
            ("a2", PROMPTS[1], greedy(6, n=2)),
            ("b2", PROMPTS[2], greedy(6)),
            ("c", PROMPTS[0], greedy(6)),
        ],
    )
    for rid, p in (("a2", PROMPTS[1]), ("b2", PROMPTS[2]), ("c", PROMPTS[0])):
        for c in run.final[rid].outputs:
            assert c.token_ids == greedy_ref(p, 6), rid
            assert c.finish_reason == "length"
        assert run.final[rid].error is None


def test_forward_failure_mid_decode_spares_nothing_else(monkeypatch):
    """A failing decode step fails the requests in that step; one that arrives afterwards and
    one still waiting (not scheduled) are untouched."""
    eng = make_engine(block_size=4, num_blocks=32, max_num_seqs=1)
    eng.add_request("a", PROMPTS[0], greedy(6))
    eng.add_request("w", PROMPTS[1], greedy(6))  # waits: max_num_seqs=1
    eng.step()
    eng.step()
    _fail_once(monkeypatch, eng.runner, "run_step")
    outs = eng.step()
    eng.check_integrity()
    assert [o.request_id for o in outs] == ["a"]
    assert outs[0].outputs[0].finish_reason == "error"
    assert outs[0].outputs[0].token_ids == greedy_ref(PROMPTS[0], 2)
    run = drive(eng, [("late", PROMPTS[2], greedy(6))])
    assert run.final["w"].outputs[0].token_ids == greedy_ref(PROMPTS[1], 6)
    assert run.final["late"].outputs[0].token_ids == greedy_ref(PROMPTS[2], 6)
    assert eng.manager.num_used_blocks == 0


def test_sampler_failure_fails_one_request(monkeypatch):
    import pagedkv.engine.model_executor as sr

    real = sr.sample
    # logprobs: not a plain greedy row, so the step's batched argmax does not take it
    bad = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, n=2, logprobs=1)

    def flaky(logits, rows):
        if rows[0].params is bad and len(rows[0].output_ids) == 2:
            raise ValueError("sampler exploded")
        return real(logits, rows)

    monkeypatch.setattr(sr, "sample", flaky)
    eng = make_engine(block_size=4, num_blocks=32)
    run = drive(
        eng,
        [
            ("ok1", PROMPTS[0], greedy(6)),
            ("bad", PROMPTS[1], bad),
            ("ok2", PROMPTS[2], greedy(6, n=2)),
        ],
    )
    b = run.final["bad"]
    assert b.error is not None
    assert "sampler exploded" in b.error
    assert all(c.finish_reason == "error" for c in b.outputs)
    assert all(c.token_ids == greedy_ref(PROMPTS[1], 2) for c in b.outputs)
    for rid, p in (("ok1", PROMPTS[0]), ("ok2", PROMPTS[2])):
        assert run.final[rid].error is None
        for c in run.final[rid].outputs:
            assert c.token_ids == greedy_ref(p, 6)
    assert eng.manager.num_used_blocks == 0


def test_abort_in_every_state():
    eng = make_engine(
        block_size=4,
        num_blocks=14,
        preemption_mode="swap",
        num_host_blocks=64,
        max_num_batched_tokens=4,
    )
    prompts = random_prompts([9, 11, 6, 14], seed=52)
    for i, p in enumerate(prompts):
        eng.add_request(f"r{i}", p, greedy(16, n=2 if i == 1 else 1))
    seen = set()
    aborted = {}
    for _ in range(200):
        if not eng.has_unfinished_requests():
            break
        eng.step()
        eng.check_integrity()
        sch = eng.scheduler
        for state, queue in (
            ("waiting", sch.waiting),
            ("running", sch.running),
            ("swapped", sch.swapped),
        ):
            if queue and state not in seen and queue[-1].request.request_id not in aborted:
                seen.add(state)
                rid = queue[-1].request.request_id
                out = eng.abort(rid)
                eng.check_integrity()
                assert out is not None
                assert out.finished
                assert all(c.finish_reason in ("abort", "length") for c in out.outputs)
                aborted[rid] = out
                assert eng.abort(rid) is None  # already gone
    assert seen == {"waiting", "running", "swapped"}
    assert eng.abort("unknown") is None
    drive(eng)
    assert eng.manager.num_used_blocks == 0
    assert eng.manager.num_free_host_blocks == 64


BAD_CONFIGS = [
    {"block_size": 0},
    {"block_size": True},
    {"num_blocks": 0},
    {"num_blocks": 2.5},
    {"num_blocks": 8, "kv_cache_memory": 1 << 20},
    {"max_num_seqs": 0},
    {"max_num_batched_tokens": 0},
    {"preemption_mode": "drop"},
    {"preemption_mode": "swap"},
    {"num_host_blocks": -1},
    {"scheduling_policy": "lifo"},
    {"watermark": 1.0},
    {"watermark": -0.1},
    {"enable_chunked_prefill": False, "max_num_batched_tokens": 16},  # < max_model_len
]


@pytest.mark.parametrize("options", BAD_CONFIGS, ids=repr)
def test_bad_engine_options(options):
    with pytest.raises(InvalidArgumentError):
        make_engine(**options)


def test_kv_memory_budget_sizes_the_pool():
    from pagedkv.engine.kv_sizing import kv_bytes_per_block
    from pagedkv.integrations.hf_support import check_model_supported

    per_block = kv_bytes_per_block(
        check_model_supported(tiny_model().model).kv_dims, 4, torch.float32
    )
    assert per_block == 2 * 2 * 2 * 16 * 4 * 4  # K+V, layers, kv heads, head dim, slots, fp32
    eng = make_engine(block_size=4, kv_cache_memory=10 * per_block + per_block // 2)
    assert eng.num_usable_blocks == 10
    with pytest.raises(InvalidArgumentError):
        eng.add_request("big", [5] * 40, greedy(1))  # 41 tokens > 10 blocks of 4
    run = drive(eng, [("ok", [5] * 30, greedy(10))])
    assert run.final["ok"].outputs[0].token_ids == greedy_ref([5] * 30, 10)
