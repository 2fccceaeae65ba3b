"""The compiled panel GEMM (float32, AVX-512): ``F.linear``'s values for every row count and
width a tile can end on, a row's result independent of the rows beside it, and
:class:`PackedLinear` taking it only where it applies. Its SiLU-and-multiply epilogue
(``panel_silu_mul``, :class:`GateUpLinear`): bit for bit the unfused GEMM then row pass."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.nn import functional as nnf

from pagedkv.integrations import fused_rows
from pagedkv.integrations.packed_linear import GateUpLinear, PackedLinear
from pagedkv.integrations.panel_gemm import (
    gate_up_gemm,
    pack_gate_up,
    pack_panels,
    panel_gemm,
    panel_gemm_usable,
    panel_silu_mul,
)

if shutil.which("c++") is None and shutil.which("g++") is None:
    pytest.skip("no C++ compiler: the cpu kernel cannot be built", allow_module_level=True)
if not panel_gemm_usable(torch.empty(1, 1)):
    pytest.skip("the panel GEMM needs AVX-512", allow_module_level=True)

# (K, N): N ends a panel at 48 / 32 / 16 columns, off a 16-column vector, or below one vector;
# K in one block of sums, in two (1,536) and in 19 (Llama-3-8B's down projection, 14,336)
SHAPES = [(576, 960), (64, 48), (33, 80), (40, 100), (1536, 576), (7, 5), (16, 200), (0, 20)]
ROWS = [0, 1, 2, 7, 8, 9, 15, 47, 64, 65, 129]


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_equals_f_linear_for_every_row_count(k, n, bias):
    w, b = _rand(n, k, seed=1), (_rand(n, seed=2) if bias else None)
    packed = pack_panels(w)
    assert packed.numel() == -(-n // 16) * 16 * k
    for m in ROWS:
        x = _rand(m, k, seed=m)
        got = panel_gemm(x, packed, b, n)
        assert got.shape == (m, n)
        assert got.is_contiguous()
        assert got.dtype == torch.float32
        _assert_as_close_as_f_linear(got, x, w, b)


def _assert_as_close_as_f_linear(got, x, w, b):
    """``got``'s largest error against a float64 product is at most a few times torch's own
    float32 ``F.linear``'s (both sum in float32, in other orders)."""
    exact = nnf.linear(x.double(), w.double(), None if b is None else b.double())
    if exact.numel() == 0:
        return
    ours = float((got.double() - exact).abs().max())
    torch_err = float((nnf.linear(x, w, b).double() - exact).abs().max())
    assert ours <= 5 * torch_err + 1e-6, (ours, torch_err)


def test_a_long_k_is_summed_in_blocks_as_accurately():
    """K = 14,336 (Llama-3-8B's down projection): one register chain over all of it had ~19x
    torch's error; the kernel's blocks of at most 768 keep it within a few times."""
    k, n = 14336, 64
    w, x = _rand(n, k, seed=8), _rand(9, k, seed=9)
    _assert_as_close_as_f_linear(panel_gemm(x, pack_panels(w), None, n), x, w, None)


def test_a_rows_result_does_not_depend_on_the_rows_beside_it():
    """Each output is one float32 FMA chain over k in order, whatever tile holds its row: a
    request's projections are bit for bit the same in any batch."""
    k, n = 576, 960
    w = _rand(n, k, seed=3)
    packed = pack_panels(w)
    x = _rand(70, k, seed=4)
    whole = panel_gemm(x, packed, None, n)
    for lo, hi in [(0, 1), (5, 8), (8, 16), (3, 70), (64, 70), (69, 70)]:
        assert torch.equal(panel_gemm(x[lo:hi].clone(), packed, None, n), whole[lo:hi])


