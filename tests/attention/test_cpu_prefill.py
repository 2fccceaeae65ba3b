"""Compiled CPU prefill kernel (``paged_prefill``, the "cpu" backend's prompt path) vs. SDPA.

Prompt rows attend straight over the paged pool: fresh prompts, prompts after cached KV and
single rows, across tile (16 query tokens), chunk (16 keys) and softmax-block (64 keys)
boundaries, block sizes below, at and above 16, every GQA ratio, every ISA copy.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from paged_kv_helpers import TOL, make_paged_kv
from torch.nn import functional as nnf

from pagedkv.attention import AttentionMetadata, cpu_kernel, get_attention_backend, paged_attention

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the cpu kernel cannot be built", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    return cpu_kernel.load_kernel()


def _sdpa_rows(q, k, v, *, scale=None):
    """q [n, Hq, D] at positions L - n .. L - 1 over k/v [L, Hkv, D] (float32 math)."""
    n, length = q.shape[0], k.shape[0]
    mask = torch.arange(length)[None, :] <= torch.arange(length - n, length)[:, None]
    out = nnf.scaled_dot_product_attention(
        q.float().transpose(0, 1)[None],
        k.float().transpose(0, 1)[None],
        v.float().transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != k.shape[1],
    )
    return out[0].transpose(0, 1)


def _run(seq_lens, query_lens, *, hq, hkv, d, bs, dtype, use_avx2=True, gap=2, scale=None):
    """paged_prefill over sequences laid out in the packed rows with ``gap`` rows before the
    first and between none (the gap rows must stay untouched); returns (out, expected, rows)."""
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=hq, hkv=hkv, d=d, bs=bs, dtype=dtype)
    total = sum(query_lens) + 2 * gap
    q = (2 * torch.randn(total, hq, d, generator=torch.Generator().manual_seed(7))).to(dtype)
    meta = AttentionMetadata.build(
        block_size=bs, block_tables=tables, seq_lens=seq_lens, query_lens=query_lens
    )
    starts = torch.tensor([gap + sum(query_lens[:s]) for s in range(len(seq_lens))])
    out = torch.full_like(q, 7.0)
    cpu_kernel.paged_prefill(
        q,
        store.layer(0),
        meta.block_tables,
        meta.seq_lens_t,
        starts,
        torch.tensor(query_lens, dtype=torch.int32),
        out,
        use_avx2=use_avx2,
        scale=scale,
    )
    expected = torch.cat(
        [
            _sdpa_rows(q[int(st) : int(st) + n], ks[s], vs[s], scale=scale)
            for s, (st, n) in enumerate(zip(starts, query_lens, strict=True))
        ]
    )
    pairs = zip(starts, query_lens, strict=True)
    rows = torch.cat([torch.arange(int(st), int(st) + n) for st, n in pairs])
    assert (out[:gap] == 7).all()  # the rows of no sequence are left untouched
    assert (out[total - gap :] == 7).all()
    return out, expected, rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 64, 128, 256])
@pytest.mark.parametrize("bs", [4, 16, 32])
@pytest.mark.parametrize("use_avx2", [True, False])
def test_prefill_matches_sdpa(dtype, d, bs, use_avx2):
    # fresh prompts (query_len == seq_len) of 1, 15, 16, 17 and 40 tokens; prompts after cached
    # KV; a lone row after cache (a decode among prompts)
    seq_lens = [1, 15, 16, 17, 40, 37, 70, 33]
    query_lens = [1, 15, 16, 17, 40, 5, 33, 1]
    out, expected, rows = _run(seq_lens, query_lens, hq=6, hkv=2, d=d, bs=bs, dtype=dtype)
    torch.testing.assert_close(out[rows].float(), expected, **TOL[dtype])


@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (9, 3), (8, 1), (32, 8)])
def test_gqa_ratios_and_scale(hq, hkv):
    out, expected, rows = _run(
        [50, 21], [50, 20], hq=hq, hkv=hkv, d=64, bs=16, dtype=torch.float32, scale=0.3
    )
    torch.testing.assert_close(out[rows], expected, **TOL[torch.float32])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_blocks_of_64_keys_every_remainder(dtype):
    """Keys go in blocks of four 16-key chunks per softmax update: sequences whose last block
    holds 1, 2, 3 or 4 chunks, rows whose visible keys end inside a block or on its edge, and
    query tiles that start in one block and end in the next."""
    seq_lens = [64, 65, 80, 96, 112, 129, 48, 100]
    query_lens = [64, 3, 17, 96, 50, 1, 33, 36]
    out, expected, rows = _run(seq_lens, query_lens, hq=9, hkv=3, d=64, bs=16, dtype=dtype)
    torch.testing.assert_close(out[rows].float(), expected, **TOL[dtype])


def test_long_prompt_spreads_over_threads_and_matches():
    """One 300-token prompt after 40 cached tokens: many tiles of unequal cost."""
    out, expected, rows = _run([340], [300], hq=9, hkv=3, d=64, bs=16, dtype=torch.float32)
    torch.testing.assert_close(out[rows], expected, **TOL[torch.float32])


def test_backend_runs_prompt_steps_through_the_kernel():
    """The "cpu" backend takes plain causal prompt steps (decodes among them included) and
    gives the reference's result; soft-capping still goes to the reference, exactly."""
    seq_lens, query_lens = [30, 45, 9], [30, 12, 1]
    store, tables, _, _ = make_paged_kv(seq_lens, d=64, bs=16, seed=2)
    q = torch.randn(sum(query_lens), 4, 64, generator=torch.Generator().manual_seed(3))
    kw = {"block_tables": tables, "seq_lens": seq_lens, "query_lens": query_lens}
    backend = get_attention_backend("cpu")
    meta = AttentionMetadata.build(block_size=16, **kw)
    assert backend.supports(q, store.layer(0), meta)
    assert not backend.supports(q, store.layer(0), meta, softcap=0.5)
    assert not backend.supports(q, store.layer(0), meta, sliding_window=8)
    cpu = paged_attention(q, store.layer(0), backend="cpu", **kw)
    ref = paged_attention(q, store.layer(0), backend="torch", **kw)
    torch.testing.assert_close(cpu, ref, **TOL[torch.float32])
    capped = paged_attention(q, store.layer(0), backend="cpu", softcap=0.5, **kw)
    ref_capped = paged_attention(q, store.layer(0), backend="torch", softcap=0.5, **kw)
    torch.testing.assert_close(capped, ref_capped, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("tables", "seq_lens", "query_lens", "match"),
    [
        ([[1, 999]], [5], [5], "block id out of range"),
        ([[1, 2]], [5], [6], "bad lengths"),
        ([[1, 2]], [5], [0], "bad lengths"),
        ([[1]], [5], [5], "bad lengths"),  # 5 tokens need 2 blocks of 4
    ],
)
def test_bad_inputs_raise(tables, seq_lens, query_lens, match):
    store, _, _, _ = make_paged_kv([5], d=32)
    q = torch.randn(8, 4, 32)
    out = torch.zeros_like(q)
    with pytest.raises(RuntimeError, match=match):
        cpu_kernel.paged_prefill(
            q,
            store.layer(0),
            torch.tensor(tables),
            torch.tensor(seq_lens, dtype=torch.int32),
            torch.tensor([0]),
            torch.tensor(query_lens, dtype=torch.int32),
            out,
        )
    assert (out == 0).all()


def test_prefill_supported_cases():
    store, _, _, _ = make_paged_kv([5], d=64)
    assert cpu_kernel.prefill_supported(store.layer(0))
    assert not cpu_kernel.prefill_supported(store.layer(0).half())  # float16: torch path
    small, _, _, _ = make_paged_kv([5], d=8)
    assert not cpu_kernel.prefill_supported(small.layer(0))  # head size 8
    strided = store.layer(0).transpose(3, 4).contiguous().transpose(3, 4)
    assert not cpu_kernel.prefill_supported(strided)
