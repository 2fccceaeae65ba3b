"""Compiled CPU decode kernel ("cpu" backend) vs. the torch reference and contiguous SDPA.

The extension is built once per session (first test, ~60 s on 2 cores; later sessions load the
cached build). Without a C++ toolchain the module is skipped rather than failed.
"""

from __future__ import annotations

import shutil

import pytest
import torch
from paged_kv_helpers import TOL, make_paged_kv
from torch.nn import functional as nnf

from pagedkv.attention import (
    AttentionMetadata,
    CpuDecodeBackend,
    cpu_kernel,
    get_attention_backend,
    paged_attention,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the cpu kernel cannot be built", allow_module_level=True)


@pytest.fixture(scope="module", autouse=True)
def _kernel():
    """Build (or load the cached build of) the extension once for the whole module."""
    return cpu_kernel.load_kernel()


def _sdpa_decode(q, k, v, *, window=None, sink=0, scale=None):
    """q [1, Hq, D], k/v [L, Hkv, D] contiguous -> [1, Hq, D] (query at position L - 1)."""
    hq, hkv, length = q.shape[1], k.shape[1], k.shape[0]
    mask = None
    if window is not None:
        j = torch.arange(length)
        mask = ((length - 1 - j < window) | (j < sink))[None, None, None]
    out = nnf.scaled_dot_product_attention(
        q.transpose(0, 1)[None],
        k.transpose(0, 1)[None],
        v.transpose(0, 1)[None],
        attn_mask=mask,
        scale=scale,
        enable_gqa=hq != hkv,
    )
    return out[0].transpose(0, 1)


def _both(q, store, tables, seq_lens, **kw):
    cpu = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, backend="cpu", **kw
    )
    ref = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, backend="torch", **kw
    )
    return cpu, ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (6, 1), (32, 8)])
def test_decode_matches_reference_and_sdpa(dtype, hq, hkv):
    seq_lens = [1, 3, 4, 5, 8, 9, 17, 23, 40]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=hq, hkv=hkv, dtype=dtype)
    q = torch.randn(len(seq_lens), hq, 8, generator=torch.Generator().manual_seed(1)).to(dtype)
    cpu, ref = _both(q, store, tables, seq_lens)
    assert cpu.shape == q.shape
    assert cpu.dtype == dtype
    torch.testing.assert_close(cpu, ref, **TOL[dtype])
    for b in range(len(seq_lens)):
        torch.testing.assert_close(
            cpu[b : b + 1], _sdpa_decode(q[b : b + 1], ks[b], vs[b]), **TOL[dtype]
        )


@pytest.mark.parametrize("use_avx2", [True, False])
@pytest.mark.parametrize("heads_per_task", [1, 3, 8])
def test_isa_paths_and_task_splits_agree(use_avx2, heads_per_task):
    """Both compiled copies (AVX2+FMA and baseline) and every head split give the same result,
    at a realistic head_dim and block size."""
    seq_lens = [1, 15, 16, 17, 100]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=32, hkv=8, d=128, bs=16, seed=2)
    q = torch.randn(len(seq_lens), 32, 128)
    meta = AttentionMetadata.build(
        block_size=16, block_tables=tables, seq_lens=seq_lens, query_lens=[1] * len(seq_lens)
    )
    out = cpu_kernel.paged_decode(
        q,
        store.layer(0),
        meta.block_tables,
        meta.seq_lens_t,
        heads_per_task=heads_per_task,
        use_avx2=use_avx2,
    )
    for b in range(len(seq_lens)):
        torch.testing.assert_close(
            out[b : b + 1], _sdpa_decode(q[b : b + 1], ks[b], vs[b]), **TOL[torch.float32]
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [32, 64, 128, 256])
@pytest.mark.parametrize("bs", [4, 16, 32])
@pytest.mark.parametrize("use_avx2", [True, False])
def test_vectorised_head_sizes_match_sdpa(dtype, d, bs, use_avx2):
    """The vectorised block (head_dim 32/64/128/256, float32/bfloat16): keys 16 at a time,
    so lengths around 16 and 32 and block sizes below, at and above 16; every ISA copy."""
    seq_lens = [1, 2, 15, 16, 17, 31, 33, 70]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=6, hkv=2, d=d, bs=bs, dtype=dtype, seed=3)
    q = (2 * torch.randn(len(seq_lens), 6, d, generator=torch.Generator().manual_seed(4))).to(dtype)
    meta = AttentionMetadata.build(
        block_size=bs, block_tables=tables, seq_lens=seq_lens, query_lens=[1] * len(seq_lens)
    )
    out = cpu_kernel.paged_decode(
        q, store.layer(0), meta.block_tables, meta.seq_lens_t, use_avx2=use_avx2
    )
    for b in range(len(seq_lens)):
        ref = _sdpa_decode(q[b : b + 1].float(), ks[b].float(), vs[b].float())
        torch.testing.assert_close(out[b : b + 1].float(), ref, **TOL[dtype])


