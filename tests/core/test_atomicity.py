"""Failing operations raise the specific ``PagedKVError`` subclass and change nothing.

``snapshot(mgr)`` deep-captures the whole manager (pool, evictor internals, every sequence, pins,
pending copies, host pool, counters, pressure); each test compares it before and after a call
that must fail. The managers used are "busy": cached and shared blocks, a pending copy-on-write,
a pin, a sliding-window sequence and a swapped sequence, so a partial change has somewhere to hide.
"""

from __future__ import annotations

import re
from array import array
from typing import Any

import numpy as np
import pytest
from core_helpers import assert_oob, busy, exhaust, fails_atomically, snapshot

from pagedkv.core import EVICTION_POLICIES, BlockManager, CacheConfig, SlidingWindow
from pagedkv.core.config import dtype_nbytes
from pagedkv.core.prefix_cache.hashing import chain_hashes, root_hash, token_bytes
from pagedkv.core.seq_state import SeqStatus
from pagedkv.errors import (
    ConfigError,
    DuplicateSequenceError,
    InvalidArgumentError,
    OutOfBlocksError,
    PagedKVError,
    SequenceStateError,
    UnknownSequenceError,
)

POLICIES = sorted(EVICTION_POLICIES)


@pytest.fixture(params=POLICIES)
def mgr(request: pytest.FixtureRequest) -> BlockManager:
    return busy(request.param)


# --------------------------------------------------------------------------- the snapshot itself
def test_snapshot_sees_every_kind_of_change(mgr):
    """The helper must notice the changes it is meant to guard against."""
    base = snapshot(mgr)
    assert snapshot(mgr) == base
    probes = [
        lambda m: m.take_copies(),
        lambda m: m.append("d", [1]),
        lambda m: m.evict_cached(1),
        lambda m: m.pin_prefix([1, 2]),
        lambda m: m.swap_in("s"),
        lambda m: m.fork("d", "d2"),
        lambda m: m.free("d"),
    ]
    for probe in probes:
        m = busy(mgr.config.eviction_policy)
        before = snapshot(m)
        probe(m)
        assert snapshot(m) != before


# --------------------------------------------------------------------------- admit
def test_admit_out_of_blocks(mgr):
    free = mgr.num_free_blocks
    bs = mgr.block_size
    tokens = [500 + i for i in range((free + 1) * bs)]
    err = fails_atomically(mgr, OutOfBlocksError, mgr.admit, "new", tokens)
    assert_oob(err, free + 1, free)
    assert "new" not in mgr
    mgr.admit("new", tokens[: free * bs], compute_last_token=False)  # exactly fits
    assert mgr.num_free_blocks == 0
    mgr.check_integrity()


def test_admit_out_of_blocks_counts_reclaimed_prefix_hits(mgr):
    """A hit on a cached-but-unreferenced block takes it out of the evictable set, so it is not
    available for the new blocks: ``available`` must discount it."""
    bs = mgr.block_size
    prefix = [1, 2, 3, 4, 5, 6, 50, 51]  # b's prompt: 4 full blocks cached, the last unused
    hashes = chain_hashes(
        mgr.prefix_cache.hasher.hash_fn,
        root_hash(mgr.prefix_cache.hasher.hash_fn, None, None),
        token_bytes(array("q", prefix)),
        bs * 8,
        len(prefix) // bs,
    )
    blocks = [mgr.prefix_cache.cached[h] for h in hashes]
    assert mgr.lookup_prefix(prefix) == len(prefix)
    reclaimed = sum(1 for b in blocks if mgr.pool.ref_cnt[b] == 0)
    assert reclaimed == 1
    available = mgr.num_free_blocks - reclaimed
    extra = available + 1  # new blocks wanted beyond the hit
    tokens = prefix + [700 + i for i in range(extra * bs)]
    err = fails_atomically(mgr, OutOfBlocksError, mgr.admit, "new", tokens)
    assert_oob(err, extra, available)
    # one block fewer fits exactly, reusing all four cached blocks
    assert mgr.admit("new", tokens[:-bs]) == len(prefix)
    assert mgr.block_table("new")[:4] == blocks
    assert mgr.num_free_blocks == 0
    mgr.check_integrity()


