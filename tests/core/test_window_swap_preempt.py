"""Sliding windows, swapping to the host pool, preemption victims, watermarks, pressure."""

from __future__ import annotations

import pytest

from pagedkv import InvalidArgumentError, OutOfBlocksError, PressureLevel, SlidingWindow
from pagedkv.core import PREEMPTION_POLICIES


def test_sliding_window_releases_blocks_behind_window(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=10)
    mgr.admit("w", list(range(6)), sliding_window=SlidingWindow(window_tokens=4, sink_tokens=2))
    assert mgr.block_table("w") == [1, 2, 3]
    mgr.append("w", [6, 7])  # token 6 still reads positions 3..6: nothing goes yet
    assert mgr.block_table("w") == [1, 2, 3, 4]
    mgr.append_batch(["w"], [8])
    assert mgr.block_table("w") == [1, 0, 3, 4, 5]  # block 2 fell out; the sink block stays
    assert mgr.slot_mapping("w").tolist() == [2, 3, -1, -1, 6, 7, 8, 9, 10]
    mgr.append_batch(["w"], [9])
    assert mgr.block_table("w") == [1, 0, 0, 4, 5]
    assert mgr.pool.ref_cnt[3] == 0
    with pytest.raises(InvalidArgumentError, match="sliding window"):
        mgr.truncate("w", 5)
    mgr.check_integrity()


def test_window_keeps_prompt_blocks_until_prefill_is_done(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=10)
    mgr.admit("w", list(range(10)), sliding_window=SlidingWindow(window_tokens=4))
    assert mgr.block_table("w") == [1, 2, 3, 4, 5]  # the prefill attends through all of them
    assert mgr.slot_mapping("w").min() >= 0
    mgr.append("w", 10)  # the step after prefill: blocks wholly behind the window go
    assert mgr.block_table("w") == [0, 0, 0, 4, 5, 6]
    mgr.check_integrity()


def test_window_without_sinks_keeps_a_constant_footprint(make_mgr):
    mgr = make_mgr(block_size=4, num_blocks=6, enable_prefix_caching=False)
    mgr.admit("w", [0] * 4, sliding_window=SlidingWindow(window_tokens=8))
    for t in range(200):  # 5 usable blocks would run out after 20 tokens without the window
        mgr.append("w", t)
        assert sum(b != 0 for b in mgr.block_table("w")) <= 3
    mgr.check_integrity()


def test_swap_out_and_in_round_trip(make_mgr):
    mgr = make_mgr(num_host_blocks=4)
    mgr.admit("a", list(range(6)))
    mgr.commit(["a"])  # block 1 (full) is cached: swap-out leaves it cached, reusable
    out = mgr.swap_out("a")
    assert out == [(1, 0), (2, 1)]
    assert mgr.num_free_host_blocks == 2
    assert mgr.pool.ref_cnt[1:3] == [0, 0]
    mgr.admit("b", [9] * 4)
    assert mgr.block_table("b") == [2]  # the freed partial block is reused at once
    back = mgr.swap_in("a")
    assert back == [(0, 3), (1, 4)]
    assert mgr.block_table("a") == [3, 4]
    assert mgr.num_free_host_blocks == 4
    assert mgr.append("a", 6).tolist() == [4 * 4 + 2]
    st = mgr.stats()
    assert (st.swapped_out_blocks, st.swapped_in_blocks) == (2, 2)
    mgr.check_integrity()


def test_swap_out_needs_host_room(make_mgr):
    mgr = make_mgr(num_host_blocks=1)
    mgr.admit("a", list(range(6)))
    with pytest.raises(OutOfBlocksError, match="host blocks"):
        mgr.swap_out("a")
    mgr.check_integrity()


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("priority", ["low", "mid"]),
        ("newest", ["low", "mid"]),
        ("lru", ["old", "mid"]),
        ("longest", ["old", "low"]),  # low and mid both hold 2 blocks: the newer goes first
    ],
)
def test_victim_selection_orders(make_mgr, policy, expected):
    mgr = make_mgr(num_blocks=20)
    mgr.admit("old", list(range(12)), priority=0)  # 3 blocks, arrived first
    mgr.admit("mid", [1] * 8, priority=1)
    mgr.admit("low", [2] * 4, priority=5)
    mgr.append("low", 1)  # "old" is now the least recently used
    assert set(PREEMPTION_POLICIES) >= {"priority", "lru", "longest", "newest"}
    assert mgr.select_victims(4, policy=policy) == expected
    assert mgr.select_victims(3, policy="longest") == ["old"]  # 3 blocks are enough
    assert mgr.select_victims(100, policy="lru") == ["old", "mid", "low"]


def test_preempt_recompute_and_swap(make_mgr):
    mgr = make_mgr(num_host_blocks=8)
    mgr.admit("a", list(range(5)))
    mgr.admit("b", [7] * 5)
    assert mgr.preempt("a") == []
    assert "a" not in mgr
    assert mgr.preempt("b", mode="swap") == [(3, 0), (4, 1)]
    assert mgr.stats().preemptions == 2
    with pytest.raises(InvalidArgumentError):
        mgr.select_victims(1, policy="random")
    mgr.check_integrity()


def test_watermark_refuses_admission_but_not_decode(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=11, watermark=0.5)  # keep 5 of 10 blocks
    mgr.admit("a", [1] * 10)
    assert not mgr.can_admit(1)
    with pytest.raises(OutOfBlocksError, match="available 0"):
        mgr.admit("b", [2])
    for t in range(10):
        mgr.append("a", t)  # decode may use the reserve
    assert mgr.num_free_blocks == 0
    mgr.check_integrity()


def test_pressure_callbacks_fire_on_level_changes(make_mgr):
    mgr = make_mgr(block_size=1, num_blocks=11, enable_prefix_caching=False)
    seen = []
    mgr.on_pressure_change(lambda old, new: seen.append((old, new)))
    mgr.admit("a", [0] * 6)
    assert seen == []
    mgr.append("a", [0])
    assert seen == [(PressureLevel.LOW, PressureLevel.MEDIUM)]
    mgr.append("a", [0, 0])
    assert mgr.pressure_level is PressureLevel.HIGH  # 9 of 10: HIGH starts at ceil(8.5)
    mgr.append("a", [0])
    assert mgr.pressure_level is PressureLevel.CRITICAL
    mgr.free("a")
    assert seen[-1] == (PressureLevel.CRITICAL, PressureLevel.LOW)
    assert len(seen) == 4
    mgr.check_integrity()
