"""Pure-torch paged attention (the reference backend, used on CPU).

How: gather each sequence's blocks with one ``index_select`` per K/V into a preallocated
workspace (``[B, nblk*block_size, H_kv, D]``), then run one batched
``scaled_dot_product_attention`` with the query heads folded onto their KV head (GQA without
repeating K/V) and a boolean mask only when one is needed (ragged lengths, prefill causality,
sliding window). Decode and prefill/extend are the same code path. Logit soft-capping (Gemma2)
and learned per-head sink logits (GPT-OSS) are not expressible in SDPA: with either, the same
folded tensors go through an explicit ``softmax(QK^T)V`` (:func:`explicit_attention`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as nnf

from pagedkv.attention.metadata import AttentionMetadata
from pagedkv.attention.registry import get_attention_backend, register_attention_backend
from pagedkv.errors import InvalidArgumentError, ShapeError


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
            # A normal tensor even when the first call runs under inference mode (an engine
            # step): an inference tensor could not be written later outside inference mode.
            with torch.inference_mode(False):
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
        softcap: float | None = None,
        sink_logits: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Causal paged attention; see :class:`pagedkv.attention.registry.AttentionBackend`.

        Args:
            query: ``[T, Hq, D]`` packed queries (``T = metadata.num_tokens``).
            kv_cache: ``[num_blocks, 2, block_size, Hkv, D]``, ``Hq % Hkv == 0``.
            softcap: logits become ``softcap * tanh(logits / softcap)`` before masking.
            sink_logits: ``[Hq]`` learned sink logit per query head: an extra softmax term
                ``exp(sink_logits[h])`` in the denominator with no value (GPT-OSS ``s_aux``).
        Returns:
            ``[T, Hq, D]`` in ``query.dtype``.
        """
        meta = metadata
        check_attention_inputs(query, kv_cache, meta)
        check_attention_options(query, sliding_window, sink_tokens, softcap, sink_logits)
        parts = meta.padding_parts()
        if parts is not None:  # mixed decode + long prefill: no padding every row to the longest
            out_all = torch.empty_like(query)
            for index, sub in parts:
                out_all[index] = self.forward(
                    query.index_select(0, index),
                    kv_cache,
                    sub,
                    scale=scale,
                    sliding_window=sliding_window,
                    sink_tokens=sink_tokens,
                    softcap=softcap,
                    sink_logits=sink_logits,
                )
            return out_all
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
        if softcap is None and sink_logits is None:
            out = nnf.scaled_dot_product_attention(qf, k, v, attn_mask=mask, scale=scale)
        else:
            sinks = None
            if sink_logits is not None:  # [hq] -> one logit per folded row, [hkv, g * max_q]
                sinks = sink_logits.reshape(hkv, g, 1).expand(hkv, g, max_q).reshape(hkv, -1)
            out = explicit_attention(qf, k, v, mask, scale=scale, softcap=softcap, sinks=sinks)
        out = out.view(b, hkv, g, max_q, d).permute(0, 3, 1, 2, 4).reshape(b * max_q, hq, d)
        if meta.q_unpad_index is not None:
            out = out.index_select(0, meta.q_unpad_index)
        return out.to(query.dtype)