@pytest.mark.parametrize("policy", POLICIES)
def test_admit_watermark(policy):
    mgr = busy(policy, num_blocks=24, watermark=0.25)  # 23 usable: 5 held back
    wm = int(0.25 * 23)
    free = mgr.num_free_blocks
    need = free - wm + 1
    assert mgr.can_admit(need * mgr.block_size) is False
    assert mgr.can_admit((need - 1) * mgr.block_size) is True
    err = fails_atomically(
        mgr,
        OutOfBlocksError,
        mgr.admit,
        "new",
        [900 + i for i in range(need * mgr.block_size)],
        compute_last_token=False,
    )
    assert_oob(err, need, free - wm)
    # growth of running sequences may use the reserve
    mgr.append("d", [5] * ((free - 1) * mgr.block_size))
    mgr.check_integrity()


def test_admit_watermark_reports_zero_when_reserve_is_dipped():
    mgr = busy(num_blocks=24, watermark=0.5)  # 11 of 23 blocks held back
    mgr.append("d", [5] * ((mgr.num_free_blocks - 3) * mgr.block_size))  # 3 left < reserve
    err = fails_atomically(mgr, OutOfBlocksError, mgr.admit, "new", [1])
    assert_oob(err, 1, 0)


def test_admit_needing_no_blocks_is_not_refused_by_the_watermark():
    """``OutOfBlocksError`` means requested > available. An admission needing no new block (an
    empty prompt, or a prompt wholly served from the cache) dips nothing below the watermark,
    so it must succeed even when growth has already eaten into the reserve."""
    mgr = BlockManager(CacheConfig(block_size=2, num_blocks=10, watermark=0.5))  # 4 held back
    mgr.admit("a", [1, 2, 3, 4, 5])
    mgr.commit(["a"])
    mgr.admit("big", [9, 9, 9, 9])
    mgr.append("big", [9, 9, 9, 9])  # decode growth may use the reserve: 2 free < 4
    assert mgr.num_free_blocks == 2
    assert mgr.admit("empty", []) == 0
    assert mgr.admit("b", [1, 2, 3, 4], compute_last_token=False) == 4  # two cached blocks
    assert mgr.num_free_blocks == 2
    mgr.check_integrity()


def test_admit_duplicate_id(mgr):
    for sid in ["a", "d", "w", "s"]:  # running, windowed and swapped ids are all taken
        err = fails_atomically(mgr, DuplicateSequenceError, mgr.admit, sid, [1, 2, 3])
        assert err.seq_id == sid
        assert repr(sid) in str(err)
    # the duplicate check wins even when the prompt would not fit
    fails_atomically(mgr, DuplicateSequenceError, mgr.admit, "a", list(range(1000)))


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"token_ids": [1, 2], "num_tokens": 2}, "not both"),
        ({"token_ids": [1, 2], "block_hashes": [b"x"]}, "not both"),
        ({}, "got None"),
        ({"num_tokens": -3}, "got -3"),
        ({"num_tokens": 5, "block_hashes": [b"x"]}, "block_hashes has 1 entries; 5 tokens make 2"),
        ({"num_tokens": 4, "block_hashes": [b"x", b"y", b"z"]}, "has 3 entries; 4 tokens make 2"),
        ({"token_ids": [1.5, 2.0]}, "int64"),
        ({"token_ids": [1, 2**70]}, "int64"),
        ({"token_ids": ["a"]}, "int64"),
        ({"token_ids": np.zeros((2, 2), dtype=np.int64)}, "shape (2, 2)"),
        ({"token_ids": np.zeros(3, dtype=np.float32)}, "dtype float32"),
    ],
)
def test_admit_bad_arguments(mgr, kwargs, needle):
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit, "new", **kwargs)
    assert needle in str(err)
    assert "new" not in mgr


