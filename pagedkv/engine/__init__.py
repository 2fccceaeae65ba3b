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
from pagedkv.engine.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "AsyncLLMEngine",
    "CompletionOutput",
    "EngineConfig",
    "EngineDeadError",
    "LLMEngine",
    "RequestMetrics",
    "RequestOutput",
    "SamplingParams",
    "apply_chat_template",
]
