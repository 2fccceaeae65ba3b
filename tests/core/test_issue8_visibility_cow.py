"""Issue 8, items 1-3 and 9-12: KV visibility (commit), pending copy-on-write copies, sliding
windows cut by truncate/fork, exact eviction counts, truthful re-registration, exact pressure
thresholds, ``is_block_writable`` bounds. Each test fails on the code before the fix."""

from __future__ import annotations

import pytest
from core_helpers import busy, fails_atomically

from pagedkv.core import BlockManager, CacheConfig, PressureLevel, SlidingWindow
from pagedkv.errors import (
    InvalidArgumentError,
    PagedKVError,
    SequenceStateError,
    UnknownSequenceError,
)


def make(**kw: object) -> BlockManager:
    mgr = BlockManager(CacheConfig(**{"block_size": 4, "num_blocks": 16, **kw}))  # type: ignore
    mgr.check_integrity()
    return mgr


# ------------------------------------------------------------------ item 1: visibility
def test_issue_repro_an_aborted_sequence_leaves_no_stale_block_for_another_tenant():
    mgr = make(block_size=1, num_blocks=3)
    mgr.admit("a", [7], cache_salt="tenant-a")
    mgr.commit(["a"])  # tenant-a's KV is written
    mgr.free("a")
    assert mgr.evict_cached(1) == 1
    mgr.admit("b", [852], cache_salt="tenant-b")
    mgr.free("b")  # aborted before its step wrote any KV: block holds tenant-a's bytes
    assert mgr.admit("b2", [852, 9], cache_salt="tenant-b") == 0
    mgr.check_integrity()


def test_a_prompt_cannot_hit_blocks_another_sequence_has_not_computed():
    mgr = make()
    prompt = list(range(9))
    mgr.admit("x", prompt)
    assert mgr.lookup_prefix(prompt) == 0
    assert mgr.admit("y", prompt) == 0  # forward(["y"]) must not read x's unwritten blocks
    mgr.commit(["x"])
    assert mgr.lookup_prefix(prompt) == 8
    assert mgr.admit("z", prompt) == 8
    mgr.check_integrity()


@pytest.mark.parametrize("abort", ["free", "truncate", "preempt", "swap_out", "preempt_swap"])
def test_dropping_a_sequence_before_its_commit_leaves_nothing_cached(abort):
    mgr = make(num_host_blocks=8)
    prompt = list(range(9))
    mgr.admit("a", prompt)
    mgr.append("a", [9, 10, 11])  # a third full block, hashed but not computed either
    {
        "free": lambda: mgr.free("a"),
        "truncate": lambda: mgr.truncate("a", 0),
        "preempt": lambda: mgr.preempt("a"),
        "swap_out": lambda: mgr.swap_out("a"),
        "preempt_swap": lambda: mgr.preempt("a", "swap"),
    }[abort]()
    assert mgr.prefix_cache.cached == {}
    assert mgr.lookup_prefix([*prompt, 9, 10, 11]) == 0
    mgr.check_integrity()


def test_num_computed_follows_hits_commits_truncate_and_fork():
    mgr = make()
    mgr.admit("a", list(range(9)))
    assert mgr.num_computed("a") == 0
    mgr.commit(["a"])
    assert mgr.num_computed("a") == 9
    assert mgr.admit("b", list(range(10))) == 8
    assert mgr.num_computed("b") == 8  # the hit's KV is written
    mgr.append("b", [1, 2])
    assert mgr.num_computed("b") == 8  # appended tokens wait for the forward
    mgr.fork("b", "c", 11)
    assert mgr.num_computed("c") == 8
    mgr.commit(["b"])
    assert mgr.num_computed("b") == 12
    mgr.truncate("b", 5)
    assert mgr.num_computed("b") == 5
    mgr.check_integrity()


def test_decode_blocks_are_hashed_at_append_but_cached_only_at_commit():
    mgr = make()
    mgr.admit("a", [1, 2, 3])
    mgr.append_batch(["a"], [4])
    assert len(mgr.seq("a").block_hashes) == 1
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 0
    mgr.commit(["a"])
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 4
    mgr.check_integrity()


def test_commit_is_o1_per_sequence_when_no_block_became_full(monkeypatch):
    mgr = make(num_blocks=64)
    ids = list(range(8))
    for i in ids:
        mgr.admit(i, [i] * 5)
    mgr.commit(ids)
    calls = []
    monkeypatch.setattr(mgr.prefix_cache, "register_chain", lambda *a: calls.append(a) or a[3])
    mgr.append_batch(ids, [0] * 8)  # 6 tokens: no block became full
    mgr.commit(ids)
    assert calls == []


def test_commit_respects_min_cache_tokens_and_register_prefix_does_not():
    mgr = make(min_cache_tokens=8)
    mgr.admit("short", [1, 2, 3, 4, 5])
    mgr.commit(["short"])
    assert mgr.lookup_prefix([1, 2, 3, 4, 5]) == 0
    assert mgr.register_prefix("short") == 4
    assert mgr.lookup_prefix([1, 2, 3, 4, 5]) == 4