def test_admit_batch_failures(mgr):
    free = mgr.num_free_blocks
    bs = mgr.block_size
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit_batch, ["x", "y"], [[1]])
    assert "2 ids but 1 prompts" in str(err)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit_batch, ["x", "x"], [[1], [2]])
    assert "twice" in str(err)
    err = fails_atomically(mgr, DuplicateSequenceError, mgr.admit_batch, ["x", "d"], [[1], [2]])
    assert err.seq_id == "d"
    fails_atomically(mgr, InvalidArgumentError, mgr.admit_batch, ["x", "y"], [[1], [1.5]])
    # all or nothing: the first prompt alone would fit, the pair does not
    first = [600 + i for i in range((free - 1) * bs)]
    second = [800 + i for i in range(2 * bs)]
    err = fails_atomically(mgr, OutOfBlocksError, mgr.admit_batch, ["x", "y"], [first, second])
    assert_oob(err, free + 1, free)
    assert "x" not in mgr
    # a later admit of the batch that fails on its own must not leave earlier ones admitted
    fails_atomically(
        mgr, InvalidArgumentError, mgr.admit_batch, ["x", "y"], [[1], [2]], num_tokens=1
    )


# --------------------------------------------------------------------------- append
def test_append_out_of_blocks_at_boundary(mgr):
    exhaust(mgr, keep=1)
    n = mgr.num_tokens("d")  # 3 tokens, block_size 2: one slot left in the last block
    k = 1 + 2 * mgr.block_size  # needs 2 new blocks
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append, "d", list(range(k)))
    assert_oob(err, 2, 1)
    assert mgr.num_tokens("d") == n
    assert mgr.append("d", [1, 2, 3]).shape == (3,)  # one block is enough for 3 tokens


def test_append_out_of_blocks_for_copy_on_write(mgr):
    """After a fork the partial last block is shared: the first write must copy it."""
    mgr.fork("d", "d2")
    exhaust(mgr, keep=0)
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append, "d", [7])
    assert_oob(err, 1, 0)
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append_batch, ["d2"], [7])
    assert_oob(err, 1, 0)


def test_append_out_of_blocks_into_cached_partial_block(mgr):
    """A block made partial by truncate is cached (immutable): writing needs a copy."""
    mgr.truncate("a", 5)  # a's block 2 (tokens 4,5) is cached: now partial
    exhaust(mgr, keep=0)
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append, "a", [99])
    assert_oob(err, 1, 0)
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append_batch, ["a"], [99])
    assert_oob(err, 1, 0)


def test_append_unknown_swapped_and_bad_tokens(mgr):
    err = fails_atomically(mgr, UnknownSequenceError, mgr.append, "nope", [1])
    assert "'nope'" in str(err)
    err = fails_atomically(mgr, SequenceStateError, mgr.append, "s", [1])
    assert "'s' is swapped" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.append, "d", [1.5])
    fails_atomically(mgr, InvalidArgumentError, mgr.append, "d", np.ones((1, 2), dtype=np.int32))


def test_append_batch_failures(mgr):
    err = fails_atomically(mgr, UnknownSequenceError, mgr.append_batch, ["d", "nope"], [1, 2])
    assert err.seq_id == "nope"
    err = fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, ["d", "a"], [1])
    assert "2 sequences but 1 token ids" in str(err)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, ["d", "a", "d"], [1, 2, 3])
    assert "twice" in str(err)
    # the swapped sequence is last: the running ones before it must not have been appended to
    err = fails_atomically(
        mgr, SequenceStateError, mgr.append_batch, ["d", "a", "w", "s"], np.array([1, 2, 3, 4])
    )
    assert "'s' is swapped" in str(err)


def test_append_batch_out_of_blocks(mgr):
    # d: 3 tokens (1 slot left, private); a: 7 tokens (1 slot left, private after a2's CoW);
    # w: 6 tokens at a boundary; a2: 8 tokens at a boundary -> 2 new blocks
    exhaust(mgr, keep=1)
    ids = ["d", "a", "w", "a2"]
    err = fails_atomically(mgr, OutOfBlocksError, mgr.append_batch, ids, [1, 2, 3, 4])
    assert_oob(err, 2, 1)


