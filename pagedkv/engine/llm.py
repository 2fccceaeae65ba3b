"""``LLM``: offline batch generation with vLLM's interface (``generate``, ``chat``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from pagedkv.engine.config import EngineConfig
from pagedkv.engine.llm_engine import LLMEngine
from pagedkv.engine.outputs import RequestOutput
from pagedkv.engine.prompts import PromptType, is_token_ids
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.errors import InvalidArgumentError
from pagedkv.models import LoadedModel

Prompt = PromptType
Message = dict[str, str]


def _as_prompt_list(prompts: object) -> list[Prompt]:
    """One prompt (text, token ids, ``{"prompt": ...}`` or ``{"prompt_token_ids": ...}``) or a
    non-empty list of them -> a list of prompts (each checked when it is added)."""
    if isinstance(prompts, str | dict):
        return [cast("Prompt", prompts)]
    if is_token_ids(prompts) and prompts:
        return [list(prompts)]
    if isinstance(prompts, list | tuple) and prompts:
        return list(prompts)
    raise InvalidArgumentError(
        "prompts: expected a prompt (text, token ids, {'prompt': ...} or "
        f"{{'prompt_token_ids': ...}}) or a non-empty list of them, got {prompts!r}"
    )


class LLM:
    """Load a model and generate. Engine options by name (see :class:`EngineConfig`), e.g.
    ``LLM(block_size=16, num_blocks=512, enable_chunked_prefill=True)``."""

    def __init__(self, model: LoadedModel | str | None = None, **engine_options: Any) -> None:
        self.engine = LLMEngine(model, EngineConfig(**engine_options))
        self._next_id = 0

    @property
    def tokenizer(self) -> Any:
        return self.engine.tokenizer

    def get_tokenizer(self) -> Any:
        """The model's (transformers) tokenizer, as vLLM's ``LLM.get_tokenizer()`` returns it."""
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        cache_salt: str | None = None,
        priority: Sequence[int] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt in one continuously batched run; outputs in prompt order.
        If a prompt is refused, nothing is queued."""
        items = _as_prompt_list(prompts)
        params = self._params_list(sampling_params, len(items))
        prios = list(priority) if priority is not None else [0] * len(items)
        if len(prios) != len(items):
            raise InvalidArgumentError(f"priority: expected {len(items)} values, got {len(prios)}")
        ids = []
        try:
            for prompt, p, prio in zip(items, params, prios, strict=True):
                rid = f"llm-{self._next_id}"
                self._next_id += 1
                self.engine.add_request(rid, prompt, p, priority=prio, cache_salt=cache_salt)
                ids.append(rid)
        except Exception:
            for rid in ids:
                self.engine.abort(rid)
            raise
        return self._run(ids)

    def chat(
        self,
        messages: list[Message] | list[list[Message]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        *,
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to one conversation or a list of them, then
        :meth:`generate`."""
        convs = cast(
            "list[list[Message]]",
            [messages] if messages and isinstance(messages[0], dict) else messages,
        )
        prompts: list[Prompt] = [
            apply_chat_template(self.tokenizer, c, add_generation_prompt) for c in convs
        ]
        return self.generate(prompts, sampling_params, **kwargs)

    def _params_list(
        self, sp: SamplingParams | Sequence[SamplingParams] | None, n: int
    ) -> list[SamplingParams]:
        if sp is None:
            return [SamplingParams() for _ in range(n)]
        if isinstance(sp, SamplingParams):
            return [sp] * n
        lst = list(sp)
        if len(lst) != n:
            raise InvalidArgumentError(
                f"sampling_params: expected one or {n} SamplingParams, got {len(lst)}"
            )
        return lst

    def _run(self, ids: list[str]) -> list[RequestOutput]:
        final: dict[str, RequestOutput] = {}
        wanted = set(ids)
        while wanted - final.keys():
            for out in self.engine.step():
                if out.finished:
                    final[out.request_id] = out
        return [final[r] for r in ids]


def apply_chat_template(
    tokenizer: Any, messages: list[Message], add_generation_prompt: bool = True
) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InvalidArgumentError("chat: this model's tokenizer has no chat template")
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        raise InvalidArgumentError(
            "messages: expected a list of {'role': str, 'content': str} dicts"
        )
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return [int(t) for t in tokenizer.encode(text, add_special_tokens=False)]
