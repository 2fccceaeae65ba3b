"""Sizing the engine's KV pool: the bytes one block costs for a model, and the
:class:`CacheConfig` an :class:`EngineConfig` asks for (a block count, or what a memory budget
pays for)."""

from __future__ import annotations

import torch

from pagedkv.core import CacheConfig
from pagedkv.engine.config import EngineConfig


def kv_bytes_per_block(kv_dims: tuple[int, int, int], block_size: int, dtype: torch.dtype) -> int:
    """Bytes of K and V one block holds. ``kv_dims``: ``(num_layers, num_kv_heads, head_dim)``,
    as the support check found them (``ModelAttention.kv_dims``)."""
    layers, kv_heads, head_dim = kv_dims
    elem = torch.empty(0, dtype=dtype).element_size()
    return 2 * layers * kv_heads * head_dim * block_size * elem


def engine_cache_config(
    config: EngineConfig, kv_dims: tuple[int, int, int], dtype: torch.dtype
) -> CacheConfig:
    """The pool for a model whose KV is ``dtype``: ``config.num_blocks`` usable blocks, else as
    many as ``config.kv_cache_memory`` (default 256 MiB) pays for, at least one."""
    return config.cache_config(
        config.usable_blocks(kv_bytes_per_block(kv_dims, config.block_size, dtype))
    )
