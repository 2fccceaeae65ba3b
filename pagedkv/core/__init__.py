"""Core layer: paged-KV metadata, no tensors.

``blocks/`` (block pool, host pool, copy-on-write), ``prefix_cache/`` (hashing, the hash map and
cached-block forest, eviction policies), ``manager/`` (``BlockManager``: admission, the sequence
table, registration of committed blocks, pins, queries, inspection); beside them the config, the
null block, sequence state, preemption policies, pressure levels, stats and kernel-format
exports.
"""

from pagedkv.core.blocks import BlockPool
from pagedkv.core.config import CacheConfig
from pagedkv.core.manager import BlockManager, PrefixPin
from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.preemption import PREEMPTION_POLICIES, register_preemption_policy
from pagedkv.core.prefix_cache import (
    HASH_FUNCTIONS,
    HashedPrompt,
    PrefixCache,
    register_hash_function,
)
from pagedkv.core.prefix_cache.eviction import (
    EVICTION_POLICIES,
    EvictionPolicy,
    register_eviction_policy,
)
from pagedkv.core.pressure import PressureLevel
from pagedkv.core.seq_state import SeqState, SeqStatus, SlidingWindow
from pagedkv.core.stats import ManagerStats

__all__ = [
    "EVICTION_POLICIES",
    "HASH_FUNCTIONS",
    "NULL_BLOCK_ID",
    "PREEMPTION_POLICIES",
    "BlockManager",
    "BlockPool",
    "CacheConfig",
    "EvictionPolicy",
    "HashedPrompt",
    "ManagerStats",
    "PrefixCache",
    "PrefixPin",
    "PressureLevel",
    "SeqState",
    "SeqStatus",
    "SlidingWindow",
    "register_eviction_policy",
    "register_hash_function",
    "register_preemption_policy",
]
