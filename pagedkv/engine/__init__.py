"""The serving engine: continuous batching, sampling and preemption over a real model.

``LLM`` (offline, vLLM's interface) and ``AsyncLLMEngine`` (streaming, abort) sit on
``LLMEngine``, which steps a ``Scheduler`` (queues, token budget, chunked prefill, preemption)
and a ``PagedModelRunner`` (one packed forward per step over the paged KV cache).
"""

from pagedkv.engine.async_engine import AsyncLLMEngine, EngineDeadError
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.llm import LLM, apply_chat_template
from pagedkv.engine.llm_engine import LLMEngine
from pagedkv.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from pagedkv.engine.prompts import PromptType, TextPrompt, TokensPrompt
from pagedkv.engine.sampling_params import SamplingParams
from pagedkv.engine.validation import DuplicateRequestError

__all__ = [
    "LLM",
    "AsyncLLMEngine",
    "CompletionOutput",
    "DuplicateRequestError",
    "EngineConfig",
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
