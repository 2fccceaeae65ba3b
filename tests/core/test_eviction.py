"""Each eviction policy's order, leaf-first eviction and the pool's reclaim calls."""

from __future__ import annotations

from collections import deque

import pytest

from pagedkv.core import BlockManager, CacheConfig
from pagedkv.core.prefix_cache.eviction import (
    EVICTION_POLICIES,
    EvictionPolicy,
    FIFOPolicy,
    LFUPolicy,
    LRUPolicy,
    S3FIFOPolicy,
)


def cycle(policy, block, key=None):  # a cache hit then a release of an evictable block
    policy.remove(block)
    if policy.tracks_hits:
        policy.record_hit(block)
    policy.insert(block, key if key is not None else f"h{block}")


def fill(policy, blocks):
    for b in blocks:
        policy.insert(b, f"h{b}")


def test_registry_has_all_policies():
    assert set(EVICTION_POLICIES) >= {"lru", "fifo", "lfu", "s3fifo"}


def test_lru_order_refreshes_on_release():
    p = LRUPolicy(10)
    fill(p, [1, 2, 3])
    cycle(p, 1)
    assert p.order() == [2, 3, 1]
    assert p.select() == 2
    p.forget(2, "h2")
    assert p.order() == [3, 1]
    assert len(p) == 2


def test_fifo_keeps_first_release_position():
    p = FIFOPolicy(10)
    fill(p, [1, 2, 3])
    cycle(p, 1)
    assert p.order() == [1, 2, 3]
    assert p.select() == 1
    p.forget(1, "h1")
    p.insert(1, "new content")  # a reused id starts a new life at the back
    assert p.order() == [2, 3, 1]


def test_lfu_orders_by_hits_then_recency():
    p = LFUPolicy(10)
    fill(p, [1, 2, 3])
    cycle(p, 1)
    cycle(p, 1)
    cycle(p, 2)
    assert p.order() == [3, 2, 1]
    p.forget(1, "h1")
    p.insert(1, "h1b")  # hit history dies with the cached content
    assert p.order() == [3, 1, 2]


def test_s3fifo_probation_promotion_and_ghost():
    p = S3FIFOPolicy(10)  # small queue target: 1 block
    fill(p, [1, 2, 3])
    cycle(p, 2)  # hit while on probation -> main queue
    assert p.order() == [1, 3, 2]
    assert p.select() == 1
    p.forget(1, "h1")  # evicted from probation: remembered in the ghost
    p.insert(7, "h1")  # the same content comes back -> straight to main
    assert p.order() == [3, 2, 7]
    p.remove(3)
    cycle(p, 2)
    assert p.select() == 7  # 2 has a hit left in main: it is re-queued once
    assert p.order() == [7, 2]


@pytest.mark.parametrize("policy", sorted(EVICTION_POLICIES))
def test_pool_evicts_leaves_before_parents(make_mgr, policy):
    mgr = make_mgr(block_size=2, num_blocks=6, eviction_policy=policy)
    mgr.admit("p", [1, 2])  # block 1 = P
    mgr.commit(["p"])
    mgr.free("p")
    mgr.admit("pq", [1, 2, 3, 4])  # hits P, adds child block 2 = Q
    mgr.commit(["pq"])
    mgr.free("pq")
    assert mgr.evict_cached(1) == 1
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 2  # the child went first, the prefix survives
    assert mgr.evict_cached(5) == 1
    assert mgr.lookup_prefix([1, 2]) == 0
    mgr.check_integrity()


def test_evicting_prefix_uncaches_in_use_descendants(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=10)
    mgr.admit("a", [1, 2, 3, 4])  # blocks 1, 2
    mgr.commit(["a"])
    mgr.admit("b", [1, 2, 3, 4])  # hits block 1; recomputes block 2 into private block 3
    mgr.append("b", [5, 6])  # block 4, cached under a's block 2 once committed
    mgr.commit(["b"])
    assert mgr.prefix_cache.forest.parent[4] == 2
    mgr.free("a")  # block 2: unreferenced, but b's cached block 4 hangs below it
    assert mgr.evict_cached(1) == 1
    assert mgr.prefix_cache.block_hash[4] is None  # no cached suffix outlives its prefix
    assert mgr.block_table("b") == [1, 3, 4]
    assert mgr.lookup_prefix([1, 2, 3, 4, 5, 6]) == 2
    mgr.check_integrity()


def test_allocation_prefers_free_blocks_over_cached(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=6)
    mgr.admit("a", [1, 2, 3, 4])
    mgr.commit(["a"])
    mgr.free("a")
    mgr.admit("b", [9, 9, 8, 8])
    assert mgr.block_table("b") == [3, 4]
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 4
    mgr.admit("c", [7, 7, 6, 6])  # one free block left, then the LRU leaf (a's tail) goes
    assert mgr.block_table("c") == [5, 2]
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 2
    assert mgr.stats().evictions == 1
    mgr.check_integrity()


def _hot_prefix_survives_scan(make_mgr, policy):
    mgr = make_mgr(block_size=2, num_blocks=9, eviction_policy=policy)
    hot = [1, 2, 3, 4]
    for i in range(3):
        mgr.admit(("hot", i), hot, compute_last_token=False)
        mgr.commit([("hot", i)])
        mgr.free(("hot", i))
    for i in range(4):  # a scan of one-off prompts, 8 blocks in all
        mgr.admit(("scan", i), [100 + i] * 4, compute_last_token=False)
        mgr.commit([("scan", i)])
        mgr.free(("scan", i))
    mgr.check_integrity()
    return mgr.lookup_prefix(hot)