# --------------------------------------------------------------------------- fork
def test_fork_failures(mgr):
    err = fails_atomically(mgr, DuplicateSequenceError, mgr.fork, "a", "d")
    assert err.seq_id == "d"
    fails_atomically(mgr, DuplicateSequenceError, mgr.fork, "a", "s")
    fails_atomically(mgr, UnknownSequenceError, mgr.fork, "nope", "x")
    fails_atomically(mgr, SequenceStateError, mgr.fork, "s", "x")
    n = mgr.num_tokens("a")
    for bad in (-1, n + 1, n + 100):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.fork, "a", "x", bad)
        assert f"cannot fork {bad} tokens from a {n}-token sequence" in str(err)


def test_fork_into_a_released_window_block_is_rejected():
    """Like ``truncate``, a fork whose last token lies in a block the sliding window released
    must be rejected: the child could never write that block (its next append's slot would be
    the null block's -1 and the KV silently lost)."""
    mgr = busy()
    mgr.append("w", [76])  # one decode step at a time: each releases what fell behind
    mgr.append("w", [77])  # w: 8 tokens, window 2 + sink 2 -> blocks 1 and 2 released
    assert mgr.block_table("w")[1:3] == [0, 0]
    for n in (3, 4, 5, 6):  # the last token would lie in released block 1 or 2
        err = fails_atomically(mgr, InvalidArgumentError, mgr.fork, "w", "x", n)
        assert "sliding window" in str(err)


# --------------------------------------------------------------------------- truncate
def test_truncate_failures(mgr):
    n = mgr.num_tokens("a")
    for bad in (-1, n + 1):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.truncate, "a", bad)
        assert f"cannot truncate a {n}-token sequence to {bad} tokens" in str(err)
    fails_atomically(mgr, SequenceStateError, mgr.truncate, "s", 1)
    fails_atomically(mgr, UnknownSequenceError, mgr.truncate, "nope", 0)
    mgr.append("w", [76])
    mgr.append("w", [77])  # blocks 1, 2 released
    assert mgr.block_table("w") == [mgr.block_table("w")[0], 0, 0, mgr.block_table("w")[3]]
    for m in (3, 4, 5, 6):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.truncate, "w", m)
        assert f"token {m - 1} lies in a block the sliding window already released" in str(err)


# --------------------------------------------------------------------------- swap / preempt
def test_swap_out_without_host_blocks():
    mgr = busy(num_host_blocks=0)
    live = sum(b != 0 for b in mgr.block_table("a"))
    err = fails_atomically(mgr, OutOfBlocksError, mgr.swap_out, "a")
    assert_oob(err, live, 0, "host blocks")
    err = fails_atomically(mgr, OutOfBlocksError, mgr.preempt, "a", "swap")
    assert_oob(err, live, 0, "host blocks")


def test_swap_out_with_too_few_host_blocks(mgr):
    host_free = mgr.num_free_host_blocks  # 4 host blocks, 2 taken by "s"
    live = sum(b != 0 for b in mgr.block_table("a"))
    assert live > host_free
    err = fails_atomically(mgr, OutOfBlocksError, mgr.swap_out, "a")
    assert_oob(err, live, host_free, "host blocks")
    err = fails_atomically(mgr, OutOfBlocksError, mgr.preempt, "a", mode="swap")
    assert_oob(err, live, host_free, "host blocks")
    # a sequence with exactly as many live blocks as host blocks left fits
    assert sum(b != 0 for b in mgr.block_table("d")) == host_free
    mgr.swap_out("d")
    assert mgr.num_free_host_blocks == 0
    mgr.check_integrity()


def test_swap_failures(mgr):
    fails_atomically(mgr, SequenceStateError, mgr.swap_out, "s")
    fails_atomically(mgr, UnknownSequenceError, mgr.swap_out, "nope")
    err = fails_atomically(mgr, InvalidArgumentError, mgr.swap_in, "a")
    assert "'a' is not swapped out" in str(err)
    fails_atomically(mgr, UnknownSequenceError, mgr.swap_in, "nope")
    err = fails_atomically(mgr, InvalidArgumentError, mgr.preempt, "a", mode="drop")
    assert "'drop'" in str(err)
    fails_atomically(mgr, UnknownSequenceError, mgr.preempt, "nope")
    fails_atomically(mgr, SequenceStateError, mgr.preempt, "s")
    fails_atomically(mgr, SequenceStateError, mgr.preempt, "s", "swap")