def test_scale_and_uniform_lengths():
    seq_lens = [16, 16, 16]
    store, tables, ks, vs = make_paged_kv(seq_lens)
    q = torch.randn(3, 4, 8)
    cpu, ref = _both(q, store, tables, seq_lens, scale=0.3)
    torch.testing.assert_close(cpu, ref, **TOL[torch.float32])
    for b in range(3):
        torch.testing.assert_close(
            cpu[b : b + 1],
            _sdpa_decode(q[b : b + 1], ks[b], vs[b], scale=0.3),
            **TOL[torch.float32],
        )


@pytest.mark.parametrize(("window", "sink"), [(1, 0), (3, 0), (5, 2), (6, 7), (100, 0), (4, 40)])
def test_sliding_window_with_sinks(window, sink):
    seq_lens = [1, 10, 13, 4, 30]
    store, tables, ks, vs = make_paged_kv(seq_lens, seed=5)
    q = torch.randn(len(seq_lens), 4, 8)
    cpu, ref = _both(q, store, tables, seq_lens, sliding_window=window, sink_tokens=sink)
    torch.testing.assert_close(cpu, ref, **TOL[torch.float32])
    for b in range(len(seq_lens)):
        torch.testing.assert_close(
            cpu[b : b + 1],
            _sdpa_decode(q[b : b + 1], ks[b], vs[b], window=window, sink=sink),
            **TOL[torch.float32],
        )


def test_released_null_blocks_are_never_read():
    """Blocks outside the window replaced by the null block 0 (as the manager does) -- even a
    null block full of garbage -- do not change the output, as in the reference."""
    seq_lens = [14, 21]
    store, tables, _, _ = make_paged_kv(seq_lens, seed=7)
    q = torch.randn(2, 4, 8)
    full, _ = _both(q, store, tables, seq_lens, sliding_window=4, sink_tokens=1)
    # visible: sink {0} + window [L-4, L): seq 0 keeps blocks 0, 2, 3; seq 1 keeps 0, 4, 5.
    released = [[tables[0][0], 0, *tables[0][2:]], [tables[1][0], 0, 0, 0, *tables[1][4:]]]
    store.layer(0)[0].fill_(1e4)  # poison the null block: any read would show
    cpu, ref = _both(q, store, released, seq_lens, sliding_window=4, sink_tokens=1)
    torch.testing.assert_close(cpu, full, rtol=0, atol=0)
    torch.testing.assert_close(cpu, ref, **TOL[torch.float32])


def test_padded_table_columns_and_shared_blocks():
    seq_lens = [9, 11, 6]
    store, tables, ks, vs = make_paged_kv(seq_lens, share_prefix_blocks=2, seed=9)
    assert tables[0][:2] == tables[1][:2] == tables[2][:2]
    padded = [[*t, 0, 0, 0] for t in tables]  # extra null columns beyond each length
    q = torch.randn(3, 4, 8)
    cpu, ref = _both(q, store, padded, seq_lens)
    torch.testing.assert_close(cpu, ref, **TOL[torch.float32])
    for b in range(3):
        torch.testing.assert_close(
            cpu[b : b + 1], _sdpa_decode(q[b : b + 1], ks[b], vs[b]), **TOL[torch.float32]
        )


def test_prefill_delegates_to_reference():
    """Head size 8, which the prefill kernel does not take: the reference's result exactly."""
    seq_lens, query_lens = [7, 12], [7, 3]
    store, tables, _, _ = make_paged_kv(seq_lens, seed=3)
    q = torch.randn(10, 4, 8)
    kw = {"block_tables": tables, "seq_lens": seq_lens, "query_lens": query_lens}
    cpu = paged_attention(q, store.layer(0), backend="cpu", **kw)
    ref = paged_attention(q, store.layer(0), backend="torch", **kw)
    torch.testing.assert_close(cpu, ref, rtol=0, atol=0)