def test_s3fifo_resists_scans_where_lru_does_not(make_mgr):
    assert _hot_prefix_survives_scan(make_mgr, "lru") == 0
    assert _hot_prefix_survives_scan(make_mgr, "s3fifo") == 4


def test_reclaim_to_usage_threshold(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=11)
    for i in range(4):
        mgr.admit(i, [i, i, i, i])
        mgr.commit([i])
        mgr.free(i)
    assert len(mgr.prefix_cache.evictor) == 8
    assert mgr.reclaim_to(0.5) == 3  # 8 of 10 occupied -> 5
    assert len(mgr.prefix_cache.evictor) == 5
    mgr.check_integrity()


def test_max_cached_blocks_caps_the_cache(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=11, max_cached_blocks=3)
    mgr.admit("a", [1, 1, 2, 2, 3, 3, 4, 4])
    mgr.commit(["a"])
    # the fourth block found the cache full of in-use blocks
    assert len(mgr.prefix_cache.cached) == 3
    mgr.free("a")
    mgr.admit("b", [5, 5, 6, 6])
    mgr.commit(["b"])
    assert len(mgr.prefix_cache.cached) == 3  # b's blocks pushed a's evictable ones out
    assert mgr.lookup_prefix([5, 5, 6, 6]) == 4
    mgr.check_integrity()


@pytest.mark.parametrize("policy", ["fifo", "lfu", "s3fifo"])
def test_lazy_queues_stay_bounded_under_hit_churn(policy: str) -> None:
    """Hits on evictable blocks away from the queue head leave stale entries behind; without
    eviction pressure nothing pops them, so the policy must compact."""
    mgr = BlockManager(CacheConfig(block_size=2, num_blocks=64, eviction_policy=policy))
    for i in range(20):  # 20 cached two-block prompts, all evictable
        mgr.admit(i, [i, i, i, i])
        mgr.commit([i])
        mgr.free(i)
    evictor = mgr.prefix_cache.evictor
    for step in range(5000):  # hit a block that is not at the head, release it, again
        mgr.admit("hot", [10 if step == 0 else 11] * 4)
        mgr.free("hot")
    mgr.check_integrity()
    assert len(evictor) == 40
    entries = sum(len(q) for q in vars(evictor).values() if isinstance(q, (list, deque)))
    assert entries <= 4 * 40 + evictor.COMPACT_SLACK


def test_lru_subclass_overrides_are_honoured_not_bypassed_by_the_queue_fast_path():
    calls = []

    class MRU(LRUPolicy):  # evicts the most recently released block first
        def select(self):
            calls.append("select")
            return next(reversed(self._queue))

    assert LRUPolicy(4).queue is not None
    assert MRU(4).queue is None  # an override switches the pool to the per-call protocol
    EVICTION_POLICIES.register("test_mru", MRU)
    try:
        mgr = BlockManager(CacheConfig(block_size=2, num_blocks=3, eviction_policy="test_mru"))
        mgr.admit("a", [1, 1, 2, 2], compute_last_token=False)  # blocks 1, 2
        mgr.commit(["a"])
        mgr.free("a")  # released tail first: order [2, 1]; MRU picks 1, a non-leaf, so its
        mgr.admit("b", [3, 3], compute_last_token=False)  # leaf descendant 2 goes instead
        assert calls
        assert mgr.block_table("b") == [2]
        mgr.check_integrity()
    finally:
        EVICTION_POLICIES.unregister("test_mru")


def test_policy_without_super_init_works():
    class Bare(EvictionPolicy):
        def __init__(self, capacity):  # no super().__init__: the protocol must not need it
            self.capacity = capacity
            self.q = {}

        def insert(self, block_id, key):
            self.q[block_id] = None

        def remove(self, block_id):
            del self.q[block_id]

        def select(self):
            return next(iter(self.q))

        def __len__(self):
            return len(self.q)

        def __contains__(self, block_id):
            return block_id in self.q

        def order(self):
            return list(self.q)

    EVICTION_POLICIES.register("test_bare", Bare)
    try:
        mgr = BlockManager(CacheConfig(block_size=2, num_blocks=4, eviction_policy="test_bare"))
        mgr.admit("a", [1, 1, 2, 2, 3])
        mgr.commit(["a"])
        mgr.free("a")
        mgr.check_integrity()
        assert mgr.prefix_cache.evictor.order() == [2, 1]
        mgr.admit("b", [5, 5, 6, 6, 7], compute_last_token=False)  # evicts both, leaf first
        assert mgr.prefix_cache.num_evictions == 2
        mgr.check_integrity()
    finally:
        EVICTION_POLICIES.unregister("test_bare")


def test_a_policy_still_defining_touch_is_refused():
    """The hit hook was renamed record_hit; an old touch() would silently never be called."""
    from pagedkv.core.prefix_cache.eviction import LRUPolicy
    from pagedkv.errors import ConfigError

    with pytest.raises(ConfigError, match="record_hit"):

        class Old(LRUPolicy):
            tracks_hits = True

            def touch(self, block_id: int) -> None:
                pass

    class Both(LRUPolicy):  # a shim for older callers that also defines the new hook is fine
        def touch(self, block_id: int) -> None:
            self.record_hit(block_id)

        def record_hit(self, block_id: int) -> None:
            pass
