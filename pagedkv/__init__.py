"""pagedkv: paged KV-cache management for LLM inference.

Layers: ``pagedkv.core`` (block manager, pure metadata) -> ``pagedkv.storage`` (torch tensors)
-> ``pagedkv.attention`` (paged attention) -> ``pagedkv.integrations`` / ``pagedkv.simulator``.
"""

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
    SequenceStateError,
    ShapeError,
    UnknownSequenceError,
)

__version__ = "0.1.0"

__all__ = [
    "BlockManager",
    "CacheConfig",
    "ConfigError",
    "DuplicateSequenceError",
    "InvalidArgumentError",
    "ManagerStats",
    "OutOfBlocksError",
    "PagedKVError",
    "PrefixPin",
    "PressureLevel",
    "SequenceStateError",
    "ShapeError",
    "SlidingWindow",
    "UnknownSequenceError",
    "__version__",
]
