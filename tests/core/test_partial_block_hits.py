"""Partial-block prefix hits (``admit(..., partial_block_hit=True)``): exact block ids on tiny
pools, the copy's hold on its source, the room it takes, refusals, and stale token records."""

from __future__ import annotations

from typing import Any

import pytest
from core_helpers import fails_atomically

from pagedkv.core import BlockManager, CacheConfig
from pagedkv.core.prefix_cache.block_tokens import common_tokens
from pagedkv.core.tokens import as_token_array
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError

A = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # blocks of 4: [1 2 3 4] [5 6 7 8] [9 . . .]


def make(num_blocks: int = 16, **kw: Any) -> BlockManager:
    mgr = BlockManager(CacheConfig(block_size=4, num_blocks=num_blocks, **kw))
    mgr.check_integrity()
    return mgr


def computed(mgr: BlockManager, sid: str, tokens: list[int]) -> None:
    """Admit ``tokens`` as ``sid``, run its copies, report every token written."""
    mgr.admit(sid, tokens)
    mgr.take_copies()
    mgr.commit([sid])
    mgr.check_integrity()


def test_common_tokens_counts_whole_int64_ids():
    a = as_token_array([1, 2, 3, 256]).tobytes()
    assert common_tokens(a, as_token_array([1, 2, 3, 256]).tobytes()) == 4
    assert common_tokens(a, as_token_array([1, 2, 3, 0]).tobytes()) == 3  # 256 vs 0: byte 1
    assert common_tokens(a, as_token_array([2]).tobytes()) == 0
    assert common_tokens(a, b"") == 0


def test_the_first_tokens_of_the_next_cached_block_are_copied_exact_ids():
    mgr = make()
    computed(mgr, "a", A)
    assert mgr.block_table("a") == [1, 2, 3]
    got = mgr.admit("b", [1, 2, 3, 4, 5, 6, 0, 0, 7], partial_block_hit=True)
    assert got == 6  # block [1 2 3 4] and 5, 6 of block 2
    assert mgr.block_table("b") == [1, 4, 5]
    assert mgr.num_computed("b") == 6
    assert mgr.pool.ref_cnt[2] == 2  # a's reference and the pending copy's hold
    mgr.check_integrity()
    assert mgr.take_copies() == [(2, 4)]  # the whole block: rows 2-3 are rewritten by b
    assert mgr.pool.ref_cnt[2] == 1
    mgr.check_integrity()
    st = mgr.stats()
    assert (st.prefix_hit_tokens, st.partial_hit_tokens, st.prefix_hit_requests) == (6, 2, 1)
    assert st.cow_copies == 0


def test_off_by_default_and_with_prefix_caching_off():
    mgr = make()
    computed(mgr, "a", A)
    assert mgr.admit("b", [1, 2, 3, 4, 5, 6, 0]) == 4
    assert mgr.num_pending_copies == 0
    off = make(enable_prefix_caching=False)
    computed(off, "a", A)
    assert off.admit("b", [1, 2, 3, 4, 5, 6, 0], partial_block_hit=True) == 0
    assert off.num_pending_copies == 0


def test_the_last_token_is_computed_unless_told_otherwise():
    mgr = make()
    computed(mgr, "a", A)
    same = [1, 2, 3, 4, 5, 6, 7, 8]  # both blocks cached: block 1 is not a hit (last token)
    assert mgr.admit("b", same, partial_block_hit=True) == 7
    assert mgr.take_copies() == [(2, mgr.block_table("b")[1])]
    assert mgr.admit("c", [1, 2, 3, 4, 5, 6], compute_last_token=False, partial_block_hit=True) == 6
    assert mgr.admit("d", [1, 2, 3, 4, 5], partial_block_hit=True) == 4  # 5 is the last token
    mgr.check_integrity()


def test_the_longest_agreeing_child_wins_and_a_first_token_miss_is_no_hit():
    mgr = make()
    computed(mgr, "a", A)  # child [5 6 7 8] of block 1
    computed(mgr, "x", [1, 2, 3, 4, 5, 0, 0, 0, 1])  # child [5 0 0 0]: block 4
    computed(mgr, "y", [1, 2, 3, 4, 5, 6, 7, 0, 1])  # child [5 6 7 0]: block 6
    assert mgr.admit("b", [1, 2, 3, 4, 5, 6, 7, 9, 9], partial_block_hit=True) == 7
    assert mgr.take_copies()[0][0] in (2, mgr.block_table("y")[1])  # 3 tokens agree in both
    assert mgr.admit("c", [1, 2, 3, 4, 6, 6, 6], partial_block_hit=True) == 4
    assert mgr.num_pending_copies == 0
    mgr.check_integrity()