def test_swap_in_without_device_blocks(mgr):
    exhaust(mgr, keep=1)
    err = fails_atomically(mgr, OutOfBlocksError, mgr.swap_in, "s")
    assert_oob(err, 2, 1)
    mgr.free("filler")
    mgr.swap_in("s")
    assert mgr.seq("s").status is SeqStatus.RUNNING
    mgr.check_integrity()


def test_select_victims_unknown_policy(mgr):
    err = fails_atomically(mgr, InvalidArgumentError, mgr.select_victims, 3, "biggest")
    assert "'biggest'" in str(err)
    assert "priority" in str(err)


# --------------------------------------------------------------------------- prefix API
def test_unpin_twice(mgr):
    pin = mgr.pin_prefix([1, 2, 3, 4, 5, 6])
    mgr.unpin_prefix(pin)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.unpin_prefix, pin)
    assert f"pin {pin.pin_id} is not held" in str(err)


def test_unpin_after_reset(mgr):
    pin = mgr.pin_prefix([1, 2])
    mgr.reset_prefix_cache()
    fails_atomically(mgr, InvalidArgumentError, mgr.unpin_prefix, pin)


def test_register_prefix_bad_range(mgr):
    n = mgr.num_tokens("a")
    for bad in (-1, n + 1):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.register_prefix, "a", bad)
        assert f"cannot register {bad} tokens of a {n}-token sequence" in str(err)
    fails_atomically(mgr, SequenceStateError, mgr.register_prefix, "s")
    fails_atomically(mgr, UnknownSequenceError, mgr.register_prefix, "nope")


def test_prefix_api_bad_arguments(mgr):
    err = fails_atomically(mgr, InvalidArgumentError, mgr.evict_cached, -2)
    assert "got -2" in str(err)
    for bad in (-0.1, 1.5):
        err = fails_atomically(mgr, InvalidArgumentError, mgr.reclaim_to, bad)
        assert f"got {bad}" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.pin_prefix, [1.5, 2.5])
    fails_atomically(mgr, InvalidArgumentError, mgr.lookup_prefix, np.ones((2, 2), np.int64))


# --------------------------------------------------------------------------- free / queries
def test_free_unknown(mgr):
    fails_atomically(mgr, UnknownSequenceError, mgr.free, "nope")
    fails_atomically(mgr, UnknownSequenceError, mgr.free_batch, ["a", "d", "nope"])
    assert "a" in mgr
    assert "d" in mgr


def test_free_batch_with_a_repeated_id_is_atomic():
    """``free_batch(["d", "d"])`` must either free ``d`` once or raise leaving it in place;
    it must not free ``d`` and then raise."""
    mgr = busy()
    before = snapshot(mgr)
    try:
        mgr.free_batch(["d", "d"])
    except PagedKVError:
        assert snapshot(mgr) == before, "free_batch raised after freeing part of the batch"
    else:
        assert "d" not in mgr
    mgr.check_integrity()


def test_query_failures(mgr):
    n = mgr.num_tokens("a")
    err = fails_atomically(mgr, InvalidArgumentError, mgr.slot_mapping, "a", 2, n + 1)
    assert f"token range [2, {n + 1}) outside sequence of {n} tokens" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.slot_mapping, "a", 3, 2)
    fails_atomically(mgr, SequenceStateError, mgr.slot_mapping, "s")
    fails_atomically(mgr, SequenceStateError, mgr.block_table, "s")
    fails_atomically(mgr, UnknownSequenceError, mgr.num_tokens, "nope")
    err = fails_atomically(mgr, InvalidArgumentError, mgr.block_table_array, ["a", "d"], 2)
    assert re.search(r"\b4\b.*\b2\b", str(err)), str(err)  # 4 blocks do not fit in 2
    err = fails_atomically(mgr, InvalidArgumentError, mgr.packed_slot_mapping, ["a", "d"], [0])
    assert "2 sequences but 1 starts" in str(err)
    fails_atomically(mgr, SequenceStateError, mgr.packed_slot_mapping, ["a", "s"], [0, 0])
    fails_atomically(mgr, InvalidArgumentError, mgr.packed_slot_mapping, ["a", "d"], [0, 9])
    fails_atomically(mgr, SequenceStateError, mgr.flashinfer_page_table, ["a", "s"])
    fails_atomically(mgr, SequenceStateError, mgr.blocks_freed_by, "s")


