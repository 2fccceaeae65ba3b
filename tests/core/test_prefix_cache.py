"""Chained hashing, tenant isolation, visibility modes and the explicit prefix API."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pagedkv import InvalidArgumentError
from pagedkv.core import HASH_FUNCTIONS


@pytest.mark.parametrize("algo", sorted(HASH_FUNCTIONS))
def test_every_hash_function_shares_prefixes(make_mgr, algo):
    mgr = make_mgr(hash_algo=algo)
    mgr.admit("a", list(range(9)))
    mgr.commit(["a"])
    assert mgr.admit("b", list(range(9))) == 8
    mgr.check_integrity()


def test_cache_salt_and_lora_isolate_tenants(make_mgr):
    mgr = make_mgr(num_blocks=20)
    prompt = list(range(9))
    mgr.admit("a", prompt, cache_salt="tenant-1")
    mgr.commit(["a"])
    assert mgr.admit("b", prompt, cache_salt="tenant-2") == 0
    mgr.commit(["b"])
    assert mgr.admit("c", prompt) == 0
    assert mgr.admit("d", prompt, cache_salt="tenant-1", lora_id=3) == 0
    assert mgr.admit("e", prompt, cache_salt="tenant-1") == 8
    assert mgr.lookup_prefix(prompt, cache_salt="tenant-2") == 8
    mgr.check_integrity()


def test_chained_hash_depends_on_the_whole_prefix(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", [1, 2, 3, 4, 5, 6, 7, 8, 0])
    mgr.commit(["a"])
    assert mgr.admit("b", [9, 9, 9, 9, 5, 6, 7, 8, 0]) == 0  # same 2nd block, other parent
    mgr.check_integrity()


def test_block_hashes_are_deterministic_across_processes():
    code = (
        "from pagedkv.core import BlockManager, CacheConfig;"
        "m = BlockManager(CacheConfig(block_size=4, num_blocks=8));"
        "m.admit(0, list(range(12)), cache_salt='s');"
        "print([h.hex() for h in m.seq(0).block_hashes])"
    )
    # Keep the environment (PYTHONPATH included: the test must pass from an uninstalled
    # checkout too); vary only the hash seed.
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert len(outs.pop()) > 100


def test_commit_visibility_defers_sharing(make_mgr):
    mgr = make_mgr(cache_visibility="commit")
    mgr.admit("a", list(range(9)))
    assert mgr.lookup_prefix(list(range(9))) == 0
    assert mgr.register_prefix("a", 4) == 4
    assert mgr.admit("b", list(range(9))) == 4
    assert mgr.register_prefix("a") == 8
    assert mgr.lookup_prefix(list(range(9))) == 8
    mgr.check_integrity()


def test_min_cache_tokens_skips_short_prompts(make_mgr):
    mgr = make_mgr(min_cache_tokens=8)
    mgr.admit("short", list(range(5)))
    mgr.admit("long", [7] * 9)
    mgr.commit(["short", "long"])
    assert mgr.lookup_prefix(list(range(5))) == 0
    assert mgr.lookup_prefix([7] * 9) == 8
    assert mgr.register_prefix("short") == 4  # explicit registration overrides the minimum
    assert mgr.lookup_prefix(list(range(5))) == 4
    mgr.check_integrity()


def test_pinned_prefix_survives_eviction_pressure(make_mgr):
    mgr = make_mgr(block_size=2, num_blocks=6)
    mgr.admit("sys", [1, 2, 3, 4])
    mgr.commit(["sys"])
    mgr.free("sys")
    pin = mgr.pin_prefix([1, 2, 3, 4, 5])
    assert (pin.num_tokens, pin.block_ids) == (4, (1, 2))
    assert mgr.num_free_blocks == 3
    mgr.admit("x", [9] * 6)  # takes every other block; the pinned ones are untouchable
    assert mgr.lookup_prefix([1, 2, 3, 4]) == 4
    mgr.free("x")
    mgr.unpin_prefix(pin)
    with pytest.raises(InvalidArgumentError, match="not held"):
        mgr.unpin_prefix(pin)
    assert mgr.num_free_blocks == 5
    mgr.check_integrity()


def test_reset_prefix_cache_keeps_running_sequences(make_mgr):
    mgr = make_mgr()
    mgr.admit("a", list(range(9)))
    mgr.admit("old", [5] * 8)
    mgr.commit(["a", "old"])
    mgr.free("old")
    pin = mgr.pin_prefix(list(range(8)))
    mgr.reset_prefix_cache()
    assert mgr.prefix_cache.cached == {}
    assert mgr.block_table("a") == [1, 2, 3]
    assert mgr.num_free_blocks == 9 - 3
    assert mgr.admit("b", list(range(9))) == 0
    with pytest.raises(InvalidArgumentError):
        mgr.unpin_prefix(pin)
    mgr.check_integrity()


def test_stats_count_queries_and_hits(make_mgr):
    mgr = make_mgr(num_blocks=20)
    mgr.admit("a", list(range(9)))
    mgr.commit(["a"])
    mgr.admit("b", list(range(9)))
    mgr.admit("c", [3] * 9)
    st = mgr.stats()
    assert (st.prefix_queries, st.prefix_query_tokens, st.prefix_hit_tokens) == (3, 27, 8)
    assert st.prefix_hit_requests == 1
    assert st.hit_rate == pytest.approx(8 / 27)
    assert st.request_hit_rate == pytest.approx(1 / 3)
