"""Logit soft-capping (Gemma2) and learned sink logits (GPT-OSS) in both backends, against an
unpaged eager computation written the way transformers' eager attention does it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from paged_kv_helpers import TOL, make_paged_kv

from pagedkv.attention import AttentionMetadata, cpu_kernel, get_attention_backend, paged_attention

HAVE_CXX = shutil.which("c++") is not None or shutil.which("g++") is not None


def _eager_ref(q, k, v, *, window=None, scale=None, softcap=None, sinks=None):
    """q [ql, Hq, D], k/v [sl, Hkv, D] contiguous -> [ql, Hq, D] (fp32 math, bottom-right
    causal): repeat K/V per query head, scale, cap, mask, softmax with the sink column, drop it."""
    ql, hq, d = q.shape
    sl, hkv, _ = k.shape
    qf, kf, vf = (t.float() for t in (q, k, v))
    kk = kf.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)  # [hq, sl, d]
    vv = vf.repeat_interleave(hq // hkv, dim=1).transpose(0, 1)
    w = qf.transpose(0, 1) @ kk.transpose(1, 2) * (d**-0.5 if scale is None else scale)
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    p = torch.arange(sl - ql, sl)[:, None]
    j = torch.arange(sl)[None, :]
    allowed = j <= p
    if window is not None:
        allowed &= p - j < window
    w = w.masked_fill(~allowed, float("-inf"))
    if sinks is not None:
        w = torch.cat([w, sinks.float()[:, None, None].expand(hq, ql, 1)], dim=-1)
    probs = torch.softmax(w, dim=-1)
    if sinks is not None:
        probs = probs[..., :-1]
    return (probs @ vv).transpose(0, 1).to(q.dtype)


def _check(out, q, ks, vs, seq_lens, query_lens, dtype, **kw):
    cu = np.concatenate([[0], np.cumsum(query_lens)])
    for b in range(len(seq_lens)):
        ref = _eager_ref(q[cu[b] : cu[b + 1]], ks[b], vs[b], **kw)
        torch.testing.assert_close(out[cu[b] : cu[b + 1]], ref, **TOL[dtype])


CASES = [
    {"softcap": 0.7},
    {"sinks": True},
    {"softcap": 1.5, "sinks": True, "window": 3},
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 4), (4, 2), (6, 1)])
@pytest.mark.parametrize("case", CASES)
def test_reference_prefill_extend_decode(dtype, hq, hkv, case):
    seq_lens, query_lens = [7, 12, 5, 16, 9], [7, 3, 1, 16, 1]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=hq, hkv=hkv, dtype=dtype, seed=11)
    g = torch.Generator().manual_seed(3)
    q = (3 * torch.randn(sum(query_lens), hq, 8, generator=g)).to(dtype)  # large logits: cap bites
    sinks = torch.randn(hq, generator=g) if case.get("sinks") else None
    kw = {"softcap": case.get("softcap"), "sinks": sinks, "window": case.get("window")}
    out = paged_attention(
        q,
        store.layer(0),
        block_tables=tables,
        seq_lens=seq_lens,
        query_lens=query_lens,
        softcap=kw["softcap"],
        sink_logits=sinks,
        sliding_window=kw["window"],
    )
    _check(out, q, ks, vs, seq_lens, query_lens, dtype, **kw)
    plain = paged_attention(
        q,
        store.layer(0),
        block_tables=tables,
        seq_lens=seq_lens,
        query_lens=query_lens,
        sliding_window=kw["window"],
    )
    assert (out.float() - plain.float()).abs().max() > 1e-2  # the feature changes the result


def test_sinks_with_scale_match_eager_and_need_no_keys_weight():
    """A huge sink logit takes all the probability mass: the output tends to zero."""
    seq_lens = [6, 11]
    store, tables, ks, vs = make_paged_kv(seq_lens, seed=4)
    q = torch.randn(2, 4, 8)
    sinks = torch.tensor([0.0, 1.0, -2.0, 30.0])
    out = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, scale=0.2, sink_logits=sinks
    )
    _check(out, q, ks, vs, seq_lens, [1, 1], torch.float32, scale=0.2, sinks=sinks)
    assert out[:, 3].abs().max() < 1e-6


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the cpu kernel cannot be built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("hq", "hkv"), [(4, 2), (32, 8)])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("d", [8, 64])  # 64: the vectorised block (float32, bfloat16)
def test_cpu_kernel_decode_matches_reference_and_eager(dtype, hq, hkv, case, d):
    cpu_kernel.load_kernel()
    seq_lens = [1, 3, 4, 5, 9, 17, 40]
    store, tables, ks, vs = make_paged_kv(seq_lens, hq=hq, hkv=hkv, d=d, dtype=dtype, seed=5)
    g = torch.Generator().manual_seed(6)
    q = (3 * torch.randn(len(seq_lens), hq, d, generator=g)).to(dtype)
    sinks = torch.randn(hq, generator=g) if case.get("sinks") else None
    kw = {
        "softcap": case.get("softcap"),
        "sink_logits": sinks,
        "sliding_window": case.get("window"),
    }
    backend = get_attention_backend("cpu")
    meta = AttentionMetadata.build(
        block_size=4, block_tables=tables, seq_lens=seq_lens, query_lens=[1] * len(seq_lens)
    )
    assert backend.supports(q, store.layer(0), meta, case.get("window"), 0, kw["softcap"], sinks)
    out = paged_attention(
        q, store.layer(0), block_tables=tables, seq_lens=seq_lens, backend="cpu", **kw
    )
    ref = paged_attention(q, store.layer(0), block_tables=tables, seq_lens=seq_lens, **kw)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    _check(
        out,
        q,
        ks,
        vs,
        seq_lens,
        [1] * len(seq_lens),
        dtype,
        softcap=kw["softcap"],
        sinks=sinks,
        window=case.get("window"),
    )


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the cpu kernel cannot be built")
def test_cpu_backend_prefill_with_softcap_delegates_exactly():
    cpu_kernel.load_kernel()
    seq_lens, query_lens = [7, 12], [7, 3]
    store, tables, _, _ = make_paged_kv(seq_lens, seed=8)
    q = torch.randn(10, 4, 8)
    kw = {
        "block_tables": tables,
        "seq_lens": seq_lens,
        "query_lens": query_lens,
        "softcap": 0.5,
        "sink_logits": torch.randn(4),
    }
    cpu = paged_attention(q, store.layer(0), backend="cpu", **kw)
    ref = paged_attention(q, store.layer(0), backend="torch", **kw)
    torch.testing.assert_close(cpu, ref, rtol=0, atol=0)


@pytest.mark.skipif(not HAVE_CXX, reason="no C++ compiler: the cpu kernel cannot be built")
@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_cpu_backend_generates_like_hf(family):
    """Soft-capped (Gemma2) and sink (GPT-OSS) decode steps through the compiled kernel give
    exactly ``model.generate``'s tokens."""
    transformers = pytest.importorskip("transformers")
    from pagedkv.integrations import PagedModelRunner

    cpu_kernel.load_kernel()
    kw = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "vocab_size": 128,
        "sliding_window": 4,
        "pad_token_id": 0,
        "eos_token_id": None,
    }
    if family == "gemma2":
        cfg = transformers.Gemma2Config(**kw, attn_logit_softcapping=1.0, query_pre_attn_scalar=16)
        cls = transformers.Gemma2ForCausalLM
    else:
        cfg = transformers.GptOssConfig(**kw, num_local_experts=4, num_experts_per_tok=2)
        cls = transformers.GptOssForCausalLM
    torch.manual_seed(0)
    model = cls(cfg).eval()
    for layer in model.model.layers:  # sharper attention: the cap and the sinks matter
        layer.self_attn.q_proj.weight.data *= 20
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 128, (n,), generator=g).tolist() for n in (2, 7, 12)]
    runner = PagedModelRunner(model, block_size=4, num_blocks=64, backend="cpu")
    got = runner.generate(prompts, 8)
    for p, toks in zip(prompts, got, strict=True):
        ids = torch.tensor([p])
        want = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=8,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        assert toks == want[0, len(p) :].tolist()
