"""Transformers models generating through pagedkv match HF's own cache token for token.

Reference: per-prompt *unpadded* ``model.generate`` (greedy, default DynamicCache, sdpa) — exact,
since padding changes nothing in our packed varlen batch either. All fp32, seeded, offline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hf_helpers import hf_greedy, seeded_prompts

from pagedkv.core import CacheConfig
from pagedkv.errors import DuplicateSequenceError, InvalidArgumentError, OutOfBlocksError
from pagedkv.integrations import PagedModelRunner

transformers = pytest.importorskip("transformers")


def _prompts(lengths, seed=0, vocab=160):
    return seeded_prompts(lengths, seed, low=1, vocab=vocab)


SMALL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 160,
    "max_position_embeddings": 256,
}


def _model(family: str, **over):
    kw = {**SMALL, **over}
    cls = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
    }[family]
    torch.manual_seed(1234)
    return cls[1](cls[0](**kw)).eval()


@pytest.mark.parametrize(
    ("family", "over"),
    [
        ("llama", {"num_key_value_heads": 2}),  # GQA
        ("llama", {"num_key_value_heads": 4}),  # MHA
        ("qwen2", {"num_key_value_heads": 1}),  # MQA, qkv bias
        ("mistral", {"num_key_value_heads": 2, "sliding_window": None}),
    ],
)
def test_batched_generation_matches_hf(family, over):
    model = _model(family, **over)
    prompts = _prompts([1, 5, 8, 13, 21])
    n = 10
    runner = PagedModelRunner(model, block_size=4, num_blocks=96)
    got = runner.generate(prompts, n)
    assert got == [hf_greedy(model, p, n) for p in prompts]
    runner.check_integrity()
    assert runner.manager.num_used_blocks == 0


def test_mistral_sliding_window_matches_hf():
    model = _model("mistral", num_key_value_heads=2, sliding_window=6)
    prompts = _prompts([3, 9, 14], seed=1)
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    assert runner.sliding_window is not None
    assert runner.sliding_window.window_tokens == 6
    got = runner.generate(prompts, 9, seq_ids=["a", "b", "c"], free=False)
    assert got == [hf_greedy(model, p, 9) for p in prompts]
    # the manager released the blocks wholly behind the window: 22 tokens keep 2-3 blocks
    table = runner.manager.block_table("c")
    assert table[:3] == [0, 0, 0]
    assert sum(b != 0 for b in table) <= 3
    runner.check_integrity()


def test_sliding_window_only_when_every_layer_slides():
    from pagedkv.integrations.hf_config import model_sliding_window

    assert model_sliding_window(_model("mistral", sliding_window=6).config) == 6
    assert model_sliding_window(_model("llama").config) is None
    qwen = _model("qwen2", sliding_window=6, use_sliding_window=True, max_window_layers=1)
    assert model_sliding_window(qwen.config) is None  # layer 1 of 2 is full attention


def test_prefix_cache_hits_match_hf():
    model = _model("llama", num_key_value_heads=2)
    shared = _prompts([11], seed=2)[0]
    tails = _prompts([1, 4, 6], seed=3)
    prompts = [shared + t for t in tails]
    runner = PagedModelRunner(model, block_size=4, num_blocks=96)
    want = [hf_greedy(model, p, 8) for p in prompts]
    # Same batch: blocks become findable only once a forward wrote (committed) their KV, so
    # prompts admitted together all miss; each computes its own copy of the shared prefix.
    hits = [runner.admit(i, p) for i, p in enumerate(prompts)]
    assert hits == [0, 0, 0]
    toks = runner.forward([0, 1, 2]).argmax(-1).tolist()
    out = [[t] for t in toks]
    for _ in range(7):
        runner.append_batch([0, 1, 2], toks)
        toks = runner.forward([0, 1, 2]).argmax(-1).tolist()
        for o, t in zip(out, toks, strict=True):
            o.append(t)
    assert out == want
    for i in range(3):
        runner.free(i)
    # Later batch: served from the prefix cache of freed sequences.
    assert runner.generate(prompts, 8, seq_ids=["x", "y", "z"]) == want
    assert runner.manager.counters.prefix_hit_tokens >= 3 * 8
    runner.check_integrity()


def test_forked_continuations_copy_on_write_match_hf():
    model = _model("qwen2", num_key_value_heads=2)
    prompt = _prompts([10], seed=4)[0]  # 10 % 4 != 0: the fork shares a partial block
    runner = PagedModelRunner(model, block_size=4, num_blocks=64)
    runner.admit("p", prompt)
    logits = runner.forward(["p"])[0]
    first_p, first_c = logits.topk(2).indices.tolist()
    runner.fork("p", "c")
    shared = runner.manager.block_table("p")
    assert runner.manager.block_table("c") == shared
    toks = [first_p, first_c]
    outs: list[list[int]] = [[first_p], [first_c]]
    for _ in range(8):
        runner.append_batch(["p", "c"], toks)
        toks = runner.forward(["p", "c"]).argmax(-1).tolist()
        for o, t in zip(outs, toks, strict=True):
            o.append(t)
    assert runner.manager.counters.cow_copies >= 1
    assert runner.manager.block_table("c")[:2] == shared[:2]  # full blocks still shared
    assert outs[0] == hf_greedy(model, prompt, 9)
    assert outs[1] == [first_c, *hf_greedy(model, [*prompt, first_c], 8)]
    runner.check_integrity()


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_logits_match_hf_full_forward(family):
    model = _model(family, num_key_value_heads=2)
    prompts = _prompts([6, 17], seed=5)
    runner = PagedModelRunner(model, block_size=4, num_blocks=64, enable_prefix_caching=False)
    seqs = [list(p) for p in prompts]
    for i, p in enumerate(prompts):
        runner.admit(i, p)
    for step in range(4):
        logits = runner.forward([0, 1])
        with torch.no_grad():
            for i, s in enumerate(seqs):
                ref = model(torch.tensor([s])).logits[0, -1]
                torch.testing.assert_close(logits[i], ref, atol=1e-4, rtol=1e-4)
        toks = logits.argmax(-1).tolist()
        if step < 3:
            runner.append_batch([0, 1], toks)
            for s, t in zip(seqs, toks, strict=True):
                s.append(t)


def test_budget_config_and_misuse_errors():
    model = _model("llama", num_key_value_heads=2)
    cfg = CacheConfig.from_memory_budget(
        64 * 1024, block_size=4, num_layers=2, num_kv_heads=2, head_dim=16, dtype=torch.float32
    )
    runner = PagedModelRunner(model, config=cfg)
    assert runner.storage.num_blocks == cfg.num_blocks
    per_block = runner.storage.kv_cache.numel() * 4 // cfg.num_blocks
    assert cfg.num_usable_blocks * per_block <= 64 * 1024 < cfg.num_blocks * per_block
    with pytest.raises(InvalidArgumentError, match="pending"):
        runner.forward(["nope"])
    runner.admit("a", [1, 2, 3])
    with pytest.raises(InvalidArgumentError, match="computed by forward"):
        runner.append("a", [4])
    runner.forward(["a"])
    runner.append("a", [4, 5])
    assert runner.forward(["a"]).shape == (1, 160)
    model.config._attn_implementation = "pagedkv"
    try:
        with pytest.raises(InvalidArgumentError, match="PagedStep"):
            model(torch.tensor([[1, 2]]))
    finally:
        model.config._attn_implementation = "sdpa"


def _tiny_llama():
    return _model("llama", num_key_value_heads=2, vocab_size=256)


def test_failed_generate_frees_everything_and_runner_stays_usable():
    model = _tiny_llama()
    p20, p40 = _prompts([20, 40], seed=6, vocab=256)
    want = hf_greedy(model, p20, 8)
    runner = PagedModelRunner(model, block_size=4, num_blocks=12)
    # 15 blocks needed, 11 usable: fails admitting the 2nd prompt; the 1st was never computed.
    with pytest.raises(OutOfBlocksError):
        runner.generate([p20, p40], 8, seq_ids=["a", "b"])
    runner.check_integrity()
    assert runner.manager.seq_ids == []
    assert runner.manager.num_used_blocks == 0
    assert runner.generate([p20], 8, seq_ids=["a"]) == [want]  # ids are free again
    runner.check_integrity()
    # Fails mid-decode: both prompts fit (10 blocks) but decode needs 2 more.
    q20 = _prompts([20], seed=7, vocab=256)[0]
    with pytest.raises(OutOfBlocksError):
        runner.generate([p20, q20], 8)
    runner.check_integrity()
    assert runner.manager.num_used_blocks == 0
    assert runner.generate([q20], 8) == [hf_greedy(model, q20, 8)]
    assert runner.generate([p20], 8) == [want]
    runner.check_integrity()
    # A pool too small for one prompt.
    with pytest.raises(OutOfBlocksError):
        runner.generate([p40 + p20], 2)
    runner.check_integrity()
    assert runner.generate([p20], 8) == [want]


def test_uncomputed_twin_prompt_is_never_read():
    model = _tiny_llama()
    p = _prompts([18], seed=8, vocab=256)[0]
    fresh = PagedModelRunner(model, block_size=4, num_blocks=32)
    fresh.admit("f", p)
    ref = fresh.forward(["f"])
    runner = PagedModelRunner(model, block_size=4, num_blocks=32)
    runner.admit("x", p)
    runner.check_integrity()
    runner.admit("y", p)  # x's blocks hold no KV yet: y must not hit them
    runner.check_integrity()
    torch.testing.assert_close(runner.forward(["y"]), ref, atol=1e-5, rtol=1e-5)
    runner.check_integrity()
    torch.testing.assert_close(runner.forward(["x"]), ref, atol=1e-5, rtol=1e-5)
    runner.check_integrity()
    # once computed (committed), the prompt's full blocks are hits
    assert runner.admit("z", p) == 16
    torch.testing.assert_close(runner.forward(["z"]), ref, atol=1e-5, rtol=1e-5)
    runner.check_integrity()


@pytest.mark.parametrize(
    "bad",
    [
        [1, 256],
        [-1, 2],
        [1.5, 2.0],
        ["1", "2"],
        [],
        None,
        [True, False],
        np.array([2**64 - 1], dtype=np.uint64),
    ],
)
def test_token_ids_validated_against_vocab_before_any_change(bad):
    model = _tiny_llama()
    runner = PagedModelRunner(model, block_size=4, num_blocks=12)
    with pytest.raises(InvalidArgumentError):
        runner.admit("a", bad)
    with pytest.raises(InvalidArgumentError):
        runner.generate([[1, 2, 3], bad], 2)
    assert runner.manager.seq_ids == []
    runner.check_integrity()
    runner.admit("a", [1, 2, 3])
    runner.forward(["a"])
    with pytest.raises(InvalidArgumentError):
        runner.append("a", bad)
    with pytest.raises(InvalidArgumentError):
        runner.append_batch(["a"], bad)
    assert runner.manager.num_tokens("a") == 3
    runner.check_integrity()
    runner.append_batch(["a"], [255])  # the last id is in the vocabulary
    assert runner.forward(["a"]).shape == (1, 256)
    runner.check_integrity()


def test_bad_generate_arguments_change_nothing():
    model = _tiny_llama()
    runner = PagedModelRunner(model, block_size=4, num_blocks=12)
    for n in (0, 1.5, True, "2"):
        with pytest.raises(InvalidArgumentError, match="max_new_tokens"):
            runner.generate([[1, 2]], n)
    with pytest.raises(InvalidArgumentError, match="distinct"):
        runner.generate([[1, 2], [3]], 2, seq_ids=["a", "a"])
    runner.admit("a", [1, 2])
    with pytest.raises(DuplicateSequenceError):  # "a" exists: generate must not free it
        runner.generate([[5, 6], [1, 2]], 2, seq_ids=["b", "a"])
    assert runner.manager.seq_ids == ["a"]
    runner.check_integrity()
    runner.forward(["a"])
