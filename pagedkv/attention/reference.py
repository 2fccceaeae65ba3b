"""Pure-torch paged attention (the reference backend, used on CPU).

How: gather each sequence's blocks with one ``index_select`` per K/V into a preallocated
workspace (``[B, nblk*block_size, H_kv, D]``), then run one batched
``scaled_dot_product_attention`` with the query heads folded onto their KV head (GQA without
repeating K/V) and a boolean mask only when one is needed (ragged lengths, prefill causality,
sliding window). Decode and prefill/extend are the same code path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as nnf

from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.attention.registry import register_attention_backend
from pagedkv.errors import ShapeError


class _Workspace:
    """Grow-only scratch buffers, one per (device, dtype, slot), so decode steps do not pay for
    allocating (and page-faulting) fresh multi-MB gather buffers every layer."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def get(self, numel: int, dtype: torch.dtype, device: torch.device, slot: int) -> torch.Tensor:
        """A flat buffer of at least ``numel`` elements (contents undefined)."""
        key = (device, dtype, slot)
        buf = self._bufs.get(key)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            self._bufs[key] = buf
        return buf[:numel]

    def clear(self) -> None:
        """Release all buffers."""
        self._bufs.clear()


@register_attention_backend("torch", "reference")
class TorchReferenceBackend:
    """Reference backend: correct on every device/dtype torch supports."""

    name = "torch"

    def __init__(self) -> None:
        self.workspace = _Workspace()

    def forward(
        self,
        query: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: AttentionMetadata,
        *,
        scale: float | None = None,
        sliding_window: int | None = None,
        sink_tokens: int = 0,
    ) -> torch.Tensor:
        """Causal paged attention; see :class:`pagedkv.attention.registry.AttentionBackend`.

        Args:
            query: ``[T, Hq, D]`` packed queries (``T = metadata.num_tokens``).
            kv_cache: ``[num_blocks, 2, block_size, Hkv, D]``, ``Hq % Hkv == 0``.
        Returns:
            ``[T, Hq, D]`` in ``query.dtype``.
        """
        meta = metadata
        check_attention_inputs(query, kv_cache, meta)
        # Notation: b sequences, hq/hkv heads, d head_dim, g = hq // hkv query heads per KV head.
        _, hq, d = query.shape
        _, _, bs, hkv, _ = kv_cache.shape
        g = hq // hkv
        b, nblk, max_q = meta.batch_size, meta.blocks_per_seq, meta.max_query_len
        max_s = meta.max_seq_len
        span = nblk * bs
        # Gather: [b * nblk, bs, hkv, d] per K/V, viewed as [b, hkv, max_s, d] (no copy).
        kbuf = self.workspace.get(b * span * hkv * d, kv_cache.dtype, kv_cache.device, 0)
        vbuf = self.workspace.get(b * span * hkv * d, kv_cache.dtype, kv_cache.device, 1)
        kbuf = kbuf.view(b * nblk, bs, hkv, d)
        vbuf = vbuf.view(b * nblk, bs, hkv, d)
        torch.index_select(kv_cache[:, 0], 0, meta.gather_blocks, out=kbuf)
        torch.index_select(kv_cache[:, 1], 0, meta.gather_blocks, out=vbuf)
        k = kbuf.view(b, span, hkv, d)[:, :max_s].transpose(1, 2)
        v = vbuf.view(b, span, hkv, d)[:, :max_s].transpose(1, 2)
        # Queries: packed [T, hq, d] -> padded [b, max_q, hq, d] -> folded [b, hkv, g*max_q, d].
        qp = query if meta.q_pad_index is None else query.index_select(0, meta.q_pad_index)
        qf = (
            qp.reshape(b, max_q, hkv, g, d)
            .permute(0, 2, 3, 1, 4)
            .reshape(b, hkv, g * max_q, d)
            .to(kv_cache.dtype)
        )
        mask = meta.mask(g, sliding_window, sink_tokens)
        out = nnf.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=scale)
        out = out.view(b, hkv, g, max_q, d).permute(0, 3, 1, 2, 4).reshape(b * max_q, hq, d)
        if meta.q_unpad_index is not None:
            out = out.index_select(0, meta.q_unpad_index)
        return out.to(query.dtype)


def check_attention_inputs(
    query: torch.Tensor, kv_cache: torch.Tensor, meta: AttentionMetadata
) -> None:
    """Raise :class:`ShapeError` naming expected vs. got for inconsistent attention inputs."""
    if query.dim() != 3:
        raise ShapeError(f"query: expected [T, num_heads, head_dim], got {list(query.shape)}")
    if kv_cache.dim() != 5 or kv_cache.shape[1] != 2:
        raise ShapeError(
            "kv_cache: expected [num_blocks, 2, block_size, num_kv_heads, head_dim], got "
            f"{list(kv_cache.shape)}"
        )
    if query.shape[0] != meta.num_tokens:
        raise ShapeError(f"query: expected {meta.num_tokens} tokens, got {query.shape[0]}")
    if kv_cache.shape[2] != meta.block_size:
        raise ShapeError(
            f"kv_cache: expected block_size {meta.block_size}, got {kv_cache.shape[2]}"
        )
    if query.shape[2] != kv_cache.shape[4]:
        raise ShapeError(f"query: expected head_dim {kv_cache.shape[4]}, got {query.shape[2]}")
    if query.shape[1] % kv_cache.shape[3] != 0:
        raise ShapeError(
            f"query: expected num_heads divisible by num_kv_heads={kv_cache.shape[3]}, got "
            f"{query.shape[1]}"
        )
    if query.device != kv_cache.device or meta.gather_blocks.device != kv_cache.device:
        raise ShapeError(
            f"device: expected query and metadata on {kv_cache.device}, got {query.device} "
            f"and {meta.gather_blocks.device}"
        )


def paged_attention(
    query: torch.Tensor,
    kv_cache: torch.Tensor,
    *,
    block_tables: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
    seq_lens: Sequence[int] | np.ndarray,
    query_lens: Sequence[int] | np.ndarray | None = None,
    scale: float | None = None,
    sliding_window: int | None = None,
    sink_tokens: int = 0,
    backend: str = "torch",
) -> torch.Tensor:
    """One-shot convenience: build metadata and run a backend.

    Decode: ``query`` ``[B, Hq, D]`` with ``query_lens`` omitted (one token per sequence).
    Prefill/extend: ``query`` ``[T, Hq, D]`` packed, ``query_lens`` int ``[B]`` (the last
    ``query_lens[b]`` of ``seq_lens[b]`` positions; earlier positions are the cached prefix).
    ``kv_cache``: ``[num_blocks, 2, block_size, Hkv, D]``. Returns ``[T, Hq, D]``.
    """
    from pagedkv.attention.registry import get_attention_backend

    if kv_cache.dim() != 5:
        raise ShapeError(
            "kv_cache: expected [num_blocks, 2, block_size, num_kv_heads, head_dim], got "
            f"{list(kv_cache.shape)}"
        )
    sl = np.asarray(seq_lens, dtype=np.int64)
    ql = np.ones_like(sl) if query_lens is None else np.asarray(query_lens, dtype=np.int64)
    meta = AttentionMetadata.build(
        block_size=int(kv_cache.shape[2]),
        block_tables=block_tables,
        seq_lens=sl,
        query_lens=ql,
        device=kv_cache.device,
    )
    return get_attention_backend(backend).forward(
        query,
        kv_cache,
        meta,
        scale=scale,
        sliding_window=sliding_window,
        sink_tokens=sink_tokens,
    )
