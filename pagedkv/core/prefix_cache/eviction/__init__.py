"""Eviction policies for cached-but-unreferenced blocks, pluggable through a registry.

``base`` holds the protocol (``EvictionPolicy``) and the registry (``EVICTION_POLICIES``,
``register_eviction_policy``); each built-in policy has its own module: ``lru`` (default),
``heap`` (``fifo``, ``lfu``) and ``s3fifo``. Importing this package registers all of them.

Policies: ``lru`` (default; by last release), ``fifo`` (by first release after caching, not
refreshed by hits), ``lfu`` (fewest hits, ties by recency) and ``s3fifo``. We chose S3-FIFO
(Yang et al., SOSP'23) as the scan-resistant policy: prompts carry many one-hit-wonder blocks
(unique user suffixes) that a small probationary FIFO filters out before they can push the shared
system prompts out of the main FIFO; it needs only FIFO queues (O(1), no list splicing) and beat
ARC and 2Q on most of the paper's traces. FIFO and LFU keep a sorted deque for blocks that
arrive in order (O(1)) and a heap for the rest (O(log n)).
"""

from pagedkv.core.prefix_cache.eviction.base import (
    EVICTION_POLICIES,
    EvictionPolicy,
    register_eviction_policy,
)
from pagedkv.core.prefix_cache.eviction.heap import FIFOPolicy, LFUPolicy
from pagedkv.core.prefix_cache.eviction.lru import LRUPolicy
from pagedkv.core.prefix_cache.eviction.s3fifo import S3FIFOPolicy

__all__ = [
    "EVICTION_POLICIES",
    "EvictionPolicy",
    "FIFOPolicy",
    "LFUPolicy",
    "LRUPolicy",
    "S3FIFOPolicy",
    "register_eviction_policy",
]
