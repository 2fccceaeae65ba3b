"""The serving engine: continuous batching, sampling and preemption over a real model.

``LLM`` (offline, vLLM's interface) and ``AsyncLLMEngine`` (streaming, abort) sit on
``LLMEngine``: an ``EngineCore`` (a ``Scheduler`` that plans each step over the block manager,
and the request bookkeeping) given a ``ModelExecutor`` (one packed forward per step over the
paged KV cache through a ``PagedModelRunner``). The simulator gives the same core a cost-model
executor.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedkv.engine.config import EngineConfig
from pagedkv.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedkv.engine.prompts import PromptType, TextPrompt, TokensPrompt
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.validation import DuplicateRequestError
from pagedkv.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from pagedkv.engine.async_engine import AsyncLLMEngine, EngineDeadError
    from pagedkv.engine.engine_core import EngineCore
    from pagedkv.engine.llm import LLM, apply_chat_template
    from pagedkv.engine.llm_engine import LLMEngine

# The model side (torch, transformers) loads on first use: the engine core and the scheduler
# import without torch (the simulator runs them with a simulated executor).
_LAZY = {
    "AsyncLLMEngine": "pagedkv.engine.async_engine",
    "EngineDeadError": "pagedkv.engine.async_engine",
    "EngineCore": "pagedkv.engine.engine_core",
    "LLM": "pagedkv.engine.llm",
    "apply_chat_template": "pagedkv.engine.llm",
    "LLMEngine": "pagedkv.engine.llm_engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "LLM",
    "AsyncLLMEngine",
    "CompletionOutput",
    "DuplicateRequestError",
    "EngineConfig",
    "EngineCore",
    "EngineDeadError",
    "LLMEngine",
    "PromptType",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "TextPrompt",
    "TokensPrompt",
    "apply_chat_template",
]
