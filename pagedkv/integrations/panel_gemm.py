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
"""

from __future__ import annotations

import torch

from pagedkv.attention.cpu_kernel import isa_flag, load_kernel

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
