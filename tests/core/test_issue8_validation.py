"""Issue 8, items 5-7 and "one validation layer at the public boundary": malformed arguments
raise ``InvalidArgumentError`` (or ``ConfigError``) naming what was expected and what came,
and change nothing (``fails_atomically`` compares a deep snapshot of a busy manager)."""

from __future__ import annotations

from array import array
from typing import Any

import numpy as np
import pytest
from core_helpers import busy, fails_atomically

from pagedkv.core import CacheConfig, SlidingWindow
from pagedkv.core.tokens import MAX_TOKEN_ID
from pagedkv.errors import ConfigError, InvalidArgumentError

BAD_TOKENS = [
    pytest.param(b"abc", id="bytes"),
    pytest.param("abc", id="str"),
    pytest.param({1: 2, 3: 4}, id="dict"),
    pytest.param({1, 2}, id="set"),
    pytest.param([1.5], id="float"),
    pytest.param(1.0, id="float-scalar"),
    pytest.param([True], id="bool"),
    pytest.param(True, id="bool-scalar"),
    pytest.param([None], id="None-in-list"),
    pytest.param(["7"], id="str-in-list"),
    pytest.param([-1], id="negative"),
    pytest.param([2**31], id="past-int32"),
    pytest.param([2**64], id="past-int64"),
    pytest.param(np.array([2**64 - 1], dtype=np.uint64), id="uint64-wraparound"),
    pytest.param(np.array([-5], dtype=np.int32), id="negative-int32-array"),
    pytest.param(np.array([2**31], dtype=np.int64), id="past-int32-array"),
    pytest.param(np.array([1.0]), id="float-array"),
    pytest.param(np.array([True]), id="bool-array"),
    pytest.param(array("d", [1.0]), id="float-array.array"),
]


@pytest.mark.parametrize("bad", BAD_TOKENS)
def test_bad_token_ids_are_refused_everywhere(bad: Any) -> None:
    mgr = busy()
    for call, args in (
        (mgr.admit, ("new", bad)),
        (mgr.append, ("d", bad)),
        (mgr.lookup_prefix, (bad,)),
        (mgr.pin_prefix, (bad,)),
    ):
        err = fails_atomically(mgr, InvalidArgumentError, call, *args)
        assert "token ids must be ints in [0, 2147483647]" in str(err)
        assert "got" in str(err)
    if not isinstance(bad, (list, np.ndarray, array)):
        return
    batch = bad if len(bad) == 1 else bad[:1]
    fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, ["d"], batch)
    fails_atomically(mgr, InvalidArgumentError, mgr.admit_batch, ["x", "y"], [[1], bad])


@pytest.mark.parametrize("bad", [[1.5], ["7"], [2**64], [None], np.array([1.5]), [-3]])
def test_issue_repro_append_batch_changes_nothing_on_bad_tokens(bad: Any) -> None:
    mgr = busy()
    fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, ["d"], bad)


def test_largest_token_id_and_other_int_containers_are_accepted() -> None:
    mgr = busy()
    mgr.admit("x", (1, MAX_TOKEN_ID))
    mgr.admit("y", range(3))
    mgr.admit("z", array("i", [4, 5]))
    mgr.admit("u", np.array([7, 8], dtype=np.uint16))
    mgr.append("x", np.int64(3))
    mgr.append_batch(["y", "z"], [np.int32(1), 2])
    assert mgr.num_tokens("x") == 3
    mgr.check_integrity()


@pytest.mark.parametrize("bad", [["list"], {"a": 1}, {1}])
def test_unhashable_sequence_ids_are_refused(bad: Any) -> None:
    mgr = busy()
    for call, args in (
        (mgr.admit, (bad, [1])),
        (mgr.fork, ("d", bad)),
        (mgr.free, (bad,)),
        (mgr.append, (bad, [1])),
        (mgr.append_batch, (["d", bad], [1, 2])),
        (mgr.commit, ([bad],)),
        (mgr.truncate, (bad, 0)),
        (mgr.admit_batch, ([bad], [[1]])),
        (mgr.free_batch, ([bad],)),
        (mgr.swap_out, (bad,)),
        (mgr.num_tokens, (bad,)),
    ):
        err = fails_atomically(mgr, InvalidArgumentError, call, *args)
        assert "sequence ids must be hashable" in str(err)


