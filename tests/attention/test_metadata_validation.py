"""Malformed attention inputs get a typed error (never a bare IndexError, never a silent
rounding), checked once per call."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from paged_kv_helpers import make_paged_kv

from pagedkv.attention import AttentionMetadata, paged_attention
from pagedkv.errors import InvalidArgumentError, ShapeError

BACKENDS = ["torch"]
if shutil.which("c++") is not None or shutil.which("g++") is not None:
    BACKENDS.append("cpu")


def _call(store, tables, seq_lens, q=None, **kw):
    q = torch.randn(len(np.atleast_1d(seq_lens)), 4, 8) if q is None else q
    return paged_attention(q, store.layer(0), block_tables=tables, seq_lens=seq_lens, **kw)


@pytest.mark.parametrize(
    ("seq_lens", "match"),
    [
        ([1.5], "integers"),
        ([5.0], "integers"),
        ([True], "integers"),
        (["5"], "integers"),
        ([None], "integers"),
        ([-1], "query_len <= seq_len"),
        ([0], "query_len <= seq_len"),
        (np.array([2**64 - 1], dtype=np.uint64), "2\\*\\*63"),
    ],
)
def test_bad_seq_lens(seq_lens, match):
    store, tables, _, _ = make_paged_kv([5])
    with pytest.raises(InvalidArgumentError, match=match):
        _call(store, tables, seq_lens, q=torch.randn(1, 4, 8))


def test_bad_query_lens_and_tables():
    store, tables, _, _ = make_paged_kv([5])
    with pytest.raises(InvalidArgumentError, match="query_lens: expected integers"):
        _call(store, tables, [5], query_lens=[0.5])
    with pytest.raises(InvalidArgumentError, match="block_tables: expected integers"):
        _call(store, [[1.0, 2.0]], [5])
    with pytest.raises(InvalidArgumentError, match="block_tables: expected integers"):
        _call(store, np.array([[1.5, 2.0]]), [5])
    with pytest.raises(InvalidArgumentError, match="ids >= 0"):
        _call(store, [[1, -2]], [5])
    with pytest.raises(ShapeError, match="columns"):
        _call(store, [[1]], [10**12])
    with pytest.raises(InvalidArgumentError, match="block_size"):
        AttentionMetadata.build(
            block_size=2.5,
            block_tables=[[1]],
            seq_lens=[1],  # type: ignore[arg-type]
            query_lens=[1],
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_id_past_the_pool_is_typed(backend):
    store, tables, _, _ = make_paged_kv([5])
    n = store.num_blocks
    with pytest.raises(InvalidArgumentError, match=f"block ids < {n}"):
        _call(store, [[tables[0][0], n]], [5], backend=backend)
    with pytest.raises(InvalidArgumentError, match=f"block ids < {n}"):
        _call(store, [[n + 10**6, 1]], [5], backend=backend)
    # a padded column past the needed ones is gathered too: still checked
    q = torch.randn(2, 4, 8)
    with pytest.raises(InvalidArgumentError, match=f"block ids < {n}"):
        _call(store, [[1, 2, 3], [4, n, 0]], [9, 1], q=q, backend=backend)


def test_slot_mapping_validation():
    build = AttentionMetadata.build
    with pytest.raises(InvalidArgumentError, match="slot_mapping: expected integers"):
        build(
            block_size=4, block_tables=[[1]], seq_lens=[2], query_lens=[2], slot_mapping=[4.0, 5.5]
        )
    with pytest.raises(InvalidArgumentError, match=">= -1"):
        build(block_size=4, block_tables=[[1]], seq_lens=[2], query_lens=[2], slot_mapping=[4, -2])
    with pytest.raises(ShapeError, match="slot_mapping: expected shape"):
        build(block_size=4, block_tables=[[1]], seq_lens=[2], query_lens=[2], slot_mapping=[4])
    meta = build(
        block_size=4,
        block_tables=[[1]],
        seq_lens=[2],
        query_lens=[2],
        slot_mapping=torch.tensor([-1, 37]),
    )
    assert meta.max_block_id == 9  # slot 37 lies in block 9: checked against the pool later
    assert meta.write_index is not None
    assert meta.write_index.tolist() == [1]


def test_default_slot_mapping_is_vectorised_and_right():
    meta = AttentionMetadata.build(
        block_size=2, block_tables=[[5, 6, 7], [8, 9]], seq_lens=[5, 3], query_lens=[3, 3]
    )
    # seq 0: positions 2,3,4 -> blocks 6,6,7; seq 1: positions 0,1,2 -> blocks 8,8,9
    assert meta.slot_mapping.tolist() == [12, 13, 14, 16, 17, 18]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_options(backend):
    store, tables, _, _ = make_paged_kv([5])
    with pytest.raises(InvalidArgumentError, match="softcap"):
        _call(store, tables, [5], softcap=0.0, backend=backend)
    with pytest.raises(InvalidArgumentError, match="softcap"):
        _call(store, tables, [5], softcap=float("nan"), backend=backend)
    with pytest.raises(ShapeError, match="sink_logits: expected shape \\[4\\]"):
        _call(store, tables, [5], sink_logits=torch.zeros(2), backend=backend)
    with pytest.raises(ShapeError, match="float tensor"):
        _call(store, tables, [5], sink_logits=torch.zeros(4, dtype=torch.int64), backend=backend)
    with pytest.raises(InvalidArgumentError, match="sliding_window"):
        _call(store, tables, [5], sliding_window=0, backend=backend)
    with pytest.raises(InvalidArgumentError, match="sink_tokens"):
        _call(store, tables, [5], sliding_window=2, sink_tokens=-1, backend=backend)
