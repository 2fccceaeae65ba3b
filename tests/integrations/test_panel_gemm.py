"""The compiled panel GEMM (float32, AVX-512): ``F.linear``'s values for every row count and
width a tile can end on, a row's result independent of the rows beside it, and
:class:`PackedLinear` taking it only where it applies."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch.nn import functional as nnf

from pagedkv.integrations.packed_linear import PackedLinear
from pagedkv.integrations.panel_gemm import pack_panels, panel_gemm, panel_gemm_usable

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
