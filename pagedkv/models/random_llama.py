"""Seeded random-weight Llama models with a byte-level tokenizer, built in code, fully offline.

Why: tests and benchmarks need the whole text path (tokenize, chat template, EOS, detokenize)
without a 25 s model load or any download. The tokenizer is byte-level (every UTF-8 byte is a
token, no merges), so any text round-trips exactly, including emoji and text split mid-character
by a stop string. Its special tokens and ChatML template mirror SmolLM2's, so code written against
the tiny model behaves the same on the real one:

- id 0 ``<|endoftext|>`` (pad/unk), id 1 ``<|im_start|>`` (bos), id 2 ``<|im_end|>`` (eos);
- ids 3..258: the bytes 0..255 (token id = byte + 3);
- ids 259..vocab_size-1: ``<|reserved_k|>`` special tokens, so the vocabulary can have any size.

Weights are drawn from a private RNG seeded with ``seed``: the same seed gives the same model,
and the caller's global torch RNG state is left untouched.
"""

from __future__ import annotations

from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.models.loader import LoadedModel, finish_loaded

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE_OFFSET = len(SPECIAL_TOKENS)
MIN_VOCAB = BYTE_OFFSET + 256
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

TINY_LLAMA: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "tie_word_embeddings": False,
}
# ~49M parameters, shaped like a small real Llama (GQA 8/2, head_dim 64).
LLAMA_50M: dict[str, Any] = {
    "vocab_size": 320,
    "hidden_size": 512,
    "intermediate_size": 1536,
    "num_hidden_layers": 16,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
    "tie_word_embeddings": False,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character map, the alphabet of the ByteLevel pre-tokenizer."""
    keep = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars = list(keep)
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(keep, chars, strict=True)}


def byte_tokenizer(vocab_size: int = TINY_LLAMA["vocab_size"]) -> Any:
    """A ``PreTrainedTokenizerFast`` over bytes with SmolLM2-like specials and chat template."""
    if vocab_size < MIN_VOCAB:
        raise InvalidArgumentError(
            f"vocab_size must be >= {MIN_VOCAB} for the byte tokenizer, got {vocab_size}"
        )
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast as FastTokenizer

    byte_chars = _bytes_to_unicode()
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    vocab.update({byte_chars[b]: BYTE_OFFSET + b for b in range(256)})
    reserved = [f"<|reserved_{k}|>" for k in range(vocab_size - MIN_VOCAB)]
    vocab.update({tok: MIN_VOCAB + k for k, tok in enumerate(reserved)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in (*SPECIAL_TOKENS, *reserved)]
    )
    fast: Any = FastTokenizer  # untyped constructor
    tokenizer = fast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[BOS_ID],
        eos_token=SPECIAL_TOKENS[EOS_ID],
        pad_token=SPECIAL_TOKENS[PAD_ID],
        unk_token=SPECIAL_TOKENS[PAD_ID],
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def random_llama(
    seed: int = 0,
    *,
    name: str | None = None,
    dtype: Any = "float32",
    device: Any = "cpu",
    **config: Any,
) -> LoadedModel:
    """A random-weight ``LlamaForCausalLM`` (config from ``config``) with the byte tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab_size = int(config.get("vocab_size", TINY_LLAMA["vocab_size"]))
    tokenizer = byte_tokenizer(vocab_size)
    ids = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    try:
        cfg = LlamaConfig(**{**ids, **config})
    except (TypeError, ValueError) as exc:
        raise InvalidArgumentError(f"invalid Llama config: {exc}") from exc
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = cfg.eos_token_id
    model.generation_config.pad_token_id = cfg.pad_token_id
    return finish_loaded(
        model, tokenizer, name or f"random-llama-seed{seed}", dtype=dtype, device=device
    )


def tiny_random_llama(
    seed: int = 0, *, dtype: Any = "float32", device: Any = "cpu", **overrides: Any
) -> LoadedModel:
    """Tiny (2 layers, hidden 64, vocab 320, ~115k parameters) seeded Llama for fast tests.

    ``overrides`` are ``LlamaConfig`` fields (e.g. ``num_hidden_layers=3``, ``vocab_size=400``).
    """
    return random_llama(
        seed,
        name=f"tiny-random-llama-seed{seed}",
        dtype=dtype,
        device=device,
        **{**TINY_LLAMA, **overrides},
    )


def random_llama_50m(
    seed: int = 0, *, dtype: Any = "float32", device: Any = "cpu", **overrides: Any
) -> LoadedModel:
    """~49M-parameter seeded random Llama (16 layers, hidden 512, GQA 8/2) for benchmarks.

    Big enough that the model, not Python overhead, dominates a step; random weights keep it
    offline. ``overrides`` are ``LlamaConfig`` fields on top of :data:`LLAMA_50M`.
    """
    return random_llama(
        seed,
        name=f"random-llama-50m-seed{seed}",
        dtype=dtype,
        device=device,
        **{**LLAMA_50M, **overrides},
    )
