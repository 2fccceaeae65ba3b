"""pagedkv: paged KV-cache management for LLM inference.

Layers: ``pagedkv.core`` (block manager, pure metadata) -> ``pagedkv.storage`` (torch tensors)
-> ``pagedkv.attention`` (paged attention) -> ``pagedkv.integrations`` / ``pagedkv.simulator``
-> ``pagedkv.engine`` (the serving engine).

The engine's names (``LLM``, ``SamplingParams``, ``LLMEngine``, ``AsyncLLMEngine``,
``EngineConfig``) are exported lazily: ``import pagedkv`` stays light (numpy only, no torch) and
``pagedkv.LLM`` imports the engine on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pagedkv import _omp  # noqa: F401  (first: sets libgomp's spin count before torch loads)
from pagedkv.core import (
    BlockManager,
    CacheConfig,
    ManagerStats,
    PrefixPin,
    PressureLevel,
    SlidingWindow,
)
from pagedkv.errors import (
    ConfigError,
    DuplicateSequenceError,
    InvalidArgumentError,
    OutOfBlocksError,
    PagedKVError,
    RegistryError,
    SequenceStateError,
    ShapeError,
    UnknownNameError,
    UnknownSequenceError,
)
from pagedkv.lazy_exports import lazy_exports

if TYPE_CHECKING:
    from pagedkv.engine import AsyncLLMEngine, EngineConfig, LLMEngine, SamplingParams
    from pagedkv.engine.llm import LLM

__version__ = "0.1.0"

_LAZY = {
    "LLM": "pagedkv.engine",
    "SamplingParams": "pagedkv.engine",
    "AsyncLLMEngine": "pagedkv.engine",
    "LLMEngine": "pagedkv.engine",
    "EngineConfig": "pagedkv.engine",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())


__all__ = [
    "LLM",
    "AsyncLLMEngine",
    "BlockManager",
    "CacheConfig",
    "ConfigError",
    "DuplicateSequenceError",
    "EngineConfig",
    "InvalidArgumentError",
    "LLMEngine",
    "ManagerStats",
    "OutOfBlocksError",
    "PagedKVError",
    "PrefixPin",
    "PressureLevel",
    "RegistryError",
    "SamplingParams",
    "SequenceStateError",
    "ShapeError",
    "SlidingWindow",
    "UnknownNameError",
    "UnknownSequenceError",
    "__version__",
]
