"""The pool's eviction listener sees every block that leaves the prefix cache, with the hash it
had, before the block is handed to a new owner (what a write-on-evict KV tier needs)."""

from __future__ import annotations

import pytest

from pagedkv.core import EVICTION_POLICIES, BlockManager, CacheConfig


def _mgr(policy: str, num_blocks: int = 6) -> BlockManager:
    return BlockManager(CacheConfig(block_size=2, num_blocks=num_blocks, eviction_policy=policy))


@pytest.mark.parametrize("policy", sorted(EVICTION_POLICIES))
def test_listener_gets_evicted_blocks_before_reuse(policy):
    mgr = _mgr(policy)
    seen: list[tuple[int, object]] = []
    state_at_call: list[list[int]] = []

    def listener(pairs):
        seen.extend(pairs)
        # at call time none of these blocks has a new owner yet
        state_at_call.append([mgr.pool.ref_cnt[b] for b, _ in pairs])

    mgr.prefix_cache.set_evict_listener(listener)
    mgr.admit("a", [1, 2, 3, 4, 5])  # blocks for [1,2] [3,4] [5]
    mgr.commit(["a"])
    hashes = list(mgr.seq("a").block_hashes)
    table = mgr.block_table("a")
    mgr.free("a")  # 2 full blocks stay cached
    assert seen == []
    mgr.admit("b", [9, 9, 8, 8, 7, 7, 6, 6, 5])  # needs 5 blocks: evicts both cached ones
    assert sorted(seen, key=lambda p: p[0]) == sorted(zip(table[:2], hashes, strict=True))
    assert all(r == 0 for call in state_at_call for r in call)
    mgr.check_integrity()


def test_uncache_on_reset_is_reported_and_no_listener_costs_nothing():
    mgr = _mgr("lru", num_blocks=8)
    seen: list[tuple[int, object]] = []
    mgr.prefix_cache.set_evict_listener(seen.extend)
    mgr.admit("a", [1, 2, 3, 4, 5])
    mgr.commit(["a"])
    mgr.reset_prefix_cache()
    assert len(seen) == 2
    mgr.prefix_cache.set_evict_listener(None)
    mgr.admit("b", [1, 2, 3, 4, 5])
    mgr.commit(["b"])
    mgr.free("b")
    mgr.free("a")
    mgr.evict_cached(10)
    assert len(seen) == 2  # no longer observed
    mgr.check_integrity()
