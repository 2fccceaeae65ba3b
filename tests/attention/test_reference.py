"""Paged attention vs. torch SDPA on the equivalent contiguous tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from paged_kv_helpers import TOL, make_paged_kv
from torch.nn import functional as nnf

from pagedkv.attention import (
    AttentionMetadata,
    TorchReferenceBackend,
    get_attention_backend,
    list_attention_backends,
    paged_attention,
    register_attention_backend,
    registry,
)
from pagedkv.errors import InvalidArgumentError, ShapeError


def _sdpa_ref(q, k, v, *, window=None, sink=0, scale=None):
    """q [ql, Hq, D], k/v [sl, Hkv, D] -> [ql, Hq, D] with bottom-right causal mask."""
    ql, hq, _ = q.shape
    sl, hkv, _ = k.shape
    p = torch.arange(sl - ql, sl)[:, None]
    j = torch.arange(sl)[None, :]
    mask = j <= p
    if window is not None:
        mask &= (p - j < window) | (j < sink)
    kk = k.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)[None]
    vv = v.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)[None]
    out = nnf.scaled_dot_product_attention(
        q.transpose(0, 1)[None], kk, vv, attn_mask=mask, scale=scale
    )
    return out[0].transpose(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (6, 1)])
def test_decode_matches_sdpa_across_block_boundaries(dtype, hq, hkv):
    seq_lens = [1, 3, 4, 5, 8, 9, 17, 23]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=hq, hkv=hkv, dtype=dtype)
    q = torch.randn(len(seq_lens), hq, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    out = paged_attention(q, store.layer(0), block_tables=tables, seq_lens=seq_lens)
    assert out.shape == q.shape
    assert out.dtype == dtype
    for b in range(len(seq_lens)):
        ref = _sdpa_ref(q[b : b + 1], ks[b], vs[b])
        torch.testing.assert_close(out[b : b + 1], ref, **TOL[dtype])


def test_decode_uniform_lengths_no_mask_path():
    seq_lens = [16, 16, 16]
    store, tables, ks, vs = make_paged_kv(seq_lens)
    q = torch.randn(3, 4, 8)
    out = paged_attention(q, store.layer(0), block_tables=tables, seq_lens=seq_lens, scale=0.3)
    for b in range(3):
        torch.testing.assert_close(
            out[b : b + 1], _sdpa_ref(q[b : b + 1], ks[b], vs[b], scale=0.3), **TOL[torch.float32]
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_prefill_and_extend_varlen_causal(dtype):
    # seq 0: full prefill; seq 1: extend 3 tokens after a 9-token cached prefix; seq 2: 1 token
    seq_lens = [7, 12, 5, 16]
    query_lens = [7, 3, 1, 16]
    store, tables, ks, vs = make_paged_kv(seq_lens, dtype=dtype, seed=3)
    q = torch.randn(sum(query_lens), 4, 8).to(dtype)
    out = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, query_lens=query_lens
    )
    cu = np.concatenate([[0], np.cumsum(query_lens)])
    for b in range(len(seq_lens)):
        ref = _sdpa_ref(q[cu[b] : cu[b + 1]], ks[b], vs[b])
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], ref, **TOL[dtype])


@pytest.mark.parametrize(("window", "sink"), [(3, 0), (5, 2), (100, 0)])
def test_sliding_window_with_sinks(window, sink):
    seq_lens = [10, 13, 4]
    query_lens = [1, 5, 4]
    store, tables, ks, vs = make_paged_kv(seq_lens, seed=5)
    q = torch.randn(sum(query_lens), 4, 8)
    out = paged_attention(
        q,
        store.layer(0),
        block_tables=tables,
        seq_lens=seq_lens,
        query_lens=query_lens,
        sliding_window=window,
        sink_tokens=sink,
    )
    cu = np.concatenate([[0], np.cumsum(query_lens)])
    for b in range(3):
        ref = _sdpa_ref(q[cu[b] : cu[b + 1]], ks[b], vs[b], window=window, sink=sink)
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], ref, **TOL[torch.float32])


def test_sliding_window_ignores_released_null_blocks():
    """Blocks outside the window replaced by the null block (as the manager does) don't matter."""
    seq_lens = [14]
    store, tables, ks, vs = make_paged_kv(seq_lens, seed=7)
    q = torch.randn(1, 4, 8)
    full = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, sliding_window=4
    )
    released = [[0, 0, *tables[0][2:]]]  # positions 0..7 dropped; window covers 10..13
    out = paged_attention(
        q, store.layer(0), block_tables=released, seq_lens=seq_lens, sliding_window=4
    )
    torch.testing.assert_close(out, full, rtol=0, atol=0)
    torch.testing.assert_close(out, _sdpa_ref(q, ks[0], vs[0], window=4), **TOL[torch.float32])


def test_shared_prefix_blocks():
    seq_lens = [9, 11, 6]
    store, tables, ks, vs = make_paged_kv(seq_lens, share_prefix_blocks=2, seed=9)
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]
    q = torch.randn(3, 4, 8)
    out = paged_attention(q, store.layer(0), block_tables=tables, seq_lens=seq_lens)
    for b in range(3):
        torch.testing.assert_close(
            out[b : b + 1], _sdpa_ref(q[b : b + 1], ks[b], vs[b]), **TOL[torch.float32]
        )


