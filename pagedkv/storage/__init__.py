"""KV storage: the physical paged cache tensors (torch)."""

from pagedkv.storage.kv_storage import SUPPORTED_DTYPES, KVStorage

__all__ = ["SUPPORTED_DTYPES", "KVStorage"]
