"""The offline ``LLM`` interface (vLLM's ``generate`` / ``chat``) and cache salts."""

from __future__ import annotations

import pytest
from engine_helpers import decode, drive, encode, greedy, greedy_ref, make_engine, tiny_model

from pagedkv.engine import LLM, apply_chat_template
from pagedkv.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def llm():
    return LLM(tiny_model(), block_size=4, num_blocks=128)


def test_generate_mixed_prompts_in_order(llm):
    prompts = ["Hi", [10, 20, 30, 40, 50], "A longer prompt than the others"]
    outs = llm.generate(prompts, [greedy(5), greedy(7), greedy(3, n=2)])
    assert [o.prompt for o in outs] == ["Hi", None, prompts[2]]
    ids = [encode("Hi"), prompts[1], encode(prompts[2])]
    for o, p, n in zip(outs, ids, (5, 7, 3), strict=True):
        assert o.finished
        assert o.prompt_token_ids == p
        for c in o.outputs:
            assert c.token_ids == greedy_ref(p, n)
            assert c.text == decode(c.token_ids)
    assert len(outs[2].outputs) == 2
    single = llm.generate([10, 20, 30, 40, 50], greedy(7))  # one prompt of token ids
    assert len(single) == 1
    assert single[0].outputs[0].token_ids == outs[1].outputs[0].token_ids
    assert not llm.engine.requests
    assert llm.engine.manager.num_used_blocks == 0


def test_chat_uses_template(llm):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    ids = apply_chat_template(llm.tokenizer, msgs)
    assert decode(ids).startswith("system\nBe brief.")  # specials skipped in decode
    assert llm.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    out = llm.chat(msgs, greedy(6))
    assert out[0].prompt_token_ids == ids
    assert out[0].outputs[0].token_ids == greedy_ref(ids, 6)
    two = llm.chat([msgs, msgs[1:]], greedy(2))
    assert len(two) == 2
    with pytest.raises(InvalidArgumentError):
        llm.chat([{"role": "user"}])


def test_cache_salt_isolates_prefix_cache():
    p = list(range(10, 23))
    eng = make_engine(block_size=4, num_blocks=64)
    drive(eng, [("a", p, greedy(3))])
    eng.add_request("salted", p, greedy(3), cache_salt="tenant-1")
    run = drive(eng)
    assert run.final["salted"].num_cached_tokens == 0
    eng.add_request("salted2", p, greedy(3), cache_salt="tenant-1")
    eng.add_request("plain", p, greedy(3))
    run = drive(eng)
    assert run.final["salted2"].num_cached_tokens == 12
    assert run.final["plain"].num_cached_tokens == 12
    for r in ("salted2", "plain"):
        assert run.final[r].outputs[0].token_ids == greedy_ref(p, 3)