def test_register_prefix_reports_partial_computation():
    mgr = make()
    mgr.admit("a", list(range(12)))
    assert mgr.register_prefix("a", 6) == 4  # chunked prefill: 6 tokens computed so far
    assert mgr.num_computed("a") == 6
    assert mgr.lookup_prefix(list(range(12))) == 4
    mgr.commit(["a"])
    assert mgr.lookup_prefix(list(range(12))) == 12


def test_commit_is_all_or_nothing():
    mgr = busy()
    fails_atomically(mgr, UnknownSequenceError, mgr.commit, ["a", "d", "nope"])
    err = fails_atomically(mgr, SequenceStateError, mgr.commit, ["d", "s"])
    assert "'s' is swapped" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.commit, ["d", ["unhashable"]])


def test_integrity_check_catches_a_block_offered_before_it_was_computed():
    mgr = make()
    mgr.admit("a", list(range(9)))
    mgr.seq("a").num_hashed = 1  # as if registered at allocation, before any KV was written
    with pytest.raises(PagedKVError, match="0 tokens computed"):
        mgr.check_integrity()


# ------------------------------------------------------------------ item 2: pending copies
def test_issue_repro_freeing_the_writer_drops_its_pending_copy():
    mgr = make(block_size=8, num_blocks=4, num_host_blocks=2)
    mgr.admit("a", [1, 2, 3])
    mgr.commit(["a"])
    mgr.fork("a", "b")
    mgr.admit("d", [9, 9], cache_salt="other")
    mgr.commit(["d"])
    mgr.swap_out("d")
    mgr.append("a", [4])  # copy-on-write queued into a fresh block
    mgr.free("a")
    mgr.check_integrity()  # no pending copy may target a released block
    back = mgr.swap_in("d")
    assert mgr.take_copies() == []  # nothing would overwrite d's swapped-in KV
    assert back == [(0, mgr.block_table("d")[0])]
    mgr.check_integrity()


@pytest.mark.parametrize("drop", ["truncate", "preempt", "window"])
def test_releasing_a_pending_copy_target_drops_the_copy(drop):
    mgr = make(block_size=4)
    window = SlidingWindow(1) if drop == "window" else None
    mgr.admit("a", [1, 2, 3, 4, 5], sliding_window=window)
    mgr.fork("a", "b")
    mgr.append("a", [6])  # copy-on-write of the shared block 1 (tokens 4..5) is pending
    assert mgr.num_pending_copies == 1
    if drop == "truncate":
        mgr.truncate("a", 4)
    elif drop == "preempt":
        mgr.preempt("a")
    else:
        mgr.append("a", [7, 8, 9, 10, 11])
        mgr.append("a", [12])  # the window slides past the copy's target
    mgr.check_integrity()
    assert mgr.take_copies() == []


def test_a_pending_copys_source_is_held_until_take_copies():
    mgr = make(block_size=4, num_blocks=6)
    mgr.admit("a", [1, 2, 3])
    mgr.fork("a", "b")
    mgr.append("a", [4])  # copies block 1 (b's) into a private block 2
    mgr.free("b")  # the source's last sequence goes: the copy has not read it yet
    assert mgr.pool.ref_cnt[1] == 1
    mgr.admit("c", [5] * 12, compute_last_token=False)  # takes every obtainable block...
    assert 1 not in mgr.block_table("c")  # ... but not the source
    mgr.check_integrity()
    assert mgr.take_copies() == [(1, 2)]
    assert mgr.pool.ref_cnt[1] == 0  # released once the copy is handed out
    mgr.check_integrity()


def test_the_remaining_owner_still_writes_the_source_in_place():
    mgr = make(block_size=4)
    mgr.admit("a", [1, 2, 3])
    mgr.fork("a", "b")
    slots = mgr.append_batch(["a", "b"], [4, 5])
    assert mgr.take_copies() == [(1, 2)]  # one copy: b writes block 1 in place
    assert slots.tolist() == [2 * 4 + 3, 1 * 4 + 3]
    assert mgr.stats().cow_copies == 1


def test_swap_out_reads_a_pending_copy_target_from_its_source():
    mgr = make(block_size=4, num_host_blocks=4)
    mgr.admit("a", [1, 2, 3])
    mgr.fork("a", "b")
    mgr.append("a", [4])  # 1 -> 2 pending: block 2 holds nothing yet
    assert mgr.swap_out("a") == [(1, 0)]  # so the swap reads block 1
    mgr.check_integrity()
    assert mgr.take_copies() == []


def test_a_copy_never_reads_another_pending_copys_target():
    mgr = make(block_size=4)
    mgr.admit("a", [1, 2, 3])
    mgr.fork("a", "b")
    mgr.append("a", [4])  # 1 -> 2
    mgr.truncate("a", 3)
    mgr.fork("a", "c")  # shares block 2, still unfilled
    mgr.append("c", [7])  # must copy from block 1, not from the unfilled block 2
    copies = mgr.take_copies()
    assert {src for src, _ in copies} == {1}
    mgr.check_integrity()


