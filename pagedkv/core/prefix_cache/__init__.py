"""Which blocks are findable by content: chained hashing, the hash map and forest of cached
blocks and their eviction order (``eviction/``). (Registering a sequence's committed blocks is
``manager/registrar.py``: it needs sequences and the pool.)"""

from pagedkv.core.prefix_cache.evict_log import EvictListener
from pagedkv.core.prefix_cache.hashing import HASH_FUNCTIONS, HashedPrompt, register_hash_function
from pagedkv.core.prefix_cache.prefix_cache import PrefixCache

__all__ = [
    "HASH_FUNCTIONS",
    "EvictListener",
    "HashedPrompt",
    "PrefixCache",
    "register_hash_function",
]