# --------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"block_size": 0}, "block_size must be > 0, got 0"),
        ({"block_size": -4}, "got -4"),
        ({"num_blocks": 1}, "num_blocks must be > 1"),
        ({"num_blocks": 0}, "got 0"),
        ({"num_host_blocks": -1}, "num_host_blocks must be >= 0, got -1"),
        ({"watermark": 1.0}, "watermark must be in [0, 1), got 1.0"),
        ({"watermark": -0.5}, "got -0.5"),
        ({"min_cache_tokens": -1}, "min_cache_tokens must be >= 0, got -1"),
        ({"max_cached_blocks": -2}, "max_cached_blocks must be >= 0 or None, got -2"),
        ({"hash_algo": "md5"}, "unknown hash_algo 'md5'"),
        ({"eviction_policy": "random"}, "unknown eviction_policy 'random'"),
        ({"cache_visibility": "eager"}, "got 'eager'"),
        ({"cache_visibility": "allocate"}, "'allocate' was removed), got 'allocate'"),
        ({"pressure_thresholds": (0.9, 0.8, 0.95)}, "(0.9, 0.8, 0.95)"),
        ({"pressure_thresholds": (0.0, 0.5, 0.9)}, "3 increasing fractions"),
        ({"pressure_thresholds": (0.5, 0.9)}, "3 increasing fractions"),
        ({"pressure_thresholds": (0.5, 0.9, 1.1)}, "1.1"),
        ({"bytes_per_token": 0}, "bytes_per_token must be > 0, got 0"),
    ],
)
def test_config_validation(kwargs, needle):
    base: dict[str, Any] = {"block_size": 4, "num_blocks": 8}
    with pytest.raises(PagedKVError) as info:
        CacheConfig(**{**base, **kwargs})
    assert type(info.value) is ConfigError
    assert isinstance(info.value, ValueError)
    assert needle in str(info.value)


def test_config_helpers_validation():
    with pytest.raises(ConfigError, match="num_kv_heads must be > 0, got 0"):
        CacheConfig.kv_bytes_per_token(2, 0, 64)
    with pytest.raises(ConfigError, match="unknown dtype 'float13'"):
        dtype_nbytes("float13")
    with pytest.raises(ConfigError, match="block_size must be > 0, got 0"):
        CacheConfig.from_memory_budget(
            1 << 20, block_size=0, num_layers=1, num_kv_heads=1, head_dim=8
        )
    with pytest.raises(ConfigError, match="unknown eviction_policy"):
        CacheConfig.from_memory_budget(
            1 << 20, block_size=4, num_layers=1, num_kv_heads=1, head_dim=8, eviction_policy="nope"
        )


@pytest.mark.parametrize("budget", [0, 1, 1000, 4 * 256 - 1])
def test_from_memory_budget_too_small(budget):
    # 2 (K, V) x 1 layer x 1 head x 64 dims x 2 bytes = 256 bytes/token; 1024 bytes/block
    per_block = 4 * 256
    with pytest.raises(PagedKVError) as info:
        CacheConfig.from_memory_budget(
            budget, block_size=4, num_layers=1, num_kv_heads=1, head_dim=64, dtype="float16"
        )
    assert type(info.value) is ConfigError
    msg = str(info.value)
    assert (
        f"budget of {budget} bytes holds {budget // per_block} blocks of {per_block} bytes" in msg
    )
    ok = CacheConfig.from_memory_budget(
        per_block, block_size=4, num_layers=1, num_kv_heads=1, head_dim=64, dtype="float16"
    )
    assert (ok.num_usable_blocks, ok.num_blocks, ok.bytes_per_token) == (1, 2, 256)


def test_sliding_window_validation():
    for kwargs in ({"window_tokens": 0}, {"window_tokens": 4, "sink_tokens": -1}):
        with pytest.raises(PagedKVError) as info:
            SlidingWindow(**kwargs)
        assert type(info.value) is InvalidArgumentError
        assert str(kwargs["window_tokens"]) in str(info.value)
