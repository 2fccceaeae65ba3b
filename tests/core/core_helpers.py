"""Helpers shared by the core tests: whole-manager snapshots, atomicity checks, a "busy" manager
with every kind of state, and the random-operation driver of the differential tests."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st

from pagedkv.core import BlockManager, CacheConfig, SlidingWindow
from pagedkv.core.prefix_cache.eviction import LRUPolicy
from pagedkv.errors import OutOfBlocksError, PagedKVError


# --------------------------------------------------------------------------- snapshots
def snapshot(mgr: BlockManager) -> dict[str, Any]:
    """Everything observable about a manager, deep-copied: ``BlockManager.snapshot()`` (every
    role's state) plus the eviction policy's internals and the public counts."""
    state = mgr.snapshot()
    state["policy_state"] = {k: copy.deepcopy(v) for k, v in vars(mgr.prefix_cache.evictor).items()}
    state["pressure_bounds"] = (mgr.pressure.low_bound, mgr.pressure.high_bound)
    state["num_free_blocks"] = mgr.num_free_blocks
    state["num_used_blocks"] = mgr.num_used_blocks
    state["stats"] = mgr.stats().as_dict()
    return state


def fails_atomically(
    mgr: BlockManager, exc_type: type[PagedKVError], fn: Any, *args: Any, **kwargs: Any
) -> PagedKVError:
    """Call ``fn``; it must raise exactly ``exc_type`` and leave ``mgr`` untouched."""
    mgr.check_integrity()
    before = snapshot(mgr)
    with pytest.raises(PagedKVError) as info:
        fn(*args, **kwargs)
    assert type(info.value) is exc_type, f"expected {exc_type.__name__}, got {info.value!r}"
    after = snapshot(mgr)
    diff = {k for k in before if before[k] != after[k]}
    assert not diff, f"state changed in {sorted(diff)}"
    mgr.check_integrity()
    return info.value


def assert_oob(err: PagedKVError, requested: int, available: int, what: str = "blocks") -> None:
    assert isinstance(err, OutOfBlocksError)
    assert (err.requested, err.available) == (requested, available)
    assert f"out of {what}" in str(err)
    assert f"requested {requested}" in str(err)
    assert f"available {available}" in str(err)


# --------------------------------------------------------------------------- busy managers
def busy(
    policy: str = "lru",
    *,
    block_size: int = 2,
    num_blocks: int = 24,
    num_host_blocks: int = 4,
    **kw: Any,
) -> BlockManager:
    """A manager with cached, shared, pinned, windowed, swapped state, a pending CoW copy and
    uncommitted sequences."""
    mgr = BlockManager(
        CacheConfig(
            block_size=block_size,
            num_blocks=num_blocks,
            eviction_policy=policy,
            num_host_blocks=num_host_blocks,
            **kw,
        )
    )
    mgr.admit("a", [1, 2, 3, 4, 5, 6, 7])  # 3 full blocks + a partial one
    mgr.register_prefix("a")
    assert mgr.admit("b", [1, 2, 3, 4, 5, 6, 50, 51]) == 6  # shares a's 3 full blocks
    mgr.register_prefix("b")
    mgr.admit("c", [1, 2, 3, 4, 60, 61, 62, 63, 64])
    mgr.register_prefix("c")
    mgr.fork("a", "a2")
    mgr.append("a2", [9])  # copy-on-write of the shared partial block: left pending
    mgr.free("b")  # b's private full block becomes cached-but-unreferenced
    mgr.free("c")
    mgr.pin_prefix([1, 2, 3, 4])
    mgr.admit("w", [70, 71, 72, 73, 74, 75], sliding_window=SlidingWindow(2, sink_tokens=2))
    mgr.admit("s", [80, 81, 82])
    if num_host_blocks >= 2:
        mgr.swap_out("s")
    mgr.admit("d", [90, 91, 92])
    assert mgr.num_pending_copies, "the fixture should leave a copy pending"
    assert mgr.stats().blocks_cached > 0, "the fixture should leave cached blocks"
    mgr.check_integrity()
    return mgr


def exhaust(mgr: BlockManager, keep: int = 0) -> None:
    """Fill the pool with a private sequence until only ``keep`` blocks remain obtainable."""
    n = (mgr.num_free_blocks - keep) * mgr.block_size
    if n > 0:
        mgr.admit("filler", [1000 + i for i in range(n)], compute_last_token=False)
    assert mgr.num_free_blocks == keep


def identities(tokens: list[int], salt: str | None) -> list[int]:
    """Identity of the KV at each position: depends on the salt and the whole prefix."""
    out = []
    h = hash(("root", salt))
    for t in tokens:
        h = hash((h, t))
        out.append(h)
    return out


# --------------------------------------------------------------------------- random operations
PREFIXES = ((1, 2, 3, 4, 5, 6), (7, 8, 9, 10), (1, 2, 3, 4, 9, 9), ())
# admissions and frees weighted up: they fill the cache and force evictions
KINDS = (
    ("admit",) * 4
    + ("free",) * 3
    + (
        "append",
        "decode",
        "decode",
        "fork",
        "truncate",
        "evict",
        "pin",
        "unpin",
        "reset",
        "register",
        "admit_keys",
        "admit_batch",
        "commit",
        "commit",
    )
)
OPS = st.tuples(
    st.sampled_from(KINDS),
    st.integers(0, 9),
    st.integers(0, 12),
    st.lists(st.integers(0, 2), max_size=7),
    st.booleans(),
)


def generic(mgr: BlockManager) -> BlockManager:
    """Force ``mgr``'s pool onto the per-call policy protocol."""
    assert isinstance(mgr.prefix_cache.evictor, LRUPolicy)
    assert mgr.prefix_cache.evictor.queue is not None
    mgr.prefix_cache.evictor.queue = None
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
        mgr.commit(ids[a % len(ids) :])
    elif kind == "register" and ids:  # chunked prefill: KV of the first b tokens is written
        sid = ids[a % len(ids)]
        mgr.register_prefix(sid, min(b, mgr.num_tokens(sid)))
    elif kind == "admit_keys":  # caller-made block keys (the simulator's path)
        keys = [("k", a % 3, i) for i in range(len(tokens) // 2)]
        mgr.admit(next_id[0], num_tokens=len(tokens), block_hashes=keys, compute_last_token=flag)
        mgr.commit([next_id[0]])
        next_id[0] += 1
    elif kind == "admit_batch":
        prompts = [list(PREFIXES[(a + i) % len(PREFIXES)]) + tokens for i in range(2)]
        mgr.admit_batch([next_id[0], next_id[0] + 1], prompts)
        mgr.commit([next_id[0], next_id[0] + 1])
        next_id[0] += 2


Apply = Callable[[BlockManager, tuple[Any, ...], list[Any], list[int]], None]


def run_lockstep(
    fast: BlockManager,
    slow: BlockManager,
    ops: list[tuple[Any, ...]],
    compare: Callable[[BlockManager], Any],
    apply_op: Apply = apply,
) -> None:
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
