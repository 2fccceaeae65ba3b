"""Hit-rate replay through the real BlockManager, checked against hand-computed answers."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sim_helpers import block_trace

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.hitrate import capacities_for, manager_policies, run_policy
from pagedkv.simulator.oracle import belady, infinite_cache

A, B, C = 1, 2, 3


def hits(paths: list[list[int]], policy: str, cap: int) -> int:
    """Hit blocks (g = bs = 4 tokens per block) over the whole trace (no warm-up)."""
    s = build_block_stream(block_trace(paths), 4)
    r = run_policy(s, policy, cap, warmup_fraction=0.0)
    assert r.hit_tokens % 4 == 0
    return r.hit_tokens // 4


@pytest.mark.parametrize(
    ("order", "cap", "expected"),
    [
        # one block of cache: only immediate repeats hit; Belady bypasses blocks used later
        ("ABACBA", 1, {"lru": 0, "fifo": 0, "lfu": 0, "belady": 2}),
        ("AABBA", 1, {"lru": 2, "fifo": 2, "lfu": 2, "belady": 2}),
        # FIFO is not refreshed by the hit on A, so C pushes A out; LRU/LFU keep A
        ("ABACAB", 2, {"lru": 2, "fifo": 1, "lfu": 2, "belady": 3}),
        # A was hit once: LFU keeps it over B, LRU evicts it (B used more recently)
        ("AABCA", 2, {"lru": 1, "fifo": 1, "lfu": 2, "belady": 2}),
    ],
)
def test_single_block_requests_exact_hits(order: str, cap: int, expected: dict[str, int]) -> None:
    paths = [[{"A": A, "B": B, "C": C}[ch]] for ch in order]
    for policy, want in expected.items():
        assert hits(paths, policy, cap) == want, policy


def test_only_longest_prefix_counts_and_leaf_first() -> None:
    # [A,B] cached; [C,B'] shares no prefix (B under C is another block) -> 0 hits
    assert hits([[A, B], [C, B]], "lru", 8) == 0
    # capacity 2: after [A,B] then [C], a leaf (B) is evicted, never the prefix A
    assert hits([[A, B], [C], [A, B]], "lru", 2) == 1
    assert hits([[A, B], [C], [A, B]], "belady", 2) == 2


def test_large_cache_reaches_the_ceiling_for_every_policy() -> None:
    paths = [[A, B, C], [A, B], [A, C], [A, B, C, 4], [5], [A, B, C]]
    s = build_block_stream(block_trace(paths), 4)
    ceiling = infinite_cache(s, 0.5)
    for policy in [*manager_policies(), "belady"]:
        r = run_policy(s, policy, 64, warmup_fraction=0.5)
        assert r.hit_tokens == ceiling.hit_tokens, policy
        assert r.total_tokens == ceiling.total_tokens
    # hand count: measured requests 3.. -> [A,B,C,4]: 3 hits, [5]: 0, [A,B,C]: 3
    assert ceiling.hit_tokens == 6 * 4
    assert ceiling.total_tokens == 8 * 4


def test_partial_last_block_modes() -> None:
    # a 6-token prompt at bs 4: the 2-token tail is its own (cacheable) block in "cache" mode
    tr = block_trace([[A, B], [A, B]], g=4)
    tr.requests[:] = [type(r)(r.arrival_ms, 6, 1, r.hash_ids) for r in tr.requests]
    s = build_block_stream(tr, 4)
    assert run_policy(s, "lru", 8, 0.0, partial="cache").hit_tokens == 6
    assert run_policy(s, "lru", 8, 0.0, partial="drop").hit_tokens == 4


def test_request_longer_than_cache_is_truncated() -> None:
    r = run_policy(
        build_block_stream(block_trace([[1, 2, 3, 4], [1, 2, 3, 4]]), 4),
        "lru",
        2,
        warmup_fraction=0.0,
    )
    assert r.hit_tokens == 8  # the first 2 blocks stayed cached


def test_bad_arguments_raise_typed_errors() -> None:
    s = build_block_stream(block_trace([[A]]), 4)
    with pytest.raises(InvalidArgumentError, match="unknown policy 'mru'"):
        run_policy(s, "mru", 4)
    with pytest.raises(InvalidArgumentError, match="got 0 blocks"):
        run_policy(s, "lru", 0)
    with pytest.raises(InvalidArgumentError, match=r"\[0, 1\), got 1.0"):
        infinite_cache(s, 1.0)
    assert capacities_for(16, [4], [64, 100]) == [4, 6]
    with pytest.raises(InvalidArgumentError, match="8 tokens holds no block of 16"):
        capacities_for(16, [], [8])


trees = st.lists(st.lists(st.integers(0, 4), min_size=1, max_size=5), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(trees, st.integers(1, 12))
def test_belady_beats_every_policy(paths: list[list[int]], cap: int) -> None:
    s = build_block_stream(block_trace(paths), 4)
    best = belady(s, cap, 0.0).hit_tokens
    for policy in manager_policies():
        assert run_policy(s, policy, cap, warmup_fraction=0.0).hit_tokens <= best, policy
    assert best <= infinite_cache(s, 0.0).hit_tokens
