"""Shared helpers of the tier tests (importable by name; ``conftest`` is not reliably)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence

import torch

from pagedkv.storage.kv_storage import KVStorage
from pagedkv.tiers import KVTier, RemoteTier, TieredKVCache, fingerprint_for
from pagedkv.tiers.base import Value

GEOMETRY = {"num_layers": 2, "block_size": 4, "num_kv_heads": 2, "head_dim": 8}


def make_storage(
    num_blocks: int = 16, dtype: torch.dtype = torch.float32, seed: int = 0, **geometry: int
) -> KVStorage:
    """A small storage filled with seeded random KV (block 0, the null block, stays zero)."""
    g = {**GEOMETRY, **geometry}
    st = KVStorage(num_blocks=num_blocks, dtype=dtype, **g)
    gen = torch.Generator().manual_seed(seed)
    st.kv_cache[:, 1:] = torch.randn(st.kv_cache[:, 1:].shape, generator=gen).to(dtype)
    return st


def fingerprint(st: KVStorage, model: str = "test-model", revision: str = "r1") -> bytes:
    return fingerprint_for(
        model, revision, st.dtype, st.block_size, st.num_layers, st.num_kv_heads, st.head_dim
    )


def chain(n: int, tag: str = "p") -> list[bytes]:
    """``n`` chained sha256 hashes (like ``prefix_cache/hashing.py``), distinct per ``tag``."""
    out, parent = [], hashlib.sha256(f"root|{tag}".encode()).digest()
    for i in range(n):
        parent = hashlib.sha256(parent + i.to_bytes(8, "little")).digest()
        out.append(parent)
    return out


def cache_for(st: KVStorage, tiers: list, **kwargs: object) -> TieredKVCache:
    return TieredKVCache(tiers, fingerprint(st), st, st.block_size, **kwargs)


def blocks_equal(st: KVStorage, a: list[int], ref: torch.Tensor, b: list[int]) -> bool:
    """``st`` blocks ``a`` hold exactly the bytes of ``ref`` blocks ``b`` (ref: a kv_cache copy)."""
    return all(
        torch.equal(st.kv_cache[:, x].view(torch.uint8), ref[:, y].view(torch.uint8))
        for x, y in zip(a, b, strict=True)
    )


def child_share(url: str, seed: int, load_tag: str, store_tag: str, n: int) -> tuple[int, bool]:
    """Run in a spawned process: load ``load_tag``'s chain stored by the parent (seeded data
    ``seed``, blocks 1..n), check bytes, then store its own chain ``store_tag`` (seed + 1)."""
    mine = make_storage(seed=seed + 1)
    expected = make_storage(seed=seed).kv_cache.clone()
    target = make_storage(seed=99)
    loader = cache_for(target, [RemoteTier(url)])
    got = loader.load(chain(n, load_tag), list(range(1, n + 1)))
    ok = blocks_equal(target, list(range(1, got + 1)), expected, list(range(1, got + 1)))
    writer = cache_for(mine, [RemoteTier(url)])
    writer.store(chain(n, store_tag), list(range(1, n + 1)))
    writer.close()
    loader.close()
    return got, ok


class GatedTier(KVTier):
    """Delegates to ``inner``; writes wait for ``gate`` (a slow store)."""

    def __init__(self, inner: KVTier, gate: threading.Event) -> None:
        super().__init__()
        self.inner, self.gate, self.name = inner, gate, "gated"

    capacity_bytes = None  # type: ignore[assignment]
    used_bytes = 0  # type: ignore[assignment]

    def _contains_prefix(self, keys: Sequence[bytes]) -> int:
        return self.inner.contains_prefix(keys)

    def _get_many(self, keys: Sequence[bytes], max_bytes: int | None) -> list[Value | None]:
        return self.inner.get_many(keys, max_bytes)

    def _put_many(self, items: Sequence[tuple[bytes, Value]]) -> list[int]:
        assert self.gate.wait(10)
        self.inner.put_many(items)
        return list(range(len(items)))

    def _evict(self, nbytes: int) -> int:
        return 0

    def _clear(self) -> None:
        self.inner.clear()