def explicit_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: torch.Tensor | None = None,
) -> torch.Tensor:
    """``softmax(cap(scale * q k^T) masked, [sinks]) v`` computed step by step (as HF's eager
    attention of Gemma2 / GPT-OSS does), all in fp32 (half-precision logits would lose what the
    cap and the sink are about; the compiled kernel accumulates in fp32 too).

    Args:
        q: ``[B, H, R, D]``; k, v: ``[B, H, S, D]``.
        mask: bool broadcastable to ``[B, H, R, S]`` (``True`` = attend) or ``None``.
        sinks: ``[H, R]`` extra logit per row, part of the softmax denominator only.
    Returns:
        ``[B, H, R, D]`` in ``v.dtype``.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    w = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    if softcap is not None:
        w = torch.tanh(w / softcap) * softcap
    if mask is not None:
        w = w.masked_fill(~mask, float("-inf"))
    if sinks is not None:
        col = sinks.to(w.dtype)[None, :, :, None].expand(w.shape[0], -1, -1, 1)
        w = torch.cat([w, col], dim=-1)
    p = torch.softmax(w, dim=-1, dtype=torch.float32)
    if sinks is not None:
        p = p[..., :-1]
    return torch.matmul(p, v.float()).to(v.dtype)


def check_attention_options(
    query: torch.Tensor,
    sliding_window: int | None,
    sink_tokens: int,
    softcap: float | None,
    sink_logits: torch.Tensor | None,
) -> None:
    """Raise :class:`InvalidArgumentError`/:class:`ShapeError` for out-of-range options
    (scalar checks only: cheap enough for every layer call)."""
    if sliding_window is not None and (
        isinstance(sliding_window, bool)
        or not isinstance(sliding_window, int)
        or sliding_window < 1
    ):
        raise InvalidArgumentError(
            f"sliding_window: expected None or an int >= 1, got {sliding_window!r}"
        )
    if isinstance(sink_tokens, bool) or not isinstance(sink_tokens, int) or sink_tokens < 0:
        raise InvalidArgumentError(f"sink_tokens: expected an int >= 0, got {sink_tokens!r}")
    if softcap is not None and (
        isinstance(softcap, bool)
        or not isinstance(softcap, (int, float))
        or not math.isfinite(softcap)
        or softcap <= 0
    ):
        raise InvalidArgumentError(f"softcap: expected None or a float > 0, got {softcap!r}")
    if sink_logits is not None:
        if not isinstance(sink_logits, torch.Tensor) or sink_logits.shape != (query.shape[1],):
            got = list(sink_logits.shape) if isinstance(sink_logits, torch.Tensor) else sink_logits
            raise ShapeError(f"sink_logits: expected shape [{query.shape[1]}], got {got}")
        if not sink_logits.is_floating_point() or sink_logits.device != query.device:
            raise ShapeError(
                f"sink_logits: expected a float tensor on {query.device}, got "
                f"{sink_logits.dtype} on {sink_logits.device}"
            )


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
    if meta.max_block_id >= kv_cache.shape[0]:
        raise InvalidArgumentError(
            f"block_tables/slot_mapping: expected block ids < {kv_cache.shape[0]} (the pool), "
            f"got {meta.max_block_id}"
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
    softcap: float | None = None,
    sink_logits: torch.Tensor | None = None,
    backend: str = "torch",
) -> torch.Tensor:
    """One-shot convenience: build metadata and run a backend.

    Decode: ``query`` ``[B, Hq, D]`` with ``query_lens`` omitted (one token per sequence).
    Prefill/extend: ``query`` ``[T, Hq, D]`` packed, ``query_lens`` int ``[B]`` (the last
    ``query_lens[b]`` of ``seq_lens[b]`` positions; earlier positions are the cached prefix).
    ``kv_cache``: ``[num_blocks, 2, block_size, Hkv, D]``. ``softcap``/``sink_logits`` (``[Hq]``):
    see :meth:`TorchReferenceBackend.forward`. Returns ``[T, Hq, D]``. Bad lengths, tables or
    block ids past the pool raise :class:`InvalidArgumentError`/:class:`ShapeError`.
    """
    if kv_cache.dim() != 5:
        raise ShapeError(
            "kv_cache: expected [num_blocks, 2, block_size, num_kv_heads, head_dim], got "
            f"{list(kv_cache.shape)}"
        )
    ql = np.ones(np.shape(seq_lens), dtype=np.int64) if query_lens is None else query_lens
    meta = AttentionMetadata.build(
        block_size=int(kv_cache.shape[2]),
        block_tables=block_tables,
        seq_lens=seq_lens,
        query_lens=ql,
        device=kv_cache.device,
    )
    extra: dict[str, object] = {}
    if softcap is not None:
        extra["softcap"] = softcap
    if sink_logits is not None:
        extra["sink_logits"] = sink_logits
    return get_attention_backend(backend).forward(
        query,
        kv_cache,
        meta,
        scale=scale,
        sliding_window=sliding_window,
        sink_tokens=sink_tokens,
        **extra,  # type: ignore[arg-type]
    )