@pytest.mark.parametrize("threads", [2, 3])
def test_threads_split_panels_of_every_chunk_to_the_same_bits(threads):
    """Tasks go panel-major over the threads (each takes whole panels for all the row chunks):
    with several 64-row chunks, a partial last chunk, and (3 threads) a thread's range that
    starts inside a panel's chunks, both GEMMs give the single-thread result bit for bit."""
    k, n, inter = 96, 7 * 48 + 16, 80  # 8 panels, the last 16 wide; gate/up 2 panels
    w, wg, wu, b = _rand(n, k, seed=11), _rand(inter, k, seed=12), _rand(inter, k, seed=13), None
    packed, pair = pack_panels(w), pack_gate_up(torch.cat([wg, wu]), inter)
    before = torch.get_num_threads()
    for m in (65, 129, 200):
        x = _rand(m, k, seed=m)
        try:
            torch.set_num_threads(1)
            one = panel_gemm(x, packed, b, n), panel_silu_mul(x, pair, None, inter)
            torch.set_num_threads(threads)
            many = panel_gemm(x, packed, b, n), panel_silu_mul(x, pair, None, inter)
        finally:
            torch.set_num_threads(before)
        assert torch.equal(one[0], many[0])
        assert torch.equal(one[1], many[1])
        _assert_as_close_as_f_linear(one[0], x, w, b)


def test_a_packed_weight_of_another_shape_is_refused():
    packed = pack_panels(_rand(48, 32, seed=5))
    with pytest.raises(RuntimeError, match="panels"):
        panel_gemm(_rand(4, 31, seed=6), packed, None, 48)
    with pytest.raises(RuntimeError, match="bias"):
        panel_gemm(_rand(4, 32, seed=6), packed, torch.zeros(47), 48)


def _linears(biases):
    torch.manual_seed(0)
    return [torch.nn.Linear(96, n, bias=b) for n, b in zip((64, 32, 32), biases, strict=False)]


def test_packed_linear_takes_panels_only_when_compiled():
    linears = _linears((True, False, True))
    compiled, onednn = PackedLinear(linears, compiled=True), PackedLinear(linears)
    assert compiled.panels is not None
    assert compiled.packed is None
    assert onednn.panels is None
    assert compiled.nbytes == 128 * 96 * 4 + 128 * 4  # the panels and the fused bias
    x = _rand(11, 96, seed=7)
    ref = torch.cat([nnf.linear(x, lin.weight, lin.bias) for lin in linears], -1)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), ref, atol=1e-5, rtol=1e-5)
        linears[1].weight.mul_(-3.0)  # an in-place write: packed again before use
        assert compiled.stale()
        compiled.refresh()
        ref = torch.cat([nnf.linear(x, lin.weight, lin.bias) for lin in linears], -1)
        torch.testing.assert_close(compiled(x), ref, atol=1e-5, rtol=1e-5)
    assert compiled.panels is not None


def test_bfloat16_and_a_forced_baseline_isa_keep_onednn(monkeypatch):
    bf16 = PackedLinear([lin.to(torch.bfloat16) for lin in _linears((False,))], compiled=True)
    assert bf16.panels is None
    monkeypatch.setenv("PAGEDKV_CPU_KERNEL_NO_AVX2", "1")
    forced = PackedLinear(_linears((False,)), compiled=True)
    assert forced.panels is None


# (K, I) of a gate|up pair: I ends on a 48-, 32- or 16-wide panel (I % 48 == 0 keeps the
# concatenation's layout, the others do not); K in one block, in three (1,600), and 0 (biases
# only); SmolLM2-135M's 576 -> 2 x 1,536
SILU_SHAPES = [(64, 48), (33, 80), (40, 16), (1600, 112), (7, 96), (0, 32), (576, 1536)]


def _unfused(x, w, b, inter):
    """Today's path: the gate|up GEMM on the concatenation's panels, then the row pass."""
    return fused_rows.silu_mul(panel_gemm(x, pack_panels(w), b, 2 * inter))


