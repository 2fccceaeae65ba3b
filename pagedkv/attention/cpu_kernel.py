"""Compiled CPU paged attention that reads K/V straight from the block pool.

Why: the reference backend must copy every sequence's blocks into a contiguous workspace before
SDPA can read them, so on CPU it does strictly more memory traffic than contiguous attention.
This kernel walks each sequence's block table and runs flash-decoding (online softmax with a
running max and sum, fp32 accumulation) directly over the paged ``[BS, Hkv, D]`` K/V rows.

How: a small C++ extension (:mod:`pagedkv.attention._cpu_kernel_src`) is compiled with
``torch.utils.cpp_extension.load_inline`` on first use (``-O3 -fopenmp``; an AVX2+FMA copy of the
kernel is chosen at run time when the CPU has it) and cached in torch's extension directory
(``~/.cache/torch_extensions``, or ``$TORCH_EXTENSIONS_DIR``). One task = one sequence and a run
of KV heads, parallelised with ``at::parallel_for``; each task walks its blocks once, every query
head of the task over a block before the next, while the block after it (after the last, the
first of the thread's next task) is prefetched into L2, so DRAM reads overlap the arithmetic.

It also applies logit soft-capping and learned per-head sink logits (an extra term of the
softmax denominator) in the same pass.

A second entry, :func:`paged_prefill` (:mod:`pagedkv.attention._cpu_prefill_src`), runs
causal attention of prompt rows (a fresh prompt, a prompt after a prefix hit, a later chunk)
over the same pool, for plain causal attention in float32 or bfloat16.

The ``"cpu"`` backend uses the decode kernel for decode steps (every ``query_len == 1``), the
prefill kernel for steps with prompt rows where it applies, and delegates everything else
(windows, soft-capping or sinks on prompt rows, other devices, non-contiguous caches) to the
torch reference. Selecting it raises :class:`CpuKernelUnavailableError` if the build fails;
importing pagedkv never builds anything.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from typing import Any

import numpy as np
import torch

from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.attention.reference import (
    TorchReferenceBackend,
    check_attention_inputs,
    check_attention_options,
)
from pagedkv.attention.registry import get_attention_backend, register_attention_backend
from pagedkv.errors import PagedKVError

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_EXT_NAME = "pagedkv_cpu_decode"
_LOCK = threading.Lock()
_STATE: dict[str, Any] = {"module": None, "error": None, "build_s": None}
_NO_SINKS = torch.empty(0, dtype=torch.float32)
log = logging.getLogger("pagedkv.attention")


class CpuKernelUnavailableError(PagedKVError, RuntimeError):
    """The compiled CPU attention kernel could not be built or loaded (no C++ compiler, ninja
    or OpenMP); the ``"torch"`` backend still works."""


def load_kernel(verbose: bool = False) -> Any:
    """Build (first call per machine, ~60 s on 2 cores) or load (cached) the extension module.

    Thread-safe; a failure is remembered, so later calls raise again without rebuilding.
    Raises :class:`CpuKernelUnavailableError` with the compiler's message on failure.
    """
    with _LOCK:
        if _STATE["module"] is not None:
            return _STATE["module"]
        if _STATE["error"] is not None:
            raise CpuKernelUnavailableError(_STATE["error"])
        t0 = time.perf_counter()
        try:
            from torch.utils.cpp_extension import load_inline

            from pagedkv.attention._cpu_kernel_src import cpp_source

            module = load_inline(  # type: ignore[no-untyped-call]
                _EXT_NAME,
                cpp_sources=[cpp_source()],
                functions=[
                    "decode",
                    "prefill",
                    "fused_rows",
                    "cpu_has_avx2",
                    "cpu_has_avx512",
                    "pack_panels",
                    "panel_gemm",
                    "panel_silu_mul",
                ],
                extra_cflags=["-O3", "-fopenmp", "-Wno-psabi"],
                extra_ldflags=["-fopenmp"],
                verbose=verbose,
            )
        except Exception as exc:  # compiler/ninja missing, OpenMP unsupported, ...
            msg = str(exc).strip().splitlines()
            _STATE["error"] = (
                "pagedkv CPU attention kernel: build failed (needs a C++17 compiler with OpenMP "
                "and ninja; use backend='torch' instead): "
                + (" | ".join(msg[-6:]) if msg else type(exc).__name__)
            )
            raise CpuKernelUnavailableError(_STATE["error"]) from exc
        _STATE["module"] = module
        _STATE["build_s"] = time.perf_counter() - t0
        return module


def isa_flag(use_avx2: bool = True) -> int:
    """The kernels' ``isa`` argument: 1 lets them take the AVX-512 / AVX2 copy the CPU has,
    0 forces the baseline copy (``use_avx2=False`` or ``PAGEDKV_CPU_KERNEL_NO_AVX2`` set)."""
    return 1 if use_avx2 and os.environ.get("PAGEDKV_CPU_KERNEL_NO_AVX2") is None else 0


def resolve_backend(name: str, device: torch.device | str = "cpu") -> str:
    """The backend ``name`` stands for on ``device``: ``"auto"`` is the compiled kernel
    (``"cpu"``) for a model on the CPU when the kernel builds here (once per machine, ~60 s,
    then loaded from torch's extension cache), else ``"torch"``; any other name is itself."""
    if name != "auto":
        return name
    if torch.device(device).type != "cpu":
        return "torch"
    if _STATE["module"] is None and _STATE["error"] is None:
        log.info("pagedkv: building the CPU attention kernel (first use on this machine, ~60 s)")
    return "cpu" if kernel_available() else "torch"


def kernel_available() -> bool:
    """Whether the kernel is (or can be) built; builds it on first call."""
    try:
        load_kernel()
    except CpuKernelUnavailableError:
        return False
    return True


def paged_decode(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    *,
    scale: float | None = None,
    sliding_window: int | None = None,
    sink_tokens: int = 0,
    softcap: float | None = None,
    sink_logits: torch.Tensor | None = None,
    heads_per_task: int | None = None,
    use_avx2: bool = True,
) -> torch.Tensor:
    """Decode attention of one query token per sequence over the paged cache (no gather copy).

    Args:
        query: ``[B, Hq, D]`` (query ``b`` sits at position ``seq_lens[b] - 1``).
        kv_cache: contiguous ``[num_blocks, 2, block_size, Hkv, D]``, same dtype as ``query``
            (float32, float16 or bfloat16; accumulation is fp32), ``Hq % Hkv == 0``.
        block_tables: int64 ``[B, M]``, ``M >= ceil(seq_lens[b] / block_size)``; ids must be
            ``< num_blocks`` (checked). Null blocks (id 0) are read like any block; only the
            window mask decides what is visible, exactly as in the reference.
        seq_lens: int32 ``[B]``, each ``>= 1``.
        scale: softmax scale, default ``1 / sqrt(D)``.
        sliding_window, sink_tokens: keys ``j`` with ``p - j < sliding_window or j < sink``.
        softcap: logits become ``softcap * tanh(logits / softcap)`` (``> 0``).
        sink_logits: ``[Hq]`` learned sink logit per query head (extra softmax denominator
            term, GPT-OSS); converted to fp32.
        heads_per_task: KV heads per parallel task (default: all, unless the batch is smaller
            than the thread count).
        use_avx2: allow the AVX2+FMA copy of the kernel (taken only if the CPU supports it and
            ``PAGEDKV_CPU_KERNEL_NO_AVX2`` is unset).
    Returns:
        ``[B, Hq, D]`` in ``query.dtype``.
    """
    mod = load_kernel()
    d, hkv = query.shape[2], kv_cache.shape[3]
    if heads_per_task is None:
        per_seq = -(-torch.get_num_threads() // max(1, query.shape[0]))  # tasks per sequence
        heads_per_task = -(-hkv // min(hkv, per_seq))
    out: torch.Tensor = mod.decode(
        query.contiguous(),
        kv_cache,
        block_tables.contiguous(),
        seq_lens.contiguous(),
        float(1.0 / math.sqrt(d) if scale is None else scale),
        -1 if sliding_window is None else int(sliding_window),
        int(sink_tokens),
        int(heads_per_task),
        isa_flag(use_avx2),
        0.0 if softcap is None else float(softcap),
        _NO_SINKS if sink_logits is None else sink_logits.to(torch.float32).contiguous(),
    )
    return out


PREFILL_HEAD_SIZES = (32, 64, 128, 256)


def prefill_supported(kv_cache: torch.Tensor) -> bool:
    """Whether :func:`paged_prefill` reads this cache (``[N, 2, BS, Hkv, D]``): contiguous, on
    the CPU, float32 or bfloat16, ``D`` in :data:`PREFILL_HEAD_SIZES`. Queries are converted
    to its dtype."""
    return (
        kv_cache.device.type == "cpu"
        and kv_cache.dtype in (torch.float32, torch.bfloat16)
        and kv_cache.shape[-1] in PREFILL_HEAD_SIZES
        and kv_cache.is_contiguous()
    )


def paged_prefill(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    block_tables: torch.Tensor,
    seq_lens: torch.Tensor,
    query_starts: torch.Tensor,
    query_lens: torch.Tensor,
    out: torch.Tensor,
    *,
    scale: float | None = None,
    use_avx2: bool = True,
) -> torch.Tensor:
    """Causal attention of prompt rows straight over the paged cache (no gather, no mask
    tensor): sequence ``s``'s ``query_lens[s]`` rows start at row ``query_starts[s]`` of
    ``query`` and sit at positions ``seq_lens[s] - query_lens[s] .. seq_lens[s] - 1``; each sees
    its sequence's keys up to its own position (a fresh prompt, a prompt after a prefix hit and
    a later chunk alike). Their K/V must already be in the pool.

    Args:
        query: ``[T, Hq, D]`` float32 or bfloat16, ``D`` in :data:`PREFILL_HEAD_SIZES`.
        kv_cache: contiguous ``[num_blocks, 2, block_size, Hkv, D]``, ``query``'s dtype.
        block_tables: int64 ``[P, M]``; seq_lens: int32 ``[P]``; query_starts: int64 ``[P]``;
            query_lens: int32 ``[P]`` with ``1 <= query_lens[s] <= seq_lens[s]`` (checked).
        out: ``[T, Hq, D]`` like ``query``; the rows of the ``P`` sequences are written, the
            others are left as they are.
        scale: softmax scale, default ``1 / sqrt(D)``.
        use_avx2: allow the AVX-512 / AVX2 copies (else the baseline copy).
    Returns:
        ``out``.
    """
    mod = load_kernel()
    d = query.shape[-1]
    result: torch.Tensor = mod.prefill(
        query.contiguous(),
        kv_cache,
        block_tables.contiguous(),
        seq_lens.contiguous(),
        query_starts.contiguous(),
        query_lens.contiguous(),
        out,
        float(1.0 / math.sqrt(d) if scale is None else scale),
        isa_flag(use_avx2),
    )
    return result


@register_attention_backend("cpu")
class CpuDecodeBackend:
    """Compiled kernels on CPU (decode, and plain causal steps with prompt rows); the torch
    reference for everything else.

    Instantiating it (``get_attention_backend("cpu")``) builds or loads the kernel and raises
    :class:`CpuKernelUnavailableError` if that fails.
    """

    name = "cpu"

    def __init__(self) -> None:
        load_kernel()
        ref = get_attention_backend("torch")
        assert isinstance(ref, TorchReferenceBackend)
        self.reference = ref

    @staticmethod
    def supports(
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        sliding_window: int | None = None,
        sink_tokens: int = 0,
        softcap: float | None = None,
        sink_logits: torch.Tensor | None = None,
    ) -> bool:
        """Whether :meth:`forward` takes a compiled path for these inputs: decode steps on a
        contiguous CPU cache (soft-capping and learned sinks included), and steps with prompt
        rows when attention is plain causal (no window, soft-capping or sinks) and
        :func:`prefill_supported`."""
        if metadata.max_query_len > 1:
            plain = sliding_window is None and softcap is None and sink_logits is None
            return plain and query.device.type == "cpu" and prefill_supported(kv_cache)
        return (
            kv_cache.device.type == "cpu"
            and kv_cache.dtype in KERNEL_DTYPES
            and kv_cache.is_contiguous()
            and (sliding_window is None or sliding_window >= 1)
            and sink_tokens >= 0
            and (sink_logits is None or sink_logits.device.type == "cpu")
        )

    def forward(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        *,
        scale: float | None = None,
        sliding_window: int | None = None,
        sink_tokens: int = 0,
        softcap: float | None = None,
        sink_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal paged attention; see :class:`pagedkv.attention.registry.AttentionBackend`.

        Args:
            query: ``[T, Hq, D]`` packed queries (decode: ``T = B``).
            kv_cache: ``[num_blocks, 2, block_size, Hkv, D]``.
            softcap, sink_logits (``[Hq]``): as in the reference backend.
        Returns:
            ``[T, Hq, D]`` in ``query.dtype``.
        """
        if not self.supports(
            query, kv_cache, metadata, sliding_window, sink_tokens, softcap, sink_logits
        ):
            return self.reference.forward(
                query,
                kv_cache,
                metadata,
                scale=scale,
                sliding_window=sliding_window,
                sink_tokens=sink_tokens,
                softcap=softcap,
                sink_logits=sink_logits,
            )
        check_attention_inputs(query, kv_cache, metadata)
        check_attention_options(query, sliding_window, sink_tokens, softcap, sink_logits)
        if metadata.max_query_len > 1:  # every sequence, decodes too, in one prefill call
            q = query.to(kv_cache.dtype).contiguous()
            out = paged_prefill(
                q,
                kv_cache,
                metadata.block_tables,
                metadata.seq_lens_t,
                metadata.cu_seqlens_q[:-1].to(torch.int64),
                torch.from_numpy(metadata.query_lens.astype(np.int32)),
                torch.empty_like(q),
                scale=scale,
            )
            return out.to(query.dtype)
        out = paged_decode(
            query.to(kv_cache.dtype),
            kv_cache,
            metadata.block_tables,
            metadata.seq_lens_t,
            scale=scale,
            sliding_window=sliding_window,
            sink_tokens=sink_tokens,
            softcap=softcap,
            sink_logits=sink_logits,
        )
        return out.to(query.dtype)