def test_no_partial_hit_without_a_whole_block_hit_nor_under_another_salt():
    mgr = make()
    computed(mgr, "a", A)
    assert mgr.admit("b", [1, 2, 3, 0, 0], partial_block_hit=True) == 0  # roots: not indexed
    assert mgr.admit("c", A, cache_salt="t", partial_block_hit=True) == 0
    assert mgr.num_pending_copies == 0
    mgr.check_integrity()


def test_the_source_is_held_until_the_copy_runs():
    mgr = make()  # 15 usable blocks
    computed(mgr, "a", A)
    mgr.admit("b", [1, 2, 3, 4, 5, 6, 0, 0], partial_block_hit=True)
    mgr.free("a")
    mgr.free("b")  # b's copy is dropped with its block; the hold stays until take_copies
    mgr.check_integrity()
    mgr.evict_cached(16)  # evicting block 1 uncaches its child 2 too, but cannot free it
    assert mgr.pool.ref_cnt[2] == 1
    assert 2 not in mgr.pool.free_stack
    mgr.admit("all", list(range(100, 156)))  # the other 14 blocks
    assert 2 not in mgr.block_table("all")
    with pytest.raises(OutOfBlocksError):
        mgr.admit("more", [1])
    assert mgr.take_copies() == []
    assert mgr.pool.ref_cnt[2] == 0
    assert mgr.pool.free_stack == [2]
    mgr.check_integrity()


def test_an_unreferenced_source_counts_against_the_room_and_a_refusal_changes_nothing():
    mgr = make(num_blocks=6)  # 5 usable blocks
    computed(mgr, "a", A)  # [1 2 3]; its partial block 3 is not cached
    mgr.free("a")
    mgr.admit("filler", [7, 7, 7, 7, 7])
    assert mgr.block_table("filler") == [3, 4]
    assert mgr.pool.free_stack == [5]
    mgr.check_integrity()
    # b needs 2 new blocks; the hit 1 and the source 2 leave the evictable set: 1 is left
    err = fails_atomically(
        mgr,
        OutOfBlocksError,
        mgr.admit,
        "b",
        [1, 2, 3, 4, 5, 6, 0, 0, 0],
        partial_block_hit=True,
    )
    assert isinstance(err, OutOfBlocksError)
    assert (err.requested, err.available) == (2, 1)
    assert mgr.admit("b2", [1, 2, 3, 4, 5, 6, 0, 0], partial_block_hit=True) == 6
    assert mgr.block_table("b2") == [1, 5]
    assert mgr.take_copies() == [(2, 5)]
    mgr.check_integrity()


def test_a_stale_token_record_is_never_matched():
    mgr = make(num_blocks=5)  # 4 usable blocks
    computed(mgr, "a", [1, 2, 3, 4, 5, 6, 7, 8])
    h0 = mgr.hash_prompt([1, 2, 3, 4]).hashes[0]
    mgr.free("a")
    assert mgr.evict_cached(1) == 1  # the leaf [5 6 7 8] (block 2) leaves the cache
    # a caller-keyed child of block 1 registered into block 2: no tokens recorded
    mgr.admit("k", num_tokens=8, block_hashes=[h0, "caller-key"])
    assert mgr.block_table("k") == [1, 2]
    mgr.commit(["k"])
    mgr.check_integrity()
    assert mgr.admit("b", [1, 2, 3, 4, 5, 6, 7, 0, 0], partial_block_hit=True) == 4
    assert mgr.num_pending_copies == 0


def test_a_bad_flag_is_refused_before_any_change():
    mgr = make()
    computed(mgr, "a", A)
    fails_atomically(mgr, InvalidArgumentError, mgr.admit, "b", A, partial_block_hit=1)


@pytest.mark.parametrize("chunk", [5, 6, 7, 9])
def test_a_hashed_first_chunk_takes_a_partial_hit_up_to_its_own_end(chunk):
    mgr = make()
    computed(mgr, "a", A)
    hashed = mgr.hash_prompt([1, 2, 3, 4, 5, 6, 7, 0, 0])
    got = mgr.admit("b", hashed.prefix(chunk), partial_block_hit=True)
    assert got == min(4 + 3, chunk - 1)  # 3 rows agree; the chunk's last token is computed
    mgr.check_integrity()