def test_backend_selection_and_supports():
    backend = get_attention_backend("cpu")
    assert isinstance(backend, CpuDecodeBackend)
    assert backend.name == "cpu"
    assert cpu_kernel.kernel_available()
    store, tables, _, _ = make_paged_kv([5, 6])
    meta = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=[5, 6], query_lens=[1, 1]
    )
    q = torch.randn(2, 4, 8)
    assert backend.supports(q, store.layer(0), meta)
    assert not backend.supports(q, store.layer(0), meta, sliding_window=0)
    strided = store.layer(0).transpose(3, 4).contiguous().transpose(3, 4)
    assert not backend.supports(q, strided, meta)
    torch.testing.assert_close(
        backend.forward(q, strided, meta),
        backend.forward(q, store.layer(0), meta),
        **TOL[torch.float32],
    )


def test_out_of_range_block_id_raises():
    store, _, _, _ = make_paged_kv([5])
    meta = AttentionMetadata.build(
        block_size=4, block_tables=[[1, 999]], seq_lens=[5], query_lens=[1]
    )
    with pytest.raises(RuntimeError, match="block id out of range"):
        cpu_kernel.paged_decode(
            torch.randn(1, 4, 8), store.layer(0), meta.block_tables, meta.seq_lens_t
        )


def test_build_failure_is_a_library_error(monkeypatch):
    """A failed build raises CpuKernelUnavailableError at selection and is remembered."""
    monkeypatch.setattr(
        cpu_kernel, "_STATE", {"module": None, "error": "no compiler", "build_s": None}
    )
    with pytest.raises(cpu_kernel.CpuKernelUnavailableError, match="no compiler"):
        CpuDecodeBackend()
    assert not cpu_kernel.kernel_available()


def test_auto_resolves_to_the_kernel_on_cpu_and_to_torch_otherwise(monkeypatch):
    """``"auto"`` (the engine's default): the compiled kernel for a CPU model when it builds,
    the torch reference on another device or where the build failed; names pass through."""
    assert cpu_kernel.resolve_backend("auto", "cpu") == "cpu"
    assert cpu_kernel.resolve_backend("auto", "meta") == "torch"
    assert cpu_kernel.resolve_backend("torch", "cpu") == "torch"
    assert cpu_kernel.resolve_backend("reference", "meta") == "reference"
    monkeypatch.setattr(
        cpu_kernel, "_STATE", {"module": None, "error": "no compiler", "build_s": None}
    )
    assert cpu_kernel.resolve_backend("auto", "cpu") == "torch"


def test_engine_default_backend_is_the_kernel_on_cpu():
    from pagedkv.engine import EngineConfig, LLMEngine
    from pagedkv.models.random_llama import tiny_random_llama

    assert EngineConfig().backend == "auto"
    eng = LLMEngine(tiny_random_llama(0), block_size=4, num_blocks=16)
    assert eng.runner.backend.name == "cpu"


def test_cli_accepts_auto_and_refuses_unknown_backends():
    import argparse

    from pagedkv.cli_setup import check_names
    from pagedkv.errors import InvalidArgumentError

    check_names(argparse.Namespace(backend="auto"))
    with pytest.raises(InvalidArgumentError, match="'auto'"):
        check_names(argparse.Namespace(backend="fast"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_task_with_more_heads_than_one_walk_holds(dtype):
    """The vectorised block walks a sequence once for up to 32 query heads: a task of 48 heads
    (one kv head of a 96/2 GQA) walks twice. Every head's keys are summed in the same order
    however the heads are grouped, so the task splits agree bit for bit, and match SDPA."""
    seq_lens = [5, 16, 40, 3]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=96, hkv=2, d=32, bs=16, dtype=dtype, seed=5)
    q = torch.randn(len(seq_lens), 96, 32, generator=torch.Generator().manual_seed(6)).to(dtype)
    meta = AttentionMetadata.build(
        block_size=16, block_tables=tables, seq_lens=seq_lens, query_lens=[1] * len(seq_lens)
    )
    outs = [
        cpu_kernel.paged_decode(
            q, store.layer(0), meta.block_tables, meta.seq_lens_t, heads_per_task=hpt
        )
        for hpt in (1, 2)
    ]
    assert torch.equal(outs[0], outs[1])
    for b in range(len(seq_lens)):
        ref = _sdpa_decode(q[b : b + 1].float(), ks[b].float(), vs[b].float())
        torch.testing.assert_close(outs[0][b : b + 1].float(), ref, **TOL[dtype])