def test_metadata_mask_and_padding_indices():
    meta = AttentionMetadata.build(
        block_size=4, block_tables=[[1, 2], [3]], seq_lens=[6, 3], query_lens=[2, 1]
    )
    assert meta.slot_mapping.tolist() == [8, 9, 14]
    assert meta.cu_seqlens_q.tolist() == [0, 2, 3]
    assert meta.q_pad_index is not None
    assert meta.q_pad_index.tolist() == [0, 1, 2, 0]
    assert meta.q_unpad_index is not None
    assert meta.q_unpad_index.tolist() == [0, 1, 2]
    m = meta.mask(1)
    assert m is not None
    assert m[0, 0].tolist() == [[True] * 5 + [False], [True] * 6]
    assert m[1, 0, 0].tolist() == [True, True, True, False, False, False]
    uniform = AttentionMetadata.build(
        block_size=4, block_tables=[[1], [2]], seq_lens=[3, 3], query_lens=[1, 1]
    )
    assert uniform.mask(2) is None


def test_bad_inputs_raise_typed_errors():
    store, tables, _, _ = make_paged_kv([5])
    with pytest.raises(ShapeError, match="expected 1 tokens, got 2"):
        paged_attention(torch.randn(2, 4, 8), store.layer(0), block_tables=tables, seq_lens=[5])
    with pytest.raises(ShapeError, match="head_dim 8, got 6"):
        paged_attention(torch.randn(1, 4, 6), store.layer(0), block_tables=tables, seq_lens=[5])
    with pytest.raises(ShapeError, match="divisible"):
        paged_attention(torch.randn(1, 3, 8), store.layer(0), block_tables=tables, seq_lens=[5])
    with pytest.raises(ShapeError, match="columns"):
        paged_attention(torch.randn(1, 4, 8), store.layer(0), block_tables=[[1]], seq_lens=[5])
    with pytest.raises(InvalidArgumentError, match="query_len <= seq_len"):
        paged_attention(
            torch.randn(6, 4, 8), store.layer(0), block_tables=tables, seq_lens=[5], query_lens=[6]
        )
    with pytest.raises(ShapeError, match="num_blocks, 2"):
        paged_attention(torch.randn(1, 4, 8), store.kv_cache, block_tables=tables, seq_lens=[5])


def test_registry():
    assert {"torch", "reference"} <= set(list_attention_backends())
    assert get_attention_backend("reference") is not None
    with pytest.raises(InvalidArgumentError, match="expected one of"):
        get_attention_backend("nope")

    try:

        @register_attention_backend("test-dummy")
        class Dummy:
            name = "test-dummy"

            def forward(self, query, kv_cache, metadata, **kw):
                return torch.zeros_like(query)

        assert isinstance(get_attention_backend("test-dummy"), Dummy)
        assert "test-dummy" in list_attention_backends()
        with pytest.raises(InvalidArgumentError, match="already registered"):
            register_attention_backend("torch")(Dummy)
        assert get_attention_backend("torch").name == "torch"
    finally:
        if "test-dummy" in registry._BACKENDS:
            registry._BACKENDS.unregister("test-dummy")
        registry._INSTANCES.pop("test-dummy", None)


@pytest.mark.parametrize(("window", "softcap"), [(None, None), (6, None), (None, 5.0)])
def test_mixed_decode_and_long_prefill_split_into_parts(window, softcap):
    # A continuous-batching step: many one-token decodes plus two long prompt chunks. Padding
    # every row to the longest query would do ~4x the useful work, so the backend splits the
    # batch (decodes together, each long query alone); the result must not change.
    seq_lens = [30, 9, 41, 17, 40, 5, 33]
    query_lens = [1, 1, 1, 1, 28, 1, 19]
    store, tables, ks, vs = make_paged_kv(seq_lens, seed=5)
    meta = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=seq_lens, query_lens=query_lens
    )
    parts = meta.padding_parts()
    assert parts is not None
    assert [len(i) for i, _ in parts] == [5, 28, 19]
    assert sorted(torch.cat([i for i, _ in parts]).tolist()) == list(range(sum(query_lens)))
    q = torch.randn(sum(query_lens), 4, 8, generator=torch.Generator().manual_seed(2))
    backend = get_attention_backend("torch")
    out = backend.forward(q, store.layer(0), meta, sliding_window=window, softcap=softcap)
    # The same batch without splitting (every row padded): identical up to float rounding.
    whole = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=seq_lens, query_lens=query_lens
    )
    whole._parts_done = True  # force the padded path
    ref = backend.forward(q, store.layer(0), whole, sliding_window=window, softcap=softcap)
    torch.testing.assert_close(out, ref, **TOL[torch.float32])
    cu = np.concatenate([[0], np.cumsum(query_lens)])
    if softcap is None:
        for b in range(len(seq_lens)):
            torch.testing.assert_close(
                out[cu[b] : cu[b + 1]],
                _sdpa_ref(q[cu[b] : cu[b + 1]], ks[b], vs[b], window=window),
                **TOL[torch.float32],
            )


def test_uniform_batches_are_not_split():
    _store, tables, _, _ = make_paged_kv([12, 12, 13])
    meta = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=[12, 12, 13], query_lens=[1, 1, 1]
    )
    assert meta.padding_parts() is None


def test_workspace_made_under_inference_mode_serves_calls_outside_it():
    """The backend's grow-only gather buffers outlive the call that made them: one made inside
    an engine step (inference mode) must still be writable by a later plain call."""
    seq_lens = [5, 9]
    store, tables, _, _ = make_paged_kv(seq_lens)
    q = torch.randn(2, 4, 8)
    backend = TorchReferenceBackend()  # its own (empty) workspace
    meta = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=seq_lens, query_lens=[1, 1]
    )
    with torch.inference_mode():
        inside = backend.forward(q, store.layer(0), meta)
    outside = backend.forward(q, store.layer(0), meta)
    torch.testing.assert_close(outside, inside.clone())
