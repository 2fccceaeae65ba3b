"""pagedkv: paged KV-cache management for LLM inference.

Layers: ``pagedkv.core`` (block manager, pure metadata) -> ``pagedkv.storage`` (torch tensors)
-> ``pagedkv.attention`` (paged attention) -> ``pagedkv.integrations`` / ``pagedkv.simulator``
-> ``pagedkv.engine`` (the serving engine).

The engine's names (``LLM``, ``SamplingParams``, ``LLMEngine``, ``AsyncLLMEngine``,
``EngineConfig``) are exported lazily: ``import pagedkv`` stays light (numpy only, no torch) and
``pagedkv.LLM`` imports the engine on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pagedkv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY} - {"Any", "TYPE_CHECKING", "annotations", "importlib"})


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
