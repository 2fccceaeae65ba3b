"""Exact-id tests of the manager lifecycle on a 10-block pool (block 0 = null, block_size 4)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from pagedkv import OutOfBlocksError, SequenceStateError, UnknownSequenceError
from pagedkv.core import HASH_FUNCTIONS, register_hash_function


def test_admit_allocates_fresh_blocks_in_order(make_mgr):
    mgr = make_mgr()
    assert mgr.admit("a", list(range(10))) == 0
    assert mgr.block_table("a") == [1, 2, 3]
    assert mgr.num_tokens("a") == 10
    assert mgr.slot_mapping("a").tolist() == [4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    assert mgr.slot_mapping("a", 8, 10).tolist() == [12, 13]
    assert mgr.num_free_blocks == 6
    mgr.check_integrity()


def test_prefix_hit_shares_full_blocks_only(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(10)))
    mgr.commit(["a"])  # the prefill wrote a's KV: its full blocks become findable
    hit = mgr.admit("b", [*range(8), 99])  # shares two full blocks
    assert hit == 8
    assert mgr.block_table("b") == [1, 2, 4]
    assert mgr.pool.ref_cnt[1:5] == [2, 2, 1, 1]
    assert mgr.admit("c", [*range(6), 7, 7]) == 4  # diverges inside block 2
    assert mgr.block_table("c") == [1, 5]
    mgr.check_integrity()


def test_full_prompt_hit_leaves_last_token_to_compute(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(8)))
    mgr.commit(["a"])
    assert mgr.admit("b", list(range(8))) == 4
    assert mgr.block_table("b") == [1, 3]  # block 2's twin is recomputed into block 3
    assert mgr.prefix_cache.block_hash[3] is None  # a duplicate stays private
    assert mgr.admit("c", list(range(8)), compute_last_token=False) == 8
    assert mgr.block_table("c") == [1, 2]
    mgr.check_integrity()


def test_append_fills_then_allocates_and_registers(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(10)))
    assert mgr.append("a", [10, 11]).tolist() == [14, 15]
    assert mgr.prefix_cache.block_hash[3] is None  # block 3 became full, but its KV is not written
    mgr.commit(["a"])
    assert mgr.prefix_cache.block_hash[3] is not None  # the step wrote it: now cached
    assert mgr.append("a", 12).tolist() == [16]
    assert mgr.block_table("a") == [1, 2, 3, 4]
    assert mgr.lookup_prefix(list(range(13))) == 12
    mgr.check_integrity()


def test_append_batch_matches_single_appends(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(3)))
    mgr.admit("b", [7] * 4)
    slots = mgr.append_batch(["a", "b"], np.array([3, 8]))
    assert slots.dtype == np.int64
    assert slots.tolist() == [7, 12]  # a fills block 1; b opens block 3
    assert mgr.block_table("b") == [2, 3]
    assert list(mgr.seq("a").tokens) == [0, 1, 2, 3]
    mgr.check_integrity()


def test_fork_copy_on_write_only_for_writer(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(10)))
    mgr.fork("a", "c")
    assert mgr.block_table("c") == [1, 2, 3]
    assert mgr.pool.ref_cnt[1:4] == [2, 2, 2]
    assert mgr.append("c", 100).tolist() == [4 * 4 + 2]
    assert mgr.take_copies() == [(3, 4)]
    assert mgr.block_table("c") == [1, 2, 4]
    assert mgr.append("a", 10).tolist() == [14]  # block 3 is private again: written in place
    assert mgr.take_copies() == []
    assert mgr.stats().cow_copies == 1
    mgr.check_integrity()


def test_freeing_fork_member_keeps_shared_blocks(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(6)))
    mgr.commit(["a"])
    mgr.fork("a", "b")
    mgr.fork("b", "c")
    mgr.free("a")
    assert mgr.pool.ref_cnt[1:3] == [2, 2]
    mgr.free("b")
    assert mgr.pool.ref_cnt[1:3] == [1, 1]
    assert mgr.block_table("c") == [1, 2]
    mgr.free("c")
    assert mgr.pool.ref_cnt[1:3] == [0, 0]
    assert mgr.prefix_cache.evictor.order() == [1]  # the full, cached block; block 2 was partial
    assert mgr.pool.free_stack[-1] == 2
    mgr.check_integrity()


def test_explicit_prefix_sharing_by_partial_fork(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(12)))
    mgr.fork("a", "b", num_tokens=8)  # share the known 2-block prefix
    assert mgr.block_table("b") == [1, 2]
    assert mgr.num_tokens("b") == 8
    assert mgr.append("b", 50).tolist() == [16]  # next block is its own
    mgr.fork("a", "c", num_tokens=6)  # mid-block: the shared partial block is copied on write
    mgr.append("c", 51)
    assert mgr.take_copies() == [(2, 5)]
    mgr.check_integrity()


def test_truncate_releases_tail_and_cows_cached_block(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(10)))
    mgr.commit(["a"])
    mgr.truncate("a", 5)
    assert mgr.block_table("a") == [1, 2]
    assert list(mgr.seq("a").tokens) == [0, 1, 2, 3, 4]
    assert mgr.pool.free_stack[-1] == 3
    mgr.append("a", 42)  # block 2 is cached (it was full): never write it in place
    assert mgr.take_copies() == [(2, 3)]
    assert mgr.block_table("a") == [1, 3]
    assert mgr.lookup_prefix(list(range(8))) == 8  # the old block 2 is still findable
    mgr.check_integrity()


def test_out_of_blocks_names_numbers(make_mgr):
    mgr = make_mgr(num_blocks=4)
    mgr.admit("a", list(range(8)))
    with pytest.raises(OutOfBlocksError, match="requested 2, available 1") as err:
        mgr.admit("b", [9] * 8)
    assert (err.value.requested, err.value.available) == (2, 1)
    mgr.check_integrity()


def test_unknown_and_swapped_sequences_rejected(make_mgr):
    mgr = make_mgr(num_host_blocks=4)
    with pytest.raises(UnknownSequenceError):
        mgr.append("nope", 1)
    mgr.admit("a", [1, 2, 3])
    mgr.swap_out("a")
    with pytest.raises(SequenceStateError):
        mgr.append("a", 4)
    with pytest.raises(SequenceStateError):
        mgr.append_batch(["a"], [4])
    mgr.check_integrity()


def test_admit_by_length_with_caller_block_hashes(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", num_tokens=9, block_hashes=["x", ("x", 1)])
    mgr.commit(["a"])
    assert mgr.block_table("a") == [1, 2, 3]
    assert mgr.admit("b", num_tokens=8, block_hashes=["x", ("x", 1)], compute_last_token=False) == 8
    assert mgr.admit("c", num_tokens=8, block_hashes=["y", ("y", 1)]) == 0
    mgr.append("a", [0, 0, 0])  # decode blocks of caller-hashed sequences are not cached
    mgr.commit(["a"])
    assert mgr.prefix_cache.block_hash[3] is None
    mgr.check_integrity()


def test_prefix_caching_off_never_shares(make_mgr):
    mgr = make_mgr(enable_prefix_caching=False)
    mgr.admit("a", list(range(8)))
    assert mgr.admit("b", list(range(8))) == 0
    assert mgr.block_table("b") == [3, 4]
    mgr.free("a")
    assert mgr.prefix_cache.evictor.order() == []
    assert mgr.stats().prefix_queries == 0
    mgr.check_integrity()


def test_admit_batch_is_all_or_nothing(make_mgr):
    mgr = make_mgr()
    mgr.admit("p", list(range(9)))
    mgr.commit(["p"])
    hits = mgr.admit_batch(["a", "b"], [list(range(9)), list(range(9))])
    assert hits.dtype == np.int64
    assert hits.tolist() == [8, 8]
    assert mgr.block_table("b") == [1, 2, 5]
    before = (list(mgr.pool.free_stack), mgr.seq_ids)
    with pytest.raises(OutOfBlocksError, match="requested 6, available 4"):
        mgr.admit_batch(["c", "d"], [[5] * 12, [6] * 12])
    assert (list(mgr.pool.free_stack), mgr.seq_ids) == before
    mgr.check_integrity()


def test_admit_batch_hashes_each_prompt_once_and_matches_admit(make_mgr):
    calls = []

    def counting_sha256(data: bytes) -> bytes:
        calls.append(data)
        return hashlib.sha256(data).digest()

    register_hash_function("test-counting", counting_sha256)
    try:
        prompts = [list(range(9)), [*range(8), 5, 6, 7, 8, 9], [7] * 3]
        batch = make_mgr(num_blocks=20, hash_algo="test-counting")
        one_by_one = make_mgr(num_blocks=20)
        for mgr in (batch, one_by_one):
            mgr.admit("p", list(range(9)), cache_salt="s")
            mgr.commit(["p"])
        calls.clear()
        hits = batch.admit_batch(["a", "b", "c"], prompts, cache_salt="s")
        assert hits.tolist() == [8, 8, 0]
        # each full block once; the root of salt "s" is remembered from admitting "p"
        assert len(calls) == 2 + 3 + 0
        assert hits.tolist() == [
            one_by_one.admit(sid, p, cache_salt="s") for sid, p in zip("abc", prompts, strict=True)
        ]
        for sid in "abc":
            assert batch.block_table(sid) == one_by_one.block_table(sid)
            assert batch.seq(sid).block_hashes == one_by_one.seq(sid).block_hashes
        assert batch.stats().as_dict() == one_by_one.stats().as_dict()
        batch.check_integrity()
    finally:
        HASH_FUNCTIONS.unregister("test-counting")


def test_packed_slot_mapping_and_seq_lens(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(6)))
    mgr.admit("b", list(range(3)))
    slots, cu = mgr.packed_slot_mapping(["a", "b"], [4, 0])
    assert slots.dtype == np.int64
    assert cu.dtype == np.int32
    assert slots.tolist() == [8, 9, 12, 13, 14]
    assert cu.tolist() == [0, 2, 5]
    lens = mgr.seq_lens(["a", "b"])
    assert lens.dtype == np.int32
    assert lens.tolist() == [6, 3]


def test_decode_blocks_of_a_short_prompt_are_cached(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", [1, 2])  # shorter than a block: nothing to look up or register yet
    mgr.append("a", [3, 4, 5])
    mgr.commit(["a"])
    assert mgr.lookup_prefix([1, 2, 3, 4, 5]) == 4
