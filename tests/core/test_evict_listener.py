"""The pool's eviction listener sees every block that leaves the prefix cache, with the hash it
had, before the block is handed to a new owner (what a write-on-evict KV tier needs)."""

from __future__ import annotations

import pytest
from core_helpers import OPS, generic, run_lockstep
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedkv.core import EVICTION_POLICIES, BlockManager, CacheConfig
from pagedkv.errors import InvalidArgumentError


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


# ----------------------------------------------------------------- a listener that raises
class TierDownError(Exception):
    """What a KV tier's write may raise (a full disk, a lost connection)."""


def test_raising_listener_leaves_the_manager_whole():
    """Issue 16: an exception escaping the listener used to leak the evicted blocks (the
    integrity check failed and every later admission raised StopIteration, even without the
    listener). The evicting call succeeds, the failure is counted and logged, and the blocks
    reach their new owner."""
    mgr = _mgr("lru")
    seen: list[tuple[int, object]] = []

    def listener(pairs):
        seen.extend(pairs)
        raise TierDownError("disk full")

    mgr.prefix_cache.set_evict_listener(listener)
    mgr.admit("a", [1, 2, 3, 4, 5])
    mgr.commit(["a"])
    table = mgr.block_table("a")
    mgr.free("a")  # blocks table[:2] cached, table[2] free
    mgr.admit("b", [9, 9, 8, 8, 7, 7, 6, 6, 5])  # 5 blocks: both cached ones are evicted
    assert sorted(b for b, _ in seen) == sorted(table[:2])
    assert sorted(mgr.block_table("b")) == [1, 2, 3, 4, 5]  # the evicted blocks were handed on
    mgr.check_integrity()
    st = mgr.stats()
    assert (st.evict_listener_errors, st.evictions) == (1, 2)
    assert isinstance(mgr.prefix_cache.evict_log.last_error, TierDownError)
    assert (st.blocks_used, st.blocks_cached, st.blocks_free) == (5, 0, 0)
    mgr.free("b")
    mgr.prefix_cache.set_evict_listener(None)
    mgr.admit("c", [1, 2, 3, 4, 5, 6, 7, 8, 9])  # later admissions work
    mgr.check_integrity()
    assert mgr.stats().blocks_used == 5


def test_raising_listener_is_logged(caplog):
    mgr = _mgr("lru")

    def listener(pairs):
        raise TierDownError("connection lost")

    mgr.prefix_cache.set_evict_listener(listener)
    mgr.admit("a", [1, 2, 3])
    mgr.commit(["a"])
    mgr.free("a")
    with caplog.at_level("WARNING", logger="pagedkv.core.prefix_cache.evict_log"):
        assert mgr.evict_cached(5) == 1
    assert "eviction listener" in caplog.text
    assert "connection lost" in caplog.text
    mgr.check_integrity()


@pytest.mark.parametrize("bad", [5, "tier", [print]])
def test_non_callable_listener_is_refused(bad):
    mgr = _mgr("lru")
    seen: list[tuple[int, object]] = []
    mgr.prefix_cache.set_evict_listener(seen.extend)
    with pytest.raises(InvalidArgumentError, match=r"evict listener must be callable or None"):
        mgr.prefix_cache.set_evict_listener(bad)
    mgr.admit("a", [1, 2, 3])
    mgr.commit(["a"])
    mgr.free("a")
    mgr.evict_cached(1)
    assert len(seen) == 1  # the old listener is still in place


def _lockstep_listeners(
    fail: list[bool],
) -> tuple[list[list[tuple[int, object]]], list[list[tuple[int, object]]], object, object]:
    """A listener that raises on call ``k`` when ``fail[k % len(fail)]``, and one that never
    raises; each records what it was handed."""
    failing_seen: list[list[tuple[int, object]]] = []
    good_seen: list[list[tuple[int, object]]] = []

    def failing(pairs):
        failing_seen.append(list(pairs))
        if fail[(len(failing_seen) - 1) % len(fail)]:
            raise TierDownError(f"write {len(failing_seen)} failed")

    return failing_seen, good_seen, failing, good_seen.append


@pytest.mark.parametrize("policy", [*sorted(EVICTION_POLICIES), "lru-generic"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=1, max_size=40),
    fail=st.lists(st.booleans(), min_size=1, max_size=4),
    cap=st.sampled_from([None, 3]),
)
def test_raising_listener_changes_nothing_but_its_counter(policy, ops, fail, cap):
    """Differential: a manager whose listener raises on some evictions behaves exactly like one
    whose listener never raises (same snapshots, same blocks reported, integrity after every
    step), and counts each raise."""
    name = policy.removesuffix("-generic")
    cfg = CacheConfig(block_size=2, num_blocks=8, eviction_policy=name, max_cached_blocks=cap)
    failing_mgr, good_mgr = BlockManager(cfg), BlockManager(cfg)
    if name != policy:  # the per-call policy protocol instead of the queue fast path
        failing_mgr, good_mgr = generic(failing_mgr), generic(good_mgr)
    failing_seen, good_seen, failing, good = _lockstep_listeners(fail)
    failing_mgr.prefix_cache.set_evict_listener(failing)
    good_mgr.prefix_cache.set_evict_listener(good)
    run_lockstep(failing_mgr, good_mgr, ops, lambda m: m.snapshot())
    assert failing_seen == good_seen
    raised = sum(fail[k % len(fail)] for k in range(len(failing_seen)))
    st_fail, st_good = failing_mgr.stats(), good_mgr.stats()
    assert (st_fail.evict_listener_errors, st_good.evict_listener_errors) == (raised, 0)
    usable = cfg.num_usable_blocks
    assert st_fail.blocks_used + st_fail.blocks_cached + st_fail.blocks_free == usable
    failing_mgr.prefix_cache.set_evict_listener(None)  # after the failures, admissions work
    failing_mgr.free_batch(list(failing_mgr.seq_ids))
    failing_mgr.reset_prefix_cache()  # drops the pins too
    failing_mgr.admit("last", list(range(100, 100 + 2 * usable)), compute_last_token=False)
    failing_mgr.check_integrity()
    assert failing_mgr.num_free_blocks == 0
