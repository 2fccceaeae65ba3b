"""The pool's queue fast path (LRU exposes its OrderedDict as ``EvictionPolicy.queue``) must
behave exactly like the generic policy protocol (``insert_many``/``remove``/``pop_leaves``).

Differential test: the same random operations drive two LRU managers, one with ``queue`` set to
None so the pool falls back to the per-call protocol; after every step both must be in the same
state (block tables, ref counts, hashes, cache forest, free stack order, eviction order,
counters) and raise the same errors.
"""

from __future__ import annotations

from typing import Any

from core_helpers import OPS, generic, run_lockstep, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pagedkv.core import BlockManager, CacheConfig


def comparable(mgr: BlockManager) -> dict[str, Any]:
    state = snapshot(mgr)
    del state["policy_state"]  # holds the queue attribute that differs by construction
    return state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=20, max_size=60),
    num_blocks=st.integers(4, 12),
    cap=st.sampled_from([None, None, 0, 1, 3]),
)
def test_queue_fast_path_matches_the_generic_protocol(
    ops: list[tuple[Any, ...]], num_blocks: int, cap: int | None
) -> None:
    cfg = CacheConfig(
        block_size=2, num_blocks=num_blocks, eviction_policy="lru", max_cached_blocks=cap
    )
    run_lockstep(BlockManager(cfg), generic(BlockManager(cfg)), ops, comparable)
