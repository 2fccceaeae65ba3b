"""Prompts in vLLM's dict forms, ``{"prompt_token_ids": [...]}`` (TokensPrompt) and
``{"prompt": "..."}`` (TextPrompt), through ``LLM.generate``, ``LLMEngine.add_request`` and
``AsyncLLMEngine.submit``: the same tokens as the plain forms; a bad dict is refused with the
key it got wrong named, and nothing is queued."""

from __future__ import annotations

import asyncio

import pytest
from engine_helpers import drive, encode, greedy, greedy_ref, make_engine, tiny_model

from pagedkv.engine import LLM, AsyncLLMEngine, TextPrompt, TokensPrompt
from pagedkv.errors import InvalidArgumentError

IDS = [10, 20, 30, 40, 50]
TEXT = "Paged attention"


def test_llm_generate_takes_tokens_and_text_prompt_dicts():
    llm = LLM(tiny_model(), block_size=4, num_blocks=128)
    tokens: TokensPrompt = {"prompt_token_ids": IDS}
    text: TextPrompt = {"prompt": TEXT}
    outs = llm.generate([tokens, text, IDS, TEXT], greedy(6))
    assert [o.prompt for o in outs] == [None, TEXT, None, TEXT]
    for o, ids in zip(outs, [IDS, encode(TEXT), IDS, encode(TEXT)], strict=True):
        assert o.prompt_token_ids == ids
        assert o.outputs[0].token_ids == greedy_ref(ids, 6)
    single = llm.generate(tokens, greedy(6))  # one dict is one prompt
    assert len(single) == 1
    assert single[0].outputs[0].token_ids == greedy_ref(IDS, 6)


def test_engine_add_request_takes_prompt_dicts():
    eng = make_engine(block_size=4, num_blocks=64)
    run = drive(
        eng,
        [
            ("t", {"prompt_token_ids": tuple(IDS)}, greedy(5)),
            ("x", {"prompt": TEXT}, greedy(5)),
        ],
    )
    assert run.final["t"].outputs[0].token_ids == greedy_ref(IDS, 5)
    assert run.final["x"].prompt == TEXT
    assert run.final["x"].outputs[0].token_ids == greedy_ref(encode(TEXT), 5)


def test_async_submit_takes_prompt_dicts():
    aeng = AsyncLLMEngine(make_engine(block_size=4, num_blocks=64), idle_wait=0.005)

    async def main():
        tokens = aeng.submit({"prompt_token_ids": IDS}, greedy(4))
        text = aeng.submit({"prompt": TEXT}, greedy(4))
        return [o async for o in tokens], [o async for o in text]

    try:
        tokens, text = asyncio.run(main())
    finally:
        aeng.shutdown()
    assert tokens[-1].outputs[0].token_ids == greedy_ref(IDS, 4)
    assert text[-1].outputs[0].token_ids == greedy_ref(encode(TEXT), 4)


BAD_DICTS = [
    pytest.param({"prompt_token_ids": IDS, "prompt": TEXT}, "exactly one of", id="both-keys"),
    pytest.param({}, "exactly one of", id="no-key"),
    pytest.param({"prompt_ids": IDS}, "'prompt_ids'", id="misspelt-key"),
    pytest.param({"prompt": TEXT, "multi_modal_data": {}}, "'multi_modal_data'", id="mm-data"),
    pytest.param({"prompt": TEXT, "cache_salt": "s"}, "'cache_salt'", id="salt-in-dict"),
    pytest.param({"prompt": IDS}, r"prompt\['prompt'\]: expected a str", id="ids-as-text"),
    pytest.param({"prompt_token_ids": TEXT}, r"\['prompt_token_ids'\].*got str", id="text-ids"),
    pytest.param(
        {"prompt_token_ids": [5, "6"]}, r"\['prompt_token_ids'\].*'6' at index 1", id="str-id"
    ),
    pytest.param({"prompt_token_ids": [5, True]}, "True at index 1", id="bool-id"),
]


@pytest.mark.parametrize(("prompt", "named"), BAD_DICTS)
def test_bad_prompt_dict_is_refused_by_key_everywhere(prompt, named):
    eng = make_engine(block_size=4, num_blocks=64)
    with pytest.raises(InvalidArgumentError, match=named):
        eng.add_request("r", prompt, greedy(3))
    llm = LLM(tiny_model(), block_size=4, num_blocks=64)
    with pytest.raises(InvalidArgumentError, match=named):
        llm.generate([{"prompt_token_ids": IDS}, prompt], greedy(3))
    assert not llm.engine.requests  # the good prompt before it was not left queued
    aeng = AsyncLLMEngine(eng, idle_wait=0.005)

    async def submit():
        aeng.submit(prompt, greedy(3))

    try:
        with pytest.raises(InvalidArgumentError, match=named):
            asyncio.run(submit())
    finally:
        aeng.shutdown()
    assert not eng.requests
    eng.check_integrity()