@pytest.mark.parametrize("bad", [2.5, 0.0, "3", True, None, float("nan")])
def test_counts_must_be_ints(bad: Any) -> None:
    mgr = busy()
    if bad is not None:
        fails_atomically(mgr, InvalidArgumentError, mgr.admit, "new", num_tokens=bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.truncate, "d", bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.fork, "d", "new", bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.register_prefix, "d", bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.slot_mapping, "d", bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.block_table_array, ["d"], bad)
        fails_atomically(mgr, InvalidArgumentError, mgr.can_admit, bad)
    for call in (mgr.evict_cached, mgr.select_victims):
        err = fails_atomically(mgr, InvalidArgumentError, call, bad)
        assert "must be an int" in str(err)


def test_issue_repro_fork_and_admit_with_float_counts_keep_the_clock() -> None:
    mgr = busy()
    fails_atomically(mgr, InvalidArgumentError, mgr.fork, "a", "b", 0.0)
    fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", num_tokens=2.5)
    err = fails_atomically(
        mgr, InvalidArgumentError, mgr.admit, "x", num_tokens=4, block_hashes=[[1], [2]]
    )
    assert "hashable" in str(err)
    fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", num_tokens=4, block_hashes="ab")


@pytest.mark.parametrize("bad", ["0.5", float("nan"), True, None, 1.5, -0.1])
def test_reclaim_to_takes_a_fraction(bad: Any) -> None:
    fails_atomically(mgr := busy(), InvalidArgumentError, mgr.reclaim_to, bad)


def test_evict_cached_nan_is_refused_not_returned() -> None:
    mgr = busy()
    err = fails_atomically(mgr, InvalidArgumentError, mgr.evict_cached, float("nan"))
    assert "got nan" in str(err)


def test_issue_repro_sliding_window_must_be_a_sliding_window() -> None:
    mgr = busy()
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", [1, 2, 3], sliding_window=4)
    assert "sliding_window must be SlidingWindow | None, got 4 (int)" in str(err)
    fails_atomically(
        mgr, InvalidArgumentError, mgr.admit_batch, ["x", "y"], [[1], [2]], sliding_window=4
    )
    for args in ((2.5,), (4, 1.5), (True,)):
        with pytest.raises(InvalidArgumentError, match="must be ints"):
            SlidingWindow(*args)


def test_keys_priority_and_pins_are_typed() -> None:
    mgr = busy()
    err = fails_atomically(mgr, InvalidArgumentError, mgr.admit, "x", [1], priority="high")
    assert "priority must be an int, got 'high' (str)" in str(err)
    for call in (mgr.admit, mgr.lookup_prefix, mgr.pin_prefix):
        args = ("x", [1]) if call == mgr.admit else ([1],)
        err = fails_atomically(mgr, InvalidArgumentError, call, *args, cache_salt={"a"})
        assert "cache_salt must be str | bytes | None" in str(err)
        fails_atomically(mgr, InvalidArgumentError, call, *args, lora_id=[1])
    mgr.admit("x", [1, 2], cache_salt=b"tenant", lora_id=3)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.unpin_prefix, None)
    assert "pin must be PrefixPin, got None" in str(err)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"block_size": 4.0}, "block_size must be an int, got 4.0 (float)"),
        ({"num_blocks": 8.5}, "num_blocks must be an int"),
        ({"num_host_blocks": 2.0}, "num_host_blocks must be an int"),
        ({"num_blocks": True}, "num_blocks must be an int"),
        ({"min_cache_tokens": "4"}, "min_cache_tokens must be an int"),
        ({"max_cached_blocks": 1.5}, "max_cached_blocks must be an int or None"),
        ({"watermark": "0.1"}, "watermark must be a number"),
        ({"watermark": float("nan")}, "watermark must be a number"),
        ({"hash_algo": ["sha256"]}, "hash_algo must be a str"),
        ({"enable_prefix_caching": 1}, "enable_prefix_caching must be a bool"),
        ({"pressure_thresholds": ("a", 0.5, 0.9)}, "pressure_thresholds must be 3"),
    ],
)
def test_config_types(kwargs: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        CacheConfig(**{"block_size": 4, "num_blocks": 8, **kwargs})
