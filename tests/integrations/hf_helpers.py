"""Shared by the integration tests: a tiny text-model config, seeded prompts and HF's own
greedy continuation (the reference every exactness test compares with)."""

from __future__ import annotations

from typing import Any

import torch

# A small decoder with grouped KV heads: fields every transformers text config takes.
TINY_TEXT: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
    "pad_token_id": 0,
}


def hf_greedy(model: Any, prompt: list[int], n: int, **generate_kwargs: Any) -> list[int]:
    """The (at most) ``n`` tokens ``model.generate`` appends to ``prompt`` greedily, without
    padding; ``generate_kwargs`` go to ``generate`` (e.g. ``eos_token_id``)."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=n,
        do_sample=False,
        pad_token_id=0,
        **generate_kwargs,
    )
    return list(out[0, len(prompt) :].tolist())


def seeded_prompts(lengths: list[int], seed: int = 0, low: int = 3, vocab: int = 128) -> list[Any]:
    """Prompts of the given lengths, token ids drawn from ``[low, vocab)``."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (n,), generator=g).tolist() for n in lengths]
