"""OpenAI request bodies (pydantic) and their translation into engine ``SamplingParams``.

Field names and defaults follow OpenAI's API; ``top_k``, ``min_p``, ``repetition_penalty``,
``ignore_eos``, ``min_tokens``, ``cache_salt`` and ``priority`` are the extras vLLM accepts too.
Unknown fields are ignored (clients send vendor extras), but a feature we cannot honour
(``echo``, ``best_of > n``, ``suffix``, tools, a JSON response format) is refused with a 400
rather than silently dropped. ``top_p: 0``, which OpenAI accepts, samples the most likely token
(``top_k = 1``). Text must be valid Unicode: JSON can carry a lone surrogate (``"\\ud800"``),
which no tokenizer can encode, so it is refused by field name.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pagedkv.engine import SamplingParams
from pagedkv.errors import InvalidArgumentError


class StreamOptions(BaseModel):
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    # vLLM extras
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    min_tokens: int = 0
    stop_token_ids: list[int] = Field(default_factory=list)
    cache_salt: str | None = None
    priority: int = 0

    def sampling_params(self, max_tokens: int, logprobs: int | None) -> SamplingParams:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        top_one = self.top_p == 0.0  # OpenAI's top_p 0: the nucleus is the top token alone
        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=1.0 if top_one else self.top_p,
            top_k=1 if top_one else self.top_k,
            min_p=self.min_p,
            seed=self.seed,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids),
            ignore_eos=self.ignore_eos,
            repetition_penalty=self.repetition_penalty,
            presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty,
            logprobs=logprobs,
        )

    def check_text(self) -> None:
        """Refuse text no tokenizer can encode (a lone surrogate), naming the field."""
        where = _invalid_text(self.model_dump(), "")
        if where is not None:
            raise InvalidArgumentError(
                f"{where}: text is not valid Unicode (it holds a lone surrogate such as "
                "'\\ud800'; send UTF-8 text)"
            )

    @property
    def salt(self) -> str | None:
        """The prefix-cache salt: ``cache_salt`` if given, else ``user`` (one tenant's cached
        prompts are never served to another)."""
        return self.cache_salt if self.cache_salt is not None else self.user

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def _invalid_text(value: object, path: str) -> str | None:
    """The path (``messages[0].content``) of the first string in ``value`` that is not valid
    Unicode, else None."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
    elif isinstance(value, dict):
        for key, item in value.items():
            found = _invalid_text(item, f"{path}.{key}" if path else str(key))
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _invalid_text(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = Field(default=None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise InvalidArgumentError("prompt: expected a non-empty prompt, got []")
        ids = [x for x in p if isinstance(x, int)]
        if len(ids) == len(p):
            return [ids]
        return [x for x in p if not isinstance(x, int)]

    def check_supported(self) -> None:
        if self.echo:
            raise InvalidArgumentError("echo: not supported by this server")
        if self.suffix:
            raise InvalidArgumentError("suffix: not supported by this server")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidArgumentError(
                f"best_of: only best_of == n is supported, got best_of={self.best_of}, n={self.n}"
            )


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise InvalidArgumentError(
                    f"messages: only text content parts are supported, got {part.get('type')!r}"
                )
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    add_generation_prompt: bool = True

    def conversation(self) -> list[dict[str, str]]:
        role = {"developer": "system"}
        return [{"role": role.get(m.role, m.role), "content": m.text()} for m in self.messages]

    def check_supported(self) -> None:
        if self.tools:
            raise InvalidArgumentError("tools: tool calling is not supported by this server")
        fmt = (self.response_format or {}).get("type", "text")
        if fmt != "text":
            raise InvalidArgumentError(f"response_format: only 'text' is supported, got {fmt!r}")

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None
