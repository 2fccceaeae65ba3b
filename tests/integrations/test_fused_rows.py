"""The compiled fused row ops (RMSNorm, residual + RMSNorm, SiLU-and-multiply, RoPE) against the
torch ops the native forward runs without them, in float32 and bfloat16, on every ISA copy."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.nn import functional as nnf

from pagedkv.integrations import fused_rows
from pagedkv.integrations.native_llama import apply_rope, rms_norm, signed_sin

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the cpu kernel cannot be built", allow_module_level=True)

DTYPES = [torch.float32, torch.bfloat16]
# float32: rounding only; bfloat16: one unit in the last place of the rounded result
TOL = {torch.float32: {"atol": 2e-6, "rtol": 2e-6}, torch.bfloat16: {"atol": 1e-2, "rtol": 8e-3}}


@pytest.fixture(params=["vector", "baseline"])
def isa(request, monkeypatch):
    """Each compiled copy: the best vector one for this CPU, and the baseline one."""
    if request.param == "baseline":
        monkeypatch.setenv("PAGEDKV_CPU_KERNEL_NO_AVX2", "1")
    return request.param


def _rand(*shape, dtype, seed=0, scale=2.0):
    return (scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))).to(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("t", "h"), [(1, 16), (5, 576), (100, 64), (130, 2048)])
def test_rms_norm_matches_torch(dtype, t, h, isa):
    x, w = _rand(t, h, dtype=dtype), _rand(h, dtype=dtype, seed=1)
    torch.testing.assert_close(
        fused_rows.rms_norm(x, w, 1e-5).float(), rms_norm(x, w, 1e-5).float(), **TOL[dtype]
    )


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_rms_norm_updates_the_residual_in_place(dtype, isa):
    h, r = _rand(7, 96, dtype=dtype), _rand(7, 96, dtype=dtype, seed=2)
    w = _rand(96, dtype=dtype, seed=3)
    expected_h = h + r
    before = h.data_ptr()
    out = fused_rows.add_rms_norm(h, r, w, 1e-6)
    assert h.data_ptr() == before
    torch.testing.assert_close(h, expected_h, rtol=0, atol=0)  # one rounding, as torch's add
    torch.testing.assert_close(out.float(), rms_norm(expected_h, w, 1e-6).float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inter", [16, 1536])
def test_silu_mul_matches_torch(dtype, inter, isa):
    gu = _rand(9, 2 * inter, dtype=dtype, scale=4.0)
    gu[0, :4] = torch.tensor([-100.0, 100.0, 0.0, -0.0]).to(dtype)  # far tails and zero
    expected = nnf.silu(gu[:, :inter]) * gu[:, inter:]
    got = fused_rows.silu_mul(gu)
    assert got.shape == (9, inter)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.float(), expected.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("d", [32, 64, 128, 256])
def test_rope_in_place_matches_torch_and_leaves_v(dtype, d, isa):
    t, hq, hkv = 6, 3, 1
    qkv = _rand(t, (hq + 2 * hkv) * d, dtype=dtype)
    ang = torch.randn(t, d // 2, generator=torch.Generator().manual_seed(4))
    cos = torch.cat((ang.cos(), ang.cos()), -1).to(dtype)
    sin = torch.cat((ang.sin(), ang.sin()), -1).to(dtype)
    ssin = signed_sin(sin)
    expected = apply_rope(
        qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d), cos[:, None], ssin[:, None]
    )
    v_before = qkv[:, (hq + hkv) * d :].clone()
    fused_rows.rope_(qkv, cos, ssin, hq + hkv)
    got = qkv[:, : (hq + hkv) * d].view(t, hq + hkv, d)
    torch.testing.assert_close(got.float(), expected.float(), **TOL[dtype])
    assert torch.equal(qkv[:, (hq + hkv) * d :], v_before)


def test_bad_inputs_raise_and_change_nothing():
    x = torch.randn(4, 24)  # 24: not a multiple of 16
    with pytest.raises(RuntimeError, match="multiple of 16"):
        fused_rows.rms_norm(x, torch.randn(24), 1e-5)
    h, before = torch.randn(4, 32), None
    before = h.clone()
    with pytest.raises(RuntimeError, match="weight"):
        fused_rows.add_rms_norm(h, torch.randn(4, 32), torch.randn(16), 1e-5)
    assert torch.equal(h, before)
    with pytest.raises(RuntimeError, match="float32/bfloat16"):
        fused_rows.silu_mul(torch.randn(2, 64).half())
    qkv = torch.randn(2, 64)
    with pytest.raises(RuntimeError, match="heads exceed"):
        fused_rows.rope_(qkv, torch.randn(2, 32), torch.randn(2, 32), 3)


def test_fused_rows_apply_cases():
    x = torch.randn(3, 576)
    assert fused_rows.fused_rows_apply(x, 1536, 64, 12)
    assert fused_rows.fused_rows_apply(x.bfloat16(), 1536, 64, 12)
    assert not fused_rows.fused_rows_apply(x.half(), 1536, 64, 12)
    assert not fused_rows.fused_rows_apply(x, 1536, 16, 12)  # head size 16
    assert not fused_rows.fused_rows_apply(torch.randn(3, 72), 1536, 64, 12)  # hidden 72
    assert not fused_rows.fused_rows_apply(x, 1000, 64, 12)  # intermediate 1000
