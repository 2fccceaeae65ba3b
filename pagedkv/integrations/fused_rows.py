"""Fused row operations of the native Llama forward, from the compiled CPU kernel.

RMSNorm (optionally after adding the residual), SiLU-and-multiply and RoPE, each one pass over
a row instead of several torch ops (C++ in :mod:`pagedkv.attention._cpu_rows_src`). The native
forward uses them when :func:`fused_rows_apply` says so (float32/bfloat16 CPU tensors of
sizes the kernel takes, the kernel built); otherwise it runs the torch ops, which compute the
same values up to float32 rounding.
"""

from __future__ import annotations

from typing import Any

import torch

from pagedkv.attention.cpu_kernel import isa_flag, load_kernel

_NONE = torch.empty(0)
_OPS = {"rms_norm": 0, "add_rms_norm": 1, "silu_mul": 2, "rope": 3}


def _run(op: str, a: torch.Tensor, b: Any, w: Any, out: Any, eps: float, heads: int) -> None:
    load_kernel().fused_rows(
        _OPS[op],
        a,
        _NONE if b is None else b,
        _NONE if w is None else w,
        _NONE if out is None else out,
        float(eps),
        int(heads),
        isa_flag(),
    )


def fused_rows_apply(
    hidden: torch.Tensor, intermediate: int, head_dim: int, num_qk_heads: int
) -> bool:
    """Whether the fused ops take a model with these sizes whose activations look like
    ``hidden`` (``[T, H]``): CPU, float32 or bfloat16, ``H`` and ``intermediate`` multiples of
    16, ``head_dim`` 32/64/128/256."""
    return (
        hidden.device.type == "cpu"
        and hidden.dtype in (torch.float32, torch.bfloat16)
        and hidden.shape[-1] % 16 == 0
        and intermediate % 16 == 0
        and head_dim in (32, 64, 128, 256)
        and num_qk_heads > 0
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``LlamaRMSNorm`` of ``x`` ``[T, H]`` (float32 statistics; ``weight`` ``[H]``, x's
    dtype) → a new ``[T, H]``."""
    out = torch.empty_like(x)
    _run("rms_norm", x, None, weight, out, eps, 0)
    return out


def add_rms_norm(
    h: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """``h += residual`` in place (``[T, H]``, both contiguous), then its RMSNorm (new
    ``[T, H]``)."""
    out = torch.empty_like(h)
    _run("add_rms_norm", h, residual, weight, out, eps, 0)
    return out


def silu_mul(gate_up: torch.Tensor) -> torch.Tensor:
    """``silu(gate) * up`` of the fused gate|up output ``[T, 2I]`` → ``[T, I]``."""
    out = torch.empty(
        gate_up.shape[0], gate_up.shape[1] // 2, dtype=gate_up.dtype, device=gate_up.device
    )
    _run("silu_mul", gate_up, None, None, out, 0.0, 0)
    return out


def rope_(qkv: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor, heads: int) -> None:
    """RoPE in place on the first ``heads`` heads of each row of ``qkv`` (``[T, W]``, unit
    column stride; cos and the signed sin ``[T, D]`` contiguous, qkv's dtype):
    ``x * cos + roll(x, D/2) * signed_sin``, i.e. ``x * cos + rotate_half(x) * sin``."""
    _run("rope", qkv, cos, signed_sin, None, 0.0, heads)
