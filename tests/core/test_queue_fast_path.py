"""The pool's queue fast path (LRU exposes its OrderedDict as ``EvictionPolicy.queue``) must
behave exactly like the generic policy protocol (``insert_many``/``remove``/``pop_leaves``).

Differential test: the same random operations drive two LRU managers, one with ``queue`` set to
None so the pool falls back to the per-call protocol; after every step both must be in the same
state (block tables, ref counts, hashes, cache forest, free stack order, eviction order,
counters) and raise the same errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_atomicity import snapshot

from pagedkv.core import BlockManager, CacheConfig, SlidingWindow
from pagedkv.core.eviction import LRUPolicy
from pagedkv.errors import PagedKVError

PREFIXES = ((1, 2, 3, 4, 5, 6), (7, 8, 9, 10), (1, 2, 3, 4, 9, 9), ())
# admissions and frees weighted up: they fill the cache and force evictions
KINDS = ("admit",) * 4 + ("free",) * 3 + ("append", "decode", "decode", "fork", "truncate",
                                          "evict", "pin", "unpin", "reset", "register",
                                          "admit_keys", "admit_batch", "commit", "commit")
OPS = st.tuples(st.sampled_from(KINDS), st.integers(0, 9), st.integers(0, 12),
                st.lists(st.integers(0, 2), max_size=7), st.booleans())


def generic(mgr: BlockManager) -> BlockManager:
    """Force ``mgr``'s pool onto the per-call policy protocol."""
    assert isinstance(mgr.pool.evictor, LRUPolicy)
    assert mgr.pool.evictor.queue is not None
    mgr.pool.evictor.queue = None
    return mgr


def apply(mgr: BlockManager, op: tuple[Any, ...], pins: list[Any], next_id: list[int]) -> None:
    ids = mgr.seq_ids
    kind, a, b, tokens, flag = op
    if kind == "admit":
        # a window releases a prefix block while its cached children are still in use: the
        # case where the front of the LRU queue is not a leaf
        window = SlidingWindow(3) if flag else None
        mgr.admit(next_id[0], list(PREFIXES[a % len(PREFIXES)]) + tokens, sliding_window=window)
        if b % 8:  # the prefill ran: its KV is written (else freed or aborted before that)
            mgr.commit([next_id[0]])
        next_id[0] += 1
    elif kind == "append" and ids and tokens:
        mgr.append(ids[a % len(ids)], tokens)
        if flag:
            mgr.commit([ids[a % len(ids)]])
    elif kind == "decode" and ids:
        mgr.append_batch(ids, [b % 3] * len(ids))
        mgr.commit(ids)
    elif kind == "free" and ids:
        mgr.free(ids[a % len(ids)])
    elif kind == "fork" and ids:
        parent = ids[a % len(ids)]
        mgr.fork(parent, next_id[0], min(b, mgr.num_tokens(parent)))
        next_id[0] += 1
    elif kind == "truncate" and ids:
        sid = ids[a % len(ids)]
        mgr.truncate(sid, min(b, mgr.num_tokens(sid)))
    elif kind == "evict":
        mgr.evict_cached(a % 4)
    elif kind == "pin":
        pins.append(mgr.pin_prefix(list(PREFIXES[a % len(PREFIXES)]) + tokens))
    elif kind == "unpin" and pins:
        mgr.unpin_prefix(pins.pop())
    elif kind == "reset" and flag:
        mgr.reset_prefix_cache()
    elif kind == "commit" and ids:  # the step wrote every token of some sequences
        mgr.commit(ids[a % len(ids):])
    elif kind == "register" and ids:  # chunked prefill: KV of the first b tokens is written
        sid = ids[a % len(ids)]
        mgr.register_prefix(sid, min(b, mgr.num_tokens(sid)))
    elif kind == "admit_keys":  # caller-made block keys (the simulator's path)
        keys = [("k", a % 3, i) for i in range(len(tokens) // 2)]
        mgr.admit(next_id[0], num_tokens=len(tokens), block_hashes=keys,
                  compute_last_token=flag)
        mgr.commit([next_id[0]])
        next_id[0] += 1
    elif kind == "admit_batch":
        prompts = [list(PREFIXES[(a + i) % len(PREFIXES)]) + tokens for i in range(2)]
        mgr.admit_batch([next_id[0], next_id[0] + 1], prompts)
        mgr.commit([next_id[0], next_id[0] + 1])
        next_id[0] += 2


Apply = Callable[[BlockManager, tuple[Any, ...], list[Any], list[int]], None]


def run_lockstep(fast: BlockManager, slow: BlockManager, ops: list[tuple[Any, ...]],
                 compare: Callable[[BlockManager], Any], apply_op: Apply = apply) -> None:
    """Apply each op to both managers: they must raise the same errors, pass their integrity
    checks, and agree on ``compare(manager)`` after every step."""
    state: dict[int, tuple[list[Any], list[int]]] = {id(fast): ([], [0]), id(slow): ([], [0])}
    for op in ops:
        errors = []
        for mgr in (fast, slow):
            try:
                apply_op(mgr, op, *state[id(mgr)])
                errors.append(None)
            except PagedKVError as exc:
                errors.append(type(exc))
            mgr.take_copies()
            mgr.check_integrity()
        assert errors[0] == errors[1], op
        assert compare(fast) == compare(slow), op


def comparable(mgr: BlockManager) -> dict[str, Any]:
    state = snapshot(mgr)
    del state["evictor_state"]  # holds the queue attribute that differs by construction
    return state


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=20, max_size=60), num_blocks=st.integers(4, 12),
       cap=st.sampled_from([None, None, 0, 1, 3]))
def test_queue_fast_path_matches_the_generic_protocol(ops: list[tuple[Any, ...]],
                                                      num_blocks: int, cap: int | None) -> None:
    cfg = CacheConfig(block_size=2, num_blocks=num_blocks, eviction_policy="lru",
                      max_cached_blocks=cap)
    run_lockstep(BlockManager(cfg), generic(BlockManager(cfg)), ops, comparable)