@pytest.mark.parametrize(("k", "inter"), SILU_SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_silu_mul_epilogue_is_bit_identical_to_the_unfused_path(k, inter, bias):
    w, b = _rand(2 * inter, k, seed=11), (_rand(2 * inter, seed=12) if bias else None)
    pair = pack_gate_up(w, inter)
    assert pair.numel() == 2 * inter * k
    if inter % 48 == 0:  # no panel straddles gate and up: the same bytes
        assert torch.equal(pair, pack_panels(w))
    rows = ROWS if inter * k > 100_000 else range(130)  # every tile tail on the small ones
    for m in rows:
        x = _rand(m, k, seed=100 + m)
        got = panel_silu_mul(x, pair, b, inter)
        assert got.shape == (m, inter)
        assert got.is_contiguous()
        assert got.dtype == torch.float32
        assert torch.equal(got, _unfused(x, w, b, inter)), m
        assert torch.equal(
            gate_up_gemm(x, pair, b, inter), panel_gemm(x, pack_panels(w), b, 2 * inter)
        )


def test_silu_mul_epilogue_refuses_what_it_does_not_take():
    w = _rand(80, 32, seed=13)
    with pytest.raises(ValueError, match="inter % 16"):
        pack_gate_up(w, 40)  # the row pass takes multiples of 16 only: no bit-exact reference
    with pytest.raises(RuntimeError, match="multiple of 16"):
        panel_silu_mul(_rand(2, 32, seed=14), pack_panels(w), None, 40)
    pair = pack_gate_up(_rand(64, 32, seed=13), 32)
    with pytest.raises(RuntimeError, match="panels"):
        panel_silu_mul(_rand(2, 31, seed=14), pair, None, 32)
    with pytest.raises(RuntimeError, match="bias"):
        panel_silu_mul(_rand(2, 32, seed=14), pair, torch.zeros(32), 32)


def _gate_up(inter, k=96, biases=(True, True)):
    torch.manual_seed(1)
    return [torch.nn.Linear(k, inter, bias=b) for b in biases]


def _reference(linears, x):
    """The unfused float32 path on the linears' current weights (a missing bias of the two as
    zeros, as :class:`PackedLinear` fuses them)."""
    w = torch.cat([lin.weight.detach() for lin in linears])
    if all(lin.bias is None for lin in linears):
        return _unfused(x, w, None, linears[0].out_features)
    b = [torch.zeros(lin.out_features) if lin.bias is None else lin.bias for lin in linears]
    return _unfused(x, w, torch.cat(b).detach(), linears[0].out_features)


@pytest.mark.parametrize("inter", [96, 80, 16])
@pytest.mark.parametrize("biases", [(True, True), (False, True), (False, False)])
def test_gate_up_linear_fuses_only_with_panels(inter, biases):
    linears = _gate_up(inter, biases=biases)
    x = _rand(13, 96, seed=15)
    ref = torch.cat([nnf.linear(x, lin.weight, lin.bias) for lin in linears], -1)
    with torch.no_grad():
        fused = GateUpLinear(*linears, compiled=True)
        assert fused.fused
        assert fused.nbytes == 2 * inter * 96 * 4 + (2 * inter * 4 if any(biases) else 0)
        torch.testing.assert_close(fused(x), ref, atol=1e-5, rtol=1e-5)
        assert torch.equal(fused.silu_mul(x), _reference(linears, x))
        for other in (GateUpLinear(*linears), GateUpLinear(*linears, pack=False)):
            assert not other.fused  # oneDNN, F.linear: the GEMM, then the row pass
            assert other.panels is None
            assert torch.equal(other.silu_mul(x), fused_rows.silu_mul(other(x)))


def test_gate_up_linear_falls_back_off_panels(monkeypatch):
    bf16 = GateUpLinear(*[lin.to(torch.bfloat16) for lin in _gate_up(32)], compiled=True)
    assert not bf16.fused
    x = _rand(5, 96, seed=16).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(bf16.silu_mul(x), fused_rows.silu_mul(bf16(x)))
    odd = GateUpLinear(*_gate_up(40), compiled=True)  # panels, but no pair layout
    assert odd.panels is not None
    assert not odd.fused
    with pytest.raises(RuntimeError, match="multiple of 32"):  # the row pass refuses it
        odd.silu_mul(_rand(2, 96, seed=16))
    monkeypatch.setenv("PAGEDKV_CPU_KERNEL_NO_AVX2", "1")
    assert not GateUpLinear(*_gate_up(32), compiled=True).fused
    with pytest.raises(ValueError, match="widths differ"):
        GateUpLinear(torch.nn.Linear(8, 32), torch.nn.Linear(8, 16))


def test_gate_up_linear_is_packed_again_after_a_weight_changes():
    linears = _gate_up(80, k=800)  # two k blocks
    pack = GateUpLinear(*linears, compiled=True)
    x = _rand(9, 800, seed=17)
    with torch.no_grad():
        linears[1].weight.mul_(-3.0)  # an in-place write
        assert pack.stale()
        pack.refresh()
        assert torch.equal(pack.silu_mul(x), _reference(linears, x))
        linears[0].bias = torch.nn.Parameter(torch.randn(80))  # a replaced tensor
        assert pack.stale()
        pack.refresh()
        assert pack.fused
        assert torch.equal(pack.silu_mul(x), _reference(linears, x))
