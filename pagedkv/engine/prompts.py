"""The forms a prompt may take, as in vLLM: text, token ids, ``{"prompt": text}``
(``TextPrompt``) or ``{"prompt_token_ids": ids}`` (``TokensPrompt``).

A dict is checked key by key so a caller porting vLLM code learns which key we do not take
(``multi_modal_data``, ``cache_salt``, ...) instead of getting a prompt silently reinterpreted.
"""

from __future__ import annotations

from typing import TypedDict, TypeGuard

from pagedkv.errors import InvalidArgumentError


class TextPrompt(TypedDict):
    """``{"prompt": text}``: text tokenised by the engine's tokenizer."""

    prompt: str


class TokensPrompt(TypedDict):
    """``{"prompt_token_ids": ids}``: token ids used as they are."""

    prompt_token_ids: list[int]


PromptType = str | list[int] | TextPrompt | TokensPrompt
PROMPT_KEYS = ("prompt", "prompt_token_ids")


def is_token_ids(value: object) -> TypeGuard[list[int] | tuple[int, ...]]:
    """A list or tuple of ints (bools are not token ids)."""
    return isinstance(value, list | tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    )


def parse_prompt(prompt: object) -> str | list[int]:
    """The text or token ids of a prompt in any accepted form; anything else raises
    ``InvalidArgumentError`` naming the offending key or type."""
    if isinstance(prompt, dict):
        return _from_dict(prompt)
    if isinstance(prompt, str):
        return prompt
    if is_token_ids(prompt):
        return [int(t) for t in prompt]
    raise InvalidArgumentError(
        "prompt: expected a str, a list of int token ids, {'prompt': str} or "
        f"{{'prompt_token_ids': [int, ...]}}, got {_describe(prompt)}"
    )


def _from_dict(prompt: dict[object, object]) -> str | list[int]:
    unknown = [k for k in prompt if k not in PROMPT_KEYS]
    if unknown:
        raise InvalidArgumentError(
            f"prompt: unsupported key {unknown[0]!r} in a prompt dict (accepted: exactly one "
            "of 'prompt' or 'prompt_token_ids'; pass cache_salt and priority as arguments)"
        )
    if len(prompt) != 1:
        raise InvalidArgumentError(
            "prompt: a prompt dict needs exactly one of 'prompt' or 'prompt_token_ids', "
            f"got {sorted(map(str, prompt)) or 'no key'}"
        )
    if "prompt" in prompt:
        text = prompt["prompt"]
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"prompt['prompt']: expected a str, got {type(text).__name__}"
            )
        return text
    ids = prompt["prompt_token_ids"]
    if not is_token_ids(ids):
        raise InvalidArgumentError(
            f"prompt['prompt_token_ids']: expected a list of int token ids, got {_describe(ids)}"
        )
    return [int(t) for t in ids]


def _describe(value: object) -> str:
    """The type of a refused prompt, and the first non-int element of a list."""
    if isinstance(value, list | tuple):
        for i, t in enumerate(value):
            if not isinstance(t, int) or isinstance(t, bool):
                return f"a {type(value).__name__} with {t!r} at index {i}"
    return type(value).__name__
