"""Core layer: block pool, eviction, sequences, prefix caching, the block manager. No tensors."""

from pagedkv.core.block_pool import NULL_BLOCK_ID, BlockPool
from pagedkv.core.config import CacheConfig
from pagedkv.core.eviction import EVICTION_POLICIES, EvictionPolicy, register_eviction_policy
from pagedkv.core.hashing import HASH_FUNCTIONS, register_hash_function
from pagedkv.core.manager import BlockManager
from pagedkv.core.preemption import PREEMPTION_POLICIES, register_preemption_policy
from pagedkv.core.prefix_api import PrefixPin
from pagedkv.core.pressure import PressureLevel
from pagedkv.core.sequence import SeqStatus, SlidingWindow
from pagedkv.core.stats import ManagerStats

__all__ = [
    "EVICTION_POLICIES", "HASH_FUNCTIONS", "NULL_BLOCK_ID", "PREEMPTION_POLICIES", "BlockManager",
    "BlockPool", "CacheConfig", "EvictionPolicy", "ManagerStats", "PrefixPin", "PressureLevel",
    "SeqStatus", "SlidingWindow", "register_eviction_policy", "register_hash_function",
    "register_preemption_policy",
]
