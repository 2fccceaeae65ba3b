"""KV storage: the physical paged cache tensors (torch), and ``PagedKVCache`` (manager +
storage in one object)."""

from pagedkv.storage.kv_storage import SUPPORTED_DTYPES, KVStorage
from pagedkv.storage.paged_cache import PagedKVCache

__all__ = ["SUPPORTED_DTYPES", "KVStorage", "PagedKVCache"]
