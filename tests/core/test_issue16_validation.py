"""Issue 16, section 5, item 2: a ``str`` is not a collection of sequence ids, a malformed
batch raises a typed error, and ``from_memory_budget`` refuses the fields it computes; every
failure changes nothing (``fails_atomically`` compares a deep snapshot of a busy manager)."""

from __future__ import annotations

from typing import Any

import pytest
from core_helpers import busy, fails_atomically

from pagedkv.core import BlockManager, CacheConfig
from pagedkv.errors import ConfigError, InvalidArgumentError


def _busy_s_and_t() -> BlockManager:
    """A busy manager with running sequences "s" and "t" (what "st" iterates as)."""
    mgr = busy(num_host_blocks=0)  # "s" stays running
    mgr.admit("t", [40, 41, 42])
    return mgr


@pytest.mark.parametrize("ids", ["st", b"st"], ids=["str", "bytes"])
def test_a_string_is_not_a_batch_of_ids(ids: Any) -> None:
    mgr = _busy_s_and_t()
    for call, args in ((mgr.commit, (ids,)), (mgr.append_batch, (ids, [5, 6]))):
        err = fails_atomically(mgr, InvalidArgumentError, call, *args)
        assert "expected a list of sequence ids" in str(err)
        assert repr(ids) in str(err)
    mgr.append_batch(["s", "t"], [5, 6])  # the list form works
    mgr.commit(["s", "t"])
    mgr.check_integrity()


def _with_a_list(first: bool) -> Any:
    return (x for x in ([[1], "a"] if first else ["a", [1]]))


@pytest.mark.parametrize("first", [True, False], ids=["list-first", "list-last"])
def test_unhashable_id_in_a_generator_is_named(first: bool) -> None:
    mgr = _busy_s_and_t()
    err = fails_atomically(mgr, InvalidArgumentError, mgr.commit, _with_a_list(first))
    assert "sequence ids must be hashable, got [1] (list)" in str(err)
    err = fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, _with_a_list(first), [5, 6])
    assert "sequence ids must be hashable, got [1] (list)" in str(err)


def test_generators_of_ids_are_read_once() -> None:
    """A generator is materialised before use: ``append_batch`` used to count its ids again
    after consuming it and report a duplicate that was not there."""
    mgr = _busy_s_and_t()
    slots = mgr.append_batch((x for x in ["s", "t"]), [5, 6])
    assert len(slots) == 2
    assert (mgr.num_tokens("s"), mgr.num_tokens("t")) == (4, 4)
    mgr.commit(x for x in ["s", "t"])
    assert mgr.seq("s").num_computed == 4
    fails_atomically(mgr, InvalidArgumentError, mgr.append_batch, iter(["s", "s"]), [1, 2])
    mgr.check_integrity()


_DIMS = {"block_size": 2, "num_layers": 1, "num_kv_heads": 1, "head_dim": 4}


@pytest.mark.parametrize("name", ["num_blocks", "bytes_per_token"])
def test_from_memory_budget_refuses_the_fields_it_computes(name: str) -> None:
    with pytest.raises(ConfigError, match=rf"computes {name} from the budget; got {name}=5"):
        CacheConfig.from_memory_budget(10**4, **_DIMS, **{name: 5})


def test_from_memory_budget_refuses_unknown_fields_by_name() -> None:
    with pytest.raises(ConfigError, match=r"unknown arguments \['num_block'\].*'watermark'"):
        CacheConfig.from_memory_budget(10**4, **_DIMS, num_block=5)
    cfg = CacheConfig.from_memory_budget(10**4, **_DIMS, watermark=0.1, eviction_policy="fifo")
    assert (cfg.watermark, cfg.eviction_policy, cfg.bytes_per_token) == (0.1, "fifo", 16)
