"""Checks a request must pass before the engine accepts it, so nothing fails later in a step.

A request is refused (``InvalidArgumentError`` naming the numbers, nothing queued) if it is
empty, has token ids outside the vocabulary, would outgrow the model (prompt + max_tokens >
max_model_len) or could never fit the KV pool on its own (then preempting everything else would
still not let it finish).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pagedkv.engine.llm_engine import LLMEngine


def prompt_token_ids(engine: LLMEngine, prompt: object) -> tuple[str | None, list[int]]:
    """``(text or None, token ids)`` of a prompt given as text or as token ids."""
    if isinstance(prompt, str):
        if engine.tokenizer is None:
            raise InvalidArgumentError("prompt: this engine has no tokenizer; pass token ids")
        return prompt, [int(t) for t in engine.tokenizer.encode(prompt)]
    if isinstance(prompt, list | tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in prompt
    ):
        return None, [int(t) for t in prompt]
    raise InvalidArgumentError(
        f"prompt: expected a str or a list of int token ids, got {type(prompt).__name__}"
    )


def validate_request(
    engine: LLMEngine, prompt: object, params: SamplingParams, priority: object, cache_salt: object
) -> tuple[str | None, list[int]]:
    if not isinstance(params, SamplingParams):
        raise InvalidArgumentError(f"params: expected SamplingParams, got {type(params).__name__}")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidArgumentError(f"priority: expected an int, got {priority!r}")
    if priority and engine.config.scheduling_policy != "priority":
        raise InvalidArgumentError(
            f"priority: got {priority}, but scheduling_policy is "
            f"{engine.config.scheduling_policy!r} (use scheduling_policy='priority')"
        )
    if cache_salt is not None and not isinstance(cache_salt, str):
        raise InvalidArgumentError(f"cache_salt: expected a str, got {type(cache_salt).__name__}")
    text, ids = prompt_token_ids(engine, prompt)
    if not ids:
        raise InvalidArgumentError("prompt: expected at least one token, got an empty prompt")
    bad = [t for t in ids if not 0 <= t < engine.vocab_size]
    if bad:
        raise InvalidArgumentError(
            f"prompt: token ids must be in [0, {engine.vocab_size}), got {bad[:5]}"
        )
    total = len(ids) + params.max_tokens
    if total > engine.max_model_len:
        raise InvalidArgumentError(
            f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
            f"the model's max_model_len ({engine.max_model_len})"
        )
    mgr = engine.manager
    blocks = -(-total // mgr.block_size)
    fits = engine.num_usable_blocks - int(engine.config.watermark * engine.num_usable_blocks)
    if blocks > fits:
        raise InvalidArgumentError(
            f"prompt + max_tokens = {total} tokens need {blocks} KV blocks of "
            f"{mgr.block_size}; the pool admits at most {fits}"
        )
    if params.n > engine.config.max_num_seqs:
        raise InvalidArgumentError(
            f"n: expected <= max_num_seqs ({engine.config.max_num_seqs}), got {params.n}"
        )
    return text, ids
