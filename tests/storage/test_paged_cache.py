"""PagedKVCache: manager + storage kept in step (append, get, materialize, fork/CoW, swap)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pagedkv.core import CacheConfig, SlidingWindow
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError, ShapeError
from pagedkv.storage import PagedKVCache

L, H, D = 2, 2, 4


def _kv(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(L, n, H, D, generator=g), torch.randn(L, n, H, D, generator=g)


def _cache(**kw):
    return PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, block_size=4, num_blocks=16, **kw)


def test_append_tokens_and_tensors_then_read_back():
    c = _cache()
    k, v = _kv(11)
    c.append("a", k[:, :6], v[:, :6])
    for i in range(6, 11):
        c.append("a", k[:, i], v[:, i])  # one token [L, H, D]
    assert c.num_tokens("a") == 11
    mk, mv = c.materialize("a")
    assert torch.equal(mk, k)
    assert torch.equal(mv, v)
    gk, gv = c.get("a", 7)
    assert torch.equal(gk, k[:, 7])
    assert torch.equal(gv, v[:, 7])
    gk, _ = c.get("a", -1)
    assert torch.equal(gk, k[:, 10])
    rk, rv = c.read_kv("a", 1, 3, 9)
    assert torch.equal(rk, k[1, 3:9])
    assert torch.equal(rv, v[1, 3:9])
    c.check_integrity()


def test_write_kv_overwrites_one_layer():
    c = _cache()
    k, v = _kv(5)
    c.append("a", k, v)
    nk, nv = torch.ones(2, H, D), torch.zeros(2, H, D)
    c.write_kv("a", 0, 2, nk, nv)
    rk, rv = c.read_kv("a", 0)
    assert torch.equal(rk[2:4], nk)
    assert torch.equal(rv[2:4], nv)
    assert torch.equal(rk[:2], k[0, :2])
    assert torch.equal(c.read_kv("a", 1)[0], k[1])


def test_fork_copy_on_write_keeps_parent_intact():
    c = _cache()
    k, v = _kv(6)
    c.append("p", k, v)
    c.fork("p", "c")
    with pytest.raises(InvalidArgumentError, match="shared or cached"):
        c.write_kv("c", 0, 5, torch.zeros(1, H, D), torch.zeros(1, H, D))
    kc, vc = _kv(1, seed=1)
    kp, vp = _kv(1, seed=2)
    c.append("c", kc[:, 0], vc[:, 0])
    c.append("p", kp[:, 0], vp[:, 0])
    pk, _ = c.materialize("p")
    ck, _ = c.materialize("c")
    assert torch.equal(pk[:, :6], k)
    assert torch.equal(ck[:, :6], k)
    assert torch.equal(pk[:, 6], kp[:, 0])
    assert torch.equal(ck[:, 6], kc[:, 0])
    c.check_integrity()


def test_prefix_cache_hit_reuses_blocks():
    cfg = CacheConfig(block_size=4, num_blocks=16, enable_prefix_caching=True)
    c = PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, config=cfg)
    k, v = _kv(9)
    ids = list(range(9))
    c.append("a", k, v, token_ids=ids)
    k2, v2 = _kv(9, seed=5)  # different values: the hit blocks must not be overwritten
    c.append("b", k2, v2, token_ids=ids)
    bk, _ = c.materialize("b")
    assert torch.equal(bk[:, :8], k[:, :8])
    assert torch.equal(bk[:, 8], k2[:, 8])
    assert c.manager.block_table("a")[:2] == c.manager.block_table("b")[:2]
    with pytest.raises(InvalidArgumentError, match="token_ids"):
        c.append("a", k[:, 0], v[:, 0])
    c.check_integrity()


def test_errors_change_nothing():
    c = _cache()
    k, v = _kv(3)
    c.append("a", k, v)
    before = c.storage.kv_cache.clone()
    with pytest.raises(ShapeError, match=r"expected shape \[2, 1, 2, 4\], got \[2, 1, 2, 5\]"):
        c.append("a", torch.zeros(L, H, 5), torch.zeros(L, H, 5))
    with pytest.raises(ShapeError, match="dtype"):
        c.append("a", k.half(), v.half())
    with pytest.raises(OutOfBlocksError):
        c.append("big", *_kv(100))
    with pytest.raises(InvalidArgumentError, match="position"):
        c.get("a", 3)
    assert "big" not in c.manager
    assert c.num_tokens("a") == 3
    assert torch.equal(c.storage.kv_cache, before)
    c.clear("a")
    assert "a" not in c.manager
    c.check_integrity()


def test_swap_roundtrip():
    cfg = CacheConfig(block_size=4, num_blocks=16, enable_prefix_caching=False, num_host_blocks=8)
    c = PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, config=cfg)
    k, v = _kv(7)
    c.append("a", k, v)
    c.swap_out("a")
    c.append("b", *_kv(12, seed=3))  # may reuse a's old device blocks
    c.swap_in("a")
    mk, mv = c.materialize("a")
    assert torch.equal(mk, k)
    assert torch.equal(mv, v)
    c.check_integrity()


def test_sliding_window_released_positions_raise_typed_error():
    # window 3, 1 sink token, block_size 2: appending one token at a time releases the blocks
    # wholly behind the window, keeping the sink block [0, 2).
    c = PagedKVCache(
        num_layers=L,
        num_kv_heads=H,
        head_dim=D,
        block_size=2,
        num_blocks=16,
        sliding_window=SlidingWindow(3, sink_tokens=1),
    )
    k, v = _kv(12)
    c.append("a", k[:, :4], v[:, :4])
    for i in range(4, 12):
        c.append("a", k[:, i], v[:, i])
        c.check_integrity()
    table = c.manager.block_table("a")
    assert table[0] != 0
    assert table[1:4] == [0, 0, 0]
    assert 0 not in table[4:]
    before = c.storage.kv_cache.clone()
    released = r"got \[2, 8\) released by the sliding window"
    with pytest.raises(InvalidArgumentError, match=released):
        c.materialize("a")
    with pytest.raises(InvalidArgumentError, match=released):
        c.read_kv("a", 1)
    with pytest.raises(InvalidArgumentError, match=r"got \[5, 6\) released"):
        c.get("a", 5)
    with pytest.raises(InvalidArgumentError, match=r"got \[6, 8\) released"):
        c.write_kv("a", 0, 6, torch.zeros(3, H, D), torch.zeros(3, H, D))
    assert torch.equal(c.storage.kv_cache, before)
    # live positions (sinks and the window) still read back exactly
    mk, mv = c.materialize("a", 8)
    assert torch.equal(mk, k[:, 8:])
    assert torch.equal(mv, v[:, 8:])
    assert torch.equal(c.get("a", 1)[0], k[:, 1])
    assert torch.equal(c.read_kv("a", 0, 0, 2)[1], v[0, :2])
    assert torch.equal(c.get("a", -1)[1], v[:, 11])
    c.check_integrity()


@pytest.mark.parametrize("bad", [1.5, True, "2", None])
def test_positions_and_token_ids_must_be_ints(bad):
    c = _cache()
    k, v = _kv(4)
    c.append("a", k, v)
    before = c.storage.kv_cache.clone()
    with pytest.raises(InvalidArgumentError, match="expected an int"):
        c.get("a", bad)
    if bad is not None:  # end=None means "to the end"
        with pytest.raises(InvalidArgumentError, match="expected an int"):
            c.materialize("a", 0, bad)
    with pytest.raises(InvalidArgumentError, match="expected an int"):
        c.read_kv("a", 0, bad, 2)
    cfg = CacheConfig(block_size=4, num_blocks=16, enable_prefix_caching=True)
    p = PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, config=cfg)
    with pytest.raises(InvalidArgumentError, match="token_ids"):
        p.append("b", *_kv(2), token_ids=[bad, bad])
    with pytest.raises(InvalidArgumentError, match="sliding_window"):
        PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, sliding_window=4)  # type: ignore[arg-type]
    assert "b" not in p.manager
    assert torch.equal(c.storage.kv_cache, before)
    c.check_integrity()
    p.check_integrity()


def test_float_token_ids_are_not_rounded():
    cfg = CacheConfig(block_size=2, num_blocks=16, enable_prefix_caching=True)
    c = PagedKVCache(num_layers=L, num_kv_heads=H, head_dim=D, config=cfg)
    with pytest.raises(InvalidArgumentError, match="integer dtype"):
        c.append("a", *_kv(2), token_ids=np.array([1.5, 2.0]))
    assert "a" not in c.manager
    c.check_integrity()
