"""PagedKVCache: manager + storage kept in step (append, get, materialize, fork/CoW, swap)."""

from __future__ import annotations

import pytest
import torch

from pagedkv.core import CacheConfig
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
