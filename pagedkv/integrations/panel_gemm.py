"""The native forward's float32 projections through the compiled kernel's panel GEMM.

Why: on 2 threads of this project's CPU (AVX-512, float32, weights streamed from DRAM as in a
step) oneDNN's packed GEMM ran the projections of a decode step well under the cores' peak,
and the panel GEMM (C++ in :mod:`pagedkv.attention._cpu_gemm_src`) runs them near it
(``python benchmarks/gemm_projections.py``, SmolLM2's shapes, GFLOP/s oneDNN against panels):
``[48, 576] x [576, 960]`` 153 against 205, ``[48, 576] x [576, 576]`` 104 against 177,
``[48, 576] x [576, 3072]`` 191 against 209, ``[48, 1536] x [1536, 576]`` 155 against 206,
``[8, 576] x [576, 3072]`` 105 against 175; level (within 3%) on 2,048-row prompt chunks.

It is used where it exists: a float32 weight on a CPU with AVX-512, the compiled kernel built
(the attention backend ``"cpu"``, which ``"auto"`` picks on a CPU), the kernel's ISA not forced
down (``PAGEDKV_CPU_KERNEL_NO_AVX2``). Elsewhere :class:`~pagedkv.integrations.packed_linear.
PackedLinear` keeps oneDNN (bfloat16, AVX2-only CPUs) or ``F.linear``.

An MLP's gate and up projections have a second form, :func:`panel_silu_mul`: the same GEMM
with the SiLU-and-multiply in its epilogue, ``silu(x @ Wg.T + bg) * (x @ Wu.T + bu)`` straight
to ``[M, I]`` without writing the ``[M, 2I]`` gate|up output and reading it back, bit for bit
what ``fused_rows.silu_mul(panel_gemm(...))`` gives (one copy of the SiLU code serves both).
Its weight is :func:`pack_gate_up`'s pair layout (gate's panels, then up's), which
:func:`gate_up_gemm` also multiplies without the epilogue.
"""

from __future__ import annotations

import torch

from pagedkv.attention.cpu_kernel import isa_flag, load_kernel

PANEL = 48  # columns a panel (``panels::kPanel`` in the C++ source)
_NO_BIAS = torch.empty(0)


def panel_gemm_usable(weight: torch.Tensor) -> bool:
    """Whether ``weight`` (``[N, K]``) can be packed in panels here: a float32 CPU tensor, the
    compiled kernel loadable (this builds it on first use) and the CPU with AVX-512."""
    if weight.device.type != "cpu" or weight.dtype != torch.float32 or isa_flag() != 1:
        return False
    return bool(load_kernel().cpu_has_avx512())


def pack_panels(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` ``[N, K]`` float32 → the flat panel layout (float32, ``ceil(N / 16) * 16 * K``
    elements; see :mod:`pagedkv.attention._cpu_gemm_src`)."""
    packed: torch.Tensor = load_kernel().pack_panels(weight.detach().contiguous())
    return packed


def panel_gemm(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, n: int
) -> torch.Tensor:
    """``x`` ``[M, K]`` float32 → ``x @ W.T (+ bias)`` ``[M, n]`` float32 (a new contiguous
    tensor), for ``packed = pack_panels(W)`` of a ``W`` ``[n, K]``; ``bias`` ``[n]`` or None."""
    out: torch.Tensor = load_kernel().panel_gemm(
        x.contiguous(), packed, _NO_BIAS if bias is None else bias.detach().contiguous(), int(n)
    )
    return out


def pack_gate_up(weight: torch.Tensor, inter: int) -> torch.Tensor:
    """The pair layout of a gate|up weight ``[2 * inter, K]`` float32 (``inter`` a multiple of
    16): ``pack_panels(gate)`` then ``pack_panels(up)``, ``2 * inter * K`` float32, so panel
    ``q`` of both covers the same columns (what :func:`panel_silu_mul` needs). When ``inter``
    is a multiple of 48 this is exactly ``pack_panels(weight)``: no panel straddles the two."""
    if inter % 16 or weight.shape[0] != 2 * inter:
        raise ValueError(
            f"pack_gate_up: need [2 * inter, K] with inter % 16 == 0, got "
            f"{list(weight.shape)} and inter={inter}"
        )
    return torch.cat([pack_panels(weight[:inter]), pack_panels(weight[inter:])])


def gate_up_gemm(
    x: torch.Tensor, pair: torch.Tensor, bias: torch.Tensor | None, inter: int
) -> torch.Tensor:
    """``x`` ``[M, K]`` float32 → ``x @ W.T (+ bias)`` ``[M, 2 * inter]`` float32 for
    ``pair = pack_gate_up(W, inter)`` (``bias`` ``[2 * inter]`` or None): one
    :func:`panel_gemm` when the pair layout is ``pack_panels(W)`` (``inter % 48 == 0``), else
    one per half, concatenated. The values are the same either way (an output's sum depends
    on ``K`` only)."""
    if inter % PANEL == 0:
        return panel_gemm(x, pair, bias, 2 * inter)
    half = inter * x.shape[1]
    gb, ub = (None, None) if bias is None else (bias[:inter], bias[inter:])
    gate = panel_gemm(x, pair[:half], gb, inter)
    return torch.cat([gate, panel_gemm(x, pair[half:], ub, inter)], -1)


def panel_silu_mul(
    x: torch.Tensor, pair: torch.Tensor, bias: torch.Tensor | None, inter: int
) -> torch.Tensor:
    """``x`` ``[M, K]`` float32 → ``silu(x @ Wg.T + bg) * (x @ Wu.T + bu)`` ``[M, inter]``
    float32 (a new contiguous tensor) for ``pair = pack_gate_up(W, inter)`` of ``W = [Wg; Wu]``
    and ``bias = [bg; bu]`` ``[2 * inter]`` or None. Bit-identical to
    ``fused_rows.silu_mul(gate_up_gemm(x, pair, bias, inter))``; ``inter`` not a multiple of
    16 is refused (RuntimeError), as ``fused_rows.silu_mul`` refuses it."""
    out: torch.Tensor = load_kernel().panel_silu_mul(
        x.contiguous(), pair, _NO_BIAS if bias is None else bias.detach().contiguous(), int(inter)
    )
    return out
