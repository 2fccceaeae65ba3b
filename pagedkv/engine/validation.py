"""Checks a request must pass before the engine accepts it, so nothing fails later in a step.

A request is refused (``InvalidArgumentError`` naming the numbers, nothing queued) if its
prompt is in no accepted form (``prompts.py``) or empty, has prompt or stop token ids outside
the vocabulary, would outgrow the model (prompt + max_tokens > max_model_len) or could never fit
the KV pool on its own (then preempting everything else would still not let it finish); a
request id still in use is refused with ``DuplicateRequestError`` where requests are taken in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedkv.engine.prompts import parse_prompt
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.errors import InvalidArgumentError

if TYPE_CHECKING:
    from pagedkv.engine.engine_core import EngineCore


class DuplicateRequestError(InvalidArgumentError):
    """A request id that is still in use (submitted and not yet finished) was given again; the
    new request is refused and the one running under that id is untouched."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"request_id: {request_id!r} is already in use by an unfinished request")


def check_request_id(request_id: object) -> str:
    """A request id must be a str (whether it is free is checked where requests are taken)."""
    if not isinstance(request_id, str):
        raise InvalidArgumentError(f"request_id: expected a str, got {request_id!r}")
    return request_id


def prompt_token_ids(engine: EngineCore, prompt: object) -> tuple[str | None, list[int]]:
    """``(text or None, token ids)`` of a prompt in any form :func:`parse_prompt` takes."""
    parsed = parse_prompt(prompt)
    if not isinstance(parsed, str):
        return None, parsed
    if engine.tokenizer is None:
        raise InvalidArgumentError("prompt: this engine has no tokenizer; pass token ids")
    return parsed, [int(t) for t in engine.tokenizer.encode(parsed)]


def validate_request(
    engine: EngineCore, prompt: object, params: SamplingParams, priority: object, cache_salt: object
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
    bad = [t for t in params.stop_token_ids if t >= engine.vocab_size]
    if bad:  # the sampler bans stop tokens until min_tokens by indexing the logits with them
        raise InvalidArgumentError(
            f"stop_token_ids: token ids must be in [0, {engine.vocab_size}), got {bad[:5]}"
        )
    total = len(ids) + params.max_tokens
    if total > engine.max_model_len:
        raise InvalidArgumentError(
            f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds "
            f"the model's max_model_len ({engine.max_model_len})"
        )
    mgr = engine.manager
    blocks = -(-total // mgr.block_size)
    fits = engine.num_usable_blocks - engine.config.watermark_blocks(engine.num_usable_blocks)
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