def test_integrity_check_catches_a_copy_into_an_unreferenced_block():
    mgr = make()
    mgr.admit("a", [1, 2, 3])
    mgr.fork("a", "b")
    mgr.append("a", [4])
    dst = mgr.block_table("a")[0]
    mgr.seq("a").block_table[0] = mgr.block_table("b")[0]  # forget dst behind the pool's back
    mgr.pool.ref_cnt[mgr.block_table("b")[0]] += 1
    mgr.pool.ref_cnt[dst] = 0
    with pytest.raises(PagedKVError):
        mgr.check_integrity()


# ------------------------------------------------------------------ item 3: windows
def test_issue_repro_truncate_may_not_leave_the_next_window_reaching_released_blocks():
    mgr = make(block_size=1, num_blocks=16)
    mgr.admit("w", list(range(10)), sliding_window=SlidingWindow(4))
    mgr.append("w", [10])  # releases positions 0..6
    err = fails_atomically(mgr, InvalidArgumentError, mgr.truncate, "w", 8)
    assert "attends to positions 5..8" in str(err)
    assert "released positions 5..6" in str(err)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.fork, "w", "x", 8)
    assert "released positions 5..6" in str(err)
    mgr.truncate("w", 10)  # the next token (10) reads 7..10: all there
    mgr.fork("w", "y", 10)
    mgr.check_integrity()


def test_a_cut_at_a_block_boundary_still_needs_the_last_tokens_block():
    mgr = make(block_size=2)
    mgr.admit("w", list(range(6)), sliding_window=SlidingWindow(1))
    mgr.append("w", [6])  # blocks 0..2 fall behind the window of token 6
    for cut in (mgr.truncate, lambda sid, n: mgr.fork(sid, "x", n)):
        err = fails_atomically(mgr, InvalidArgumentError, cut, "w", 6)
        assert "token 5 lies in a block the sliding window already released" in str(err)


# ------------------------------------------------------------------ items 9-12
def test_evict_cached_evicts_exactly_what_it_reports():
    mgr = make(block_size=1, num_blocks=16)
    mgr.admit("w", [1, 2, 3, 4], sliding_window=SlidingWindow(1))
    mgr.commit(["w"])
    mgr.append("w", [5])  # the window releases the cached chain's first 3 blocks
    free, evictions = len(mgr.pool.free_stack), mgr.stats().evictions
    assert mgr.evict_cached(1) == 1
    assert len(mgr.pool.free_stack) == free + 1
    assert mgr.stats().evictions == evictions + 1
    mgr.check_integrity()


def test_register_prefix_after_reset_re_registers_and_reports_truthfully():
    mgr = make(num_blocks=8)
    prompt = list(range(9))
    mgr.admit("a", prompt)
    mgr.commit(["a"])
    mgr.reset_prefix_cache()
    assert mgr.lookup_prefix(prompt) == 0
    assert mgr.register_prefix("a") == 8
    assert mgr.lookup_prefix(prompt) == 8
    mgr.check_integrity()


def test_register_prefix_after_its_chain_was_evicted_reports_truthfully():
    mgr = make(num_blocks=8)
    prompt = list(range(9))
    mgr.admit("a", prompt, sliding_window=SlidingWindow(5))
    mgr.commit(["a"])
    mgr.append("a", [9])  # the window releases block 0: cached, unreferenced
    assert mgr.evict_cached(1) == 1  # evicting it drops block 1 from the cache too
    assert mgr.lookup_prefix(prompt) == 0
    assert mgr.register_prefix("a") == 0  # block 0 is gone: nothing can be re-registered
    mgr.check_integrity()


def test_pressure_thresholds_are_exact():
    mgr = make(
        block_size=1,
        num_blocks=101,
        pressure_thresholds=(0.55, 0.9, 0.95),
        enable_prefix_caching=False,
    )
    mgr.admit("a", [0] * 54)
    assert mgr.pressure_level is PressureLevel.LOW
    mgr.append("a", [0])  # 55 of 100 blocks used: 0.55
    assert mgr.pressure_level is PressureLevel.MEDIUM


def test_reclaim_to_is_exact():
    mgr = make(block_size=1, num_blocks=101)
    mgr.admit("a", list(range(40)), compute_last_token=False)
    mgr.commit(["a"])
    mgr.free("a")
    assert mgr.reclaim_to(0.29) == 11  # 40 occupied -> 29 (0.29 * 100 is 28.999... in floats)


@pytest.mark.parametrize("bad", [10**6, 24, -1, 1.5, "1", True])
def test_is_block_writable_rejects_bad_ids(bad):
    mgr = busy()
    err = fails_atomically(mgr, InvalidArgumentError, mgr.is_block_writable, bad)
    assert "[0, 24)" in str(err)
