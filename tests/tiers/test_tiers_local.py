"""Host and disk tiers, multi-tier chains, fault barrier, background queue, registry."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from tiers_helpers import GatedTier, blocks_equal, cache_for, chain, make_storage

from pagedkv.errors import InvalidArgumentError, PagedKVError
from pagedkv.tiers import (
    TIERS,
    DiskTier,
    HostTier,
    KVTier,
    TierConfigError,
    TieredKVCache,
    create_tier,
)
from pagedkv.tiers.disk import file_name
from pagedkv.tiers.format import block_key


def test_host_lru_respects_byte_budget() -> None:
    tier = HostTier(capacity_bytes=300)
    tier.put_many([(b"a", b"x" * 100), (b"b", b"y" * 100), (b"c", b"z" * 100)])
    assert tier.get_many([b"a"]) == [b"x" * 100]  # a is now most recent
    tier.put_many([(b"d", b"w" * 100)])  # evicts b, the least recently used
    assert tier.contains_prefix([b"a", b"c", b"d"]) == 3
    assert tier.contains_prefix([b"b"]) == 0
    assert tier.used_bytes == 300
    assert tier.stats.evicted_bytes == 100
    tier.put_many([(b"huge", b"h" * 301)])
    assert tier.stats.dropped_writes == 1
    assert tier.contains_prefix([b"huge"]) == 0
    assert tier.evict(150) == 200
    assert tier.used_bytes == 100
    tier.clear()
    assert tier.used_bytes == 0
    assert len(tier) == 0


def test_disk_survives_restart_and_keeps_recency(tmp_path: Path) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    cache_for(st, [DiskTier(tmp_path, 1 << 22)]).store(chain(3), [1, 2, 3])
    st.zero_()
    reopened = DiskTier(tmp_path, 1 << 22)  # a new process would do exactly this
    assert reopened.used_bytes > 3 * st.bytes_per_block
    assert cache_for(st, [reopened]).load(chain(3), [4, 5, 6]) == 3
    assert blocks_equal(st, [4, 5, 6], ref, [1, 2, 3])
    assert not list((tmp_path / "tmp").iterdir())  # atomic writes leave no temporaries


def test_disk_evicts_least_recently_used_files(tmp_path: Path) -> None:
    tier = DiskTier(tmp_path, capacity_bytes=250)
    tier.put_many([(b"a", b"1" * 100), (b"b", b"2" * 100)])
    assert tier.get_many([b"a"]) == [b"1" * 100]
    tier.put_many([(b"c", b"3" * 100)])
    assert tier.contains_prefix([b"a"]) == 1
    assert tier.contains_prefix([b"b"]) == 0
    assert tier.used_bytes == 200
    # a smaller budget on restart trims to it, oldest first
    os.utime(tier.path_of(b"a"), (1, 1))
    small = DiskTier(tmp_path, capacity_bytes=150)
    assert small.contains_prefix([b"c"]) == 1
    assert small.contains_prefix([b"a"]) == 0


def test_disk_file_names_are_injective() -> None:
    names = {file_name(k) for k in [b"a:b", b"a+b", b"a_b", b"a/b", b"a\x00b", b"x" * 300]}
    assert len(names) == 6
    assert all("/" not in n and len(n) < 250 for n in names)


def test_disk_stale_temporaries_are_removed(tmp_path: Path) -> None:
    DiskTier(tmp_path)
    stale, fresh = tmp_path / "tmp" / "old.tmp", tmp_path / "tmp" / "new.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (1, 1))
    DiskTier(tmp_path)
    assert not stale.exists()
    assert fresh.exists()


def test_chain_continues_across_tiers_and_promotes(tmp_path: Path) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    host, disk = HostTier(1 << 22), DiskTier(tmp_path, 1 << 22)
    hashes = chain(5)
    cache_for(st, [disk]).store(hashes, [1, 2, 3, 4, 5])
    cache_for(st, [host]).store(hashes[:2], [1, 2])
    cache = cache_for(st, [host, disk])
    assert cache.lookup(hashes) == 5
    assert cache.load(hashes, [6, 7, 8, 9, 10]) == 5
    assert blocks_equal(st, [6, 7, 8, 9, 10], ref, [1, 2, 3, 4, 5])
    assert host.stats.hit_blocks == 2
    assert disk.stats.hit_blocks == 3
    assert host.contains_prefix(cache.keys(hashes)) == 5  # promoted


def test_bad_value_in_fast_tier_falls_back_to_slower(tmp_path: Path) -> None:
    st = make_storage()
    ref = st.kv_cache.clone()
    host, disk = HostTier(1 << 22), DiskTier(tmp_path, 1 << 22)
    cache = cache_for(st, [host, disk])
    hashes = chain(3)
    cache.store(hashes, [1, 2, 3])
    host.put_many([(block_key(cache.fingerprint, hashes[1]), b"junk")])
    assert cache.load(hashes, [4, 5, 6]) == 3
    assert blocks_equal(st, [4, 5, 6], ref, [1, 2, 3])
    assert host.stats.rejected == 1
    assert disk.stats.hit_blocks == 2


def test_partial_last_block_ends_the_chain() -> None:
    st = make_storage()
    host = HostTier(1 << 22)
    cache = cache_for(st, [host])
    hashes = chain(3)
    cache.store(hashes, [1, 2, 3], num_tokens=2)
    assert cache.load(hashes, [4, 5, 6]) == 3
    assert host.stats.hit_tokens == 2 * st.block_size + 2


class BrokenTier(KVTier):
    """Every hook raises: a tier bug or an unexpected fault."""

    name = "broken"
    capacity_bytes = None  # type: ignore[assignment]
    used_bytes = 0  # type: ignore[assignment]

    def _contains_prefix(self, keys):  # type: ignore[no-untyped-def]
        raise RuntimeError("boom")

    _get_many = _put_many = _contains_prefix  # type: ignore[assignment]

    def _evict(self, nbytes: int) -> int:
        raise RuntimeError("boom")

    def _clear(self) -> None:
        raise RuntimeError("boom")


def test_tier_faults_never_reach_the_caller() -> None:
    st = make_storage()
    broken, host = BrokenTier(), HostTier(1 << 22)
    cache = cache_for(st, [broken, host])
    hashes = chain(2)
    assert cache.store(hashes, [1, 2]) == 2  # host still gets them
    assert cache.lookup(hashes) == 2
    assert cache.load(hashes, [3, 4]) == 2
    assert broken.get_many([b"k"]) == [None]
    assert broken.evict(10) == 0
    broken.clear()
    assert broken.stats.errors >= 5
    assert broken.stats.dropped_writes == 4  # 2 stored + 2 promoted from host


def test_full_background_queue_drops_instead_of_blocking() -> None:
    st = make_storage()
    gate = threading.Event()
    host = HostTier(1 << 22)
    cache = cache_for(st, [GatedTier(host, gate)], background=True, max_queue=1)
    accepted = [cache.store(chain(1, f"s{i}"), [1]) for i in range(4)]
    assert accepted.count(0) >= 2  # one job blocked in the writer, one queued, rest dropped
    assert cache.stats()["connector"]["dropped_stores"] == accepted.count(0)
    gate.set()
    cache.close()
    assert host.contains_prefix(cache.keys(chain(1, "s0"))) == 1


def test_registry_and_argument_checks(tmp_path: Path) -> None:
    assert {"host", "disk", "remote"} <= set(TIERS.names())
    assert isinstance(create_tier("host", capacity_bytes=10), HostTier)
    assert isinstance(create_tier("disk", path=tmp_path), DiskTier)
    with pytest.raises(TierConfigError, match="unknown"):
        create_tier("tape")
    with pytest.raises(TierConfigError):
        create_tier("remote", url="http://x")
    with pytest.raises(TierConfigError):
        HostTier(0)
    st = make_storage()
    with pytest.raises(InvalidArgumentError):
        TieredKVCache([], b"short", st)
    with pytest.raises(InvalidArgumentError):
        TieredKVCache([], bytes(16), st, block_size=st.block_size + 1)
    cache = TieredKVCache([HostTier()], bytes(16), st)
    with pytest.raises(InvalidArgumentError):
        cache.load(chain(2), [1])
    with pytest.raises(PagedKVError):
        cache.store(chain(1), [1], num_tokens=st.block_size + 1)
    assert cache.store([], []) == 0
    assert cache.load([], []) == 0
    assert cache.lookup([]) == 0


def test_batched_device_path_round_trips() -> None:
    """The path used for non-CPU storage (one gather + transfer, one ``index_copy_``), forced on
    CPU so it is tested without a GPU."""
    st = make_storage(num_blocks=12)
    ref = st.kv_cache.clone()
    cache = cache_for(st, [HostTier(1 << 22)])
    cache._kv_np = None
    hashes = chain(4)
    cache.store(hashes, [3, 1, 4, 2])
    st.zero_()
    assert cache.load(hashes, [9, 5, 11, 6]) == 4
    assert blocks_equal(st, [9, 5, 11, 6], ref, [3, 1, 4, 2])
    assert not st.kv_cache[:, [1, 2, 3, 4, 7, 8, 10]].any()


def test_block_ids_are_checked() -> None:
    st = make_storage(num_blocks=4)
    cache = cache_for(st, [HostTier()])
    for op in (cache.load, cache.store):
        with pytest.raises(InvalidArgumentError, match="block ids"):
            op(chain(1), [4])
        with pytest.raises(InvalidArgumentError, match="block ids"):
            op(chain(1), [-1])
