"""The offline random models: byte tokenizer, chat template, seeding, overrides, folder round trip.

These are what other tests use to exercise text paths quickly, so their contract (ids, EOS,
template, determinism) is pinned here. Fast: the tiny model builds in milliseconds.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pagedkv.errors import InvalidArgumentError  # noqa: E402
from pagedkv.models import (  # noqa: E402
    LLAMA_50M,
    LoadedModel,
    load_model,
    random_llama_50m,
    tiny_random_llama,
)
from pagedkv.models.random_llama import BYTE_OFFSET, EOS_ID  # noqa: E402


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_random_llama(seed=0)


def test_tiny_fields(tiny: LoadedModel) -> None:
    assert tiny.name == "tiny-random-llama-seed0"
    assert tiny.eos_token_ids == [EOS_ID]
    assert tiny.tokenizer.eos_token == "<|im_end|>"
    assert tiny.max_model_len == 512
    assert tiny.has_chat_template
    assert not tiny.model.training
    assert tiny.model.dtype == torch.float32
    assert len(tiny.tokenizer) == tiny.model.config.vocab_size == 320


@pytest.mark.parametrize(
    "text", ["Hello, world!", "  two  spaces\nnew line\t", "wörld 🌍 日本", ""]
)
def test_byte_tokenizer_round_trips(tiny: LoadedModel, text: str) -> None:
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert ids == [b + BYTE_OFFSET for b in text.encode()]
    assert tiny.tokenizer.decode(ids) == text


def test_chat_template_and_special_tokens(tiny: LoadedModel) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    text = tiny.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = tiny.tokenizer.encode(text, add_special_tokens=False)
    assert ids[0] == 1
    assert EOS_ID in ids
    assert (
        tiny.tokenizer.decode(ids, skip_special_tokens=True) == "system\nBe brief.\nuser\nhi\n"
        "assistant\n"
    )


def test_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b, c = tiny_random_llama(seed=7), tiny_random_llama(seed=7), tiny_random_llama(seed=8)
    assert torch.equal(torch.rand(1), before)  # global RNG untouched by model building
    for (_, pa), (_, pb) in zip(
        a.model.named_parameters(), b.model.named_parameters(), strict=True
    ):
        assert torch.equal(pa, pb)
    assert not torch.equal(a.model.lm_head.weight, c.model.lm_head.weight)


def test_greedy_generate_is_deterministic(tiny: LoadedModel) -> None:
    enc = tiny.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hello"}],
        add_generation_prompt=True,
        return_dict=True,
        return_tensors="pt",
    )
    outs = [tiny.model.generate(**enc, max_new_tokens=6, do_sample=False) for _ in range(2)]
    assert torch.equal(outs[0], outs[1])
    assert outs[0].shape[1] <= enc["input_ids"].shape[1] + 6
    assert isinstance(tiny.tokenizer.decode(outs[0][0]), str)


def test_overrides_dtype_and_bad_values() -> None:
    lm = tiny_random_llama(seed=1, num_hidden_layers=3, vocab_size=400, dtype="bf16")
    assert lm.model.config.num_hidden_layers == 3
    assert len(lm.tokenizer) == 400
    assert lm.model.dtype == torch.bfloat16
    assert lm.tokenizer.convert_ids_to_tokens(399) == "<|reserved_140|>"
    with pytest.raises(InvalidArgumentError, match="vocab_size"):
        tiny_random_llama(vocab_size=100)
    with pytest.raises(InvalidArgumentError, match="dtype"):
        tiny_random_llama(dtype="int8")
    with pytest.raises(InvalidArgumentError, match="dtype"):
        tiny_random_llama(dtype=torch.int64)


def test_save_and_load_folder_round_trip(tiny: LoadedModel, tmp_path) -> None:
    folder = tmp_path / "my-tiny"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    lm = load_model(folder)
    assert lm.name == "my-tiny"
    assert lm.eos_token_ids == tiny.eos_token_ids
    assert lm.max_model_len == tiny.max_model_len
    assert lm.has_chat_template
    assert not lm.model.training
    text = "round trip ✓"
    assert lm.tokenizer.encode(text) == tiny.tokenizer.encode(text)
    ids = torch.tensor([tiny.tokenizer.encode(text)])
    with torch.no_grad():
        assert torch.equal(lm.model(ids).logits, tiny.model(ids).logits)
    assert load_model(str(folder), dtype=torch.float16).model.dtype == torch.float16


def test_random_llama_50m_size() -> None:
    lm = random_llama_50m(seed=0)
    n = sum(p.numel() for p in lm.model.parameters())
    assert 45e6 < n < 55e6
    assert lm.model.config.num_hidden_layers == LLAMA_50M["num_hidden_layers"]
    assert lm.max_model_len == LLAMA_50M["max_position_embeddings"]
    assert lm.name == "random-llama-50m-seed0"
    assert lm.eos_token_ids == [EOS_ID]
