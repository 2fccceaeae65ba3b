"""Shared scaffolding for the attention tests: tolerances and a paged K/V fixture."""

from __future__ import annotations

import numpy as np
import torch

from pagedkv.storage import KVStorage

TOL = {
    torch.float32: {"atol": 1e-5, "rtol": 1e-5},
    torch.float16: {"atol": 2e-3, "rtol": 2e-3},
    torch.bfloat16: {"atol": 1.6e-2, "rtol": 1.6e-2},
}


def make_paged_kv(
    seq_lens, *, hq=4, hkv=2, d=8, bs=4, dtype=torch.float32, share_prefix_blocks=0, seed=0
):
    """Random contiguous K/V per sequence written into a paged storage with shuffled tables.

    Sequences may share their first ``share_prefix_blocks`` blocks (a forked / prefix-hit
    prefix): then their K/V over those positions are identical by construction."""
    g = torch.Generator().manual_seed(seed)
    need = [-(-s // bs) for s in seq_lens]
    num_blocks = 1 + sum(need) + 2
    perm = (torch.randperm(num_blocks - 1, generator=g) + 1).tolist()
    store = KVStorage(
        num_layers=1,
        num_blocks=num_blocks,
        block_size=bs,
        num_kv_heads=hkv,
        head_dim=d,
        dtype=dtype,
    )
    tables, ks, vs = [], [], []
    shared = perm[:share_prefix_blocks]
    perm = perm[share_prefix_blocks:]
    shared_k = torch.randn(share_prefix_blocks * bs, hkv, d, generator=g).to(dtype)
    shared_v = torch.randn(share_prefix_blocks * bs, hkv, d, generator=g).to(dtype)
    for s, n in zip(seq_lens, need, strict=True):
        own = n - min(share_prefix_blocks, n)
        table = shared[: n - own] + perm[:own]
        perm = perm[own:]
        k = torch.randn(s, hkv, d, generator=g).to(dtype)
        v = torch.randn(s, hkv, d, generator=g).to(dtype)
        m = min(len(shared_k), s)
        k[:m], v[:m] = shared_k[:m], shared_v[:m]
        pos = np.arange(s)
        slots = np.asarray(table)[pos // bs] * bs + pos % bs
        store.write(0, k, v, slots)
        tables.append(table)
        ks.append(k)
        vs.append(v)
    return store, tables, ks, vs
