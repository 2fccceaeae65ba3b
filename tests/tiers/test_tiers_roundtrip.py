"""Every tier: byte-exact round trips, fingerprints keep formats apart, bad values rejected."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiers_helpers import GatedTier, blocks_equal, cache_for, chain, fingerprint, make_storage

from pagedkv.storage.kv_storage import KVStorage
from pagedkv.tiers import DiskTier, HostTier, KVTier, RemoteTier, TieredKVCache, encode_block
from pagedkv.tiers.format import block_key, dtype_code


@pytest.fixture(params=["host", "disk", "remote"])
def tier(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVTier]:
    if request.param == "host":
        t: KVTier = HostTier(1 << 22)
    elif request.param == "disk":
        t = DiskTier(tmp_path / "kv", 1 << 22)
    else:
        t = RemoteTier(request.getfixturevalue("valkey_url"), timeout_s=5.0)
    yield t
    t.close()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_byte_exact(tier: KVTier, dtype: torch.dtype) -> None:
    st = make_storage(dtype=dtype)
    ref = st.kv_cache.clone()
    cache = cache_for(st, [tier])
    hashes = chain(5)
    assert cache.lookup(hashes) == 0
    cache.store(hashes, [1, 2, 3, 4, 5])
    st.zero_()
    assert cache.lookup(hashes) == 5
    assert cache.load(hashes, [9, 7, 11, 12, 8]) == 5
    assert blocks_equal(st, [9, 7, 11, 12, 8], ref, [1, 2, 3, 4, 5])
    assert not st.kv_cache[:, [1, 2, 3, 4, 5, 6, 10]].any()  # nothing else written
    s = tier.stats
    assert s.hit_blocks == 5
    assert s.hit_tokens == 5 * st.block_size
    assert s.bytes_loaded == s.bytes_stored > 5 * st.bytes_per_block
    assert s.rejected == s.errors == 0


def test_longer_chain_loads_leading_run_only(tier: KVTier) -> None:
    st = make_storage()
    cache = cache_for(st, [tier])
    hashes = chain(6)
    cache.store(hashes[:3], [1, 2, 3])
    assert cache.lookup(hashes) == 3
    assert cache.load(hashes, [7, 8, 9, 10, 11, 12]) == 3


def test_other_formats_miss(tier: KVTier) -> None:
    """Different model, revision, dtype or block size: the same chain hashes are misses."""
    st = make_storage()
    cache_for(st, [tier]).store(chain(3), [1, 2, 3])
    others = [
        TieredKVCache([tier], fingerprint(st, model="other"), st),
        TieredKVCache([tier], fingerprint(st, revision="r2"), st),
        cache_for(make_storage(dtype=torch.float16), [tier]),
        cache_for(make_storage(block_size=8), [tier]),
    ]
    for other in others:
        assert other.lookup(chain(3)) == 0
        assert other.load(chain(3), [4, 5, 6]) == 0


def bad_values(st: KVStorage, h: bytes, good: bytes) -> dict[str, bytes]:
    fp, code = fingerprint(st), dtype_code(st.dtype)
    flipped = bytearray(good)
    flipped[len(good) // 2] ^= 0x40
    payload = bytes(st.bytes_per_block)
    return {
        "corrupted": bytes(flipped),
        "truncated": good[: len(good) - 7],
        "foreign fingerprint": encode_block(fingerprint(st, model="x"), h, 4, payload, code),
        "foreign chain hash": encode_block(fp, chain(1, "other")[0], 4, payload, code),
        "garbage": b"not a kv block at all",
    }


@pytest.mark.parametrize(
    "case", ["corrupted", "truncated", "foreign fingerprint", "foreign chain hash", "garbage"]
)
def test_bad_values_are_rejected_and_counted(tier: KVTier, case: str) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    cache = cache_for(st, [tier])
    hashes = chain(4)
    cache.store(hashes, [1, 2, 3, 4])
    key = block_key(fingerprint(st), hashes[2])
    good = bytes(tier.get_many([key])[0] or b"")
    tier.put_many([(key, bad_values(st, hashes[2], good)[case])])
    st.kv_cache[:, 5:] = 7.0
    assert cache.load(hashes, [5, 6, 7, 8]) == 2  # stops before the bad block
    assert blocks_equal(st, [5, 6], ref, [1, 2])
    assert bool((st.kv_cache[:, 7:9] == 7.0).all())  # never written with the bad bytes
    assert tier.stats.rejected == 1


def test_background_store_copies_before_returning(tier: KVTier) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    gate = threading.Event()
    cache = cache_for(st, [GatedTier(tier, gate)], background=True)
    hashes = chain(3)
    assert cache.store(hashes, [1, 2, 3]) == 3
    st.kv_cache[:, 1:4] = -1.0  # the engine reuses the blocks at once
    gate.set()
    cache.flush()
    assert cache.load(hashes, [4, 5, 6]) == 3
    assert blocks_equal(st, [4, 5, 6], ref, [1, 2, 3])
    cache.close()
