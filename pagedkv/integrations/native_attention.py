"""Attention of one step of the native forward: prompt rows by the compiled prefill kernel (or
SDPA without it), decodes by the step's paged backend.

Split out of :mod:`pagedkv.integrations.native_llama` (which calls it once per layer).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as nnf

from pagedkv.attention import AttentionMetadata
from pagedkv.attention.cpu_kernel import paged_prefill
from pagedkv.integrations.hf_attention import PagedStep


@dataclass
class ChunkAfterCache:
    """A prompt chunk whose sequence already has KV in the pool (a prefix hit, or a later chunk
    of a chunked prompt): its queries ``[start, end)`` of the packed row attend to the
    sequence's first ``seq_len`` pool rows (gathered from ``blocks``, int64 ``[nb]``) under
    ``mask`` (additive, ``[query_len, seq_len]`` in the model's dtype: 0 where key
    ``j <= cached + i`` is visible, ``-inf`` elsewhere; made once a step, not once a layer)."""

    start: int
    end: int
    blocks: torch.Tensor
    seq_len: int
    mask: torch.Tensor


@dataclass
class PromptRows:
    """Every sequence with prompt rows (``query_len > 1``), for one
    :func:`~pagedkv.attention.cpu_kernel.paged_prefill` call a layer: block tables int64
    ``[P, M]``, seq_lens int32 ``[P]``, their first packed row int64 ``[P]`` and query_lens
    int32 ``[P]``."""

    tables: torch.Tensor
    seq_lens: torch.Tensor
    starts: torch.Tensor
    query_lens: torch.Tensor


@dataclass
class AttentionPlan:
    """How one step's attention is split, decided once per step (every layer reuses it).

    Each group runs without padding to the step's longest sequence:

    - *fresh* sequences (no KV before this step: ``query_len == seq_len > 1``, a prompt without
      a prefix hit) attend only to their own new keys: causal SDPA on the step's K/V, no gather.
    - *chunks after cache* (``1 < query_len < seq_len``) gather their sequence's K/V from the
      pool and run SDPA with the bottom-right causal mask, one sequence at a time.
    - *decodes* (``query_len == 1``) go through the step's paged backend as one sub-batch
      (``decodes``: packed token index int64 ``[B_dec]`` and its metadata).

    With the compiled prefill kernel (``prompts``), fresh prompts and chunks after cache alike
    attend straight over the pool in one call a layer (no gather, no mask); ``fresh`` and
    ``chunks`` are then empty.
    """

    fresh: list[tuple[int, int]]  # [start, end) of each fresh sequence in the packed row
    chunks: list[ChunkAfterCache]
    decodes: tuple[torch.Tensor, AttentionMetadata] | None
    prompts: PromptRows | None = None

    @classmethod
    def build(
        cls, meta: AttentionMetadata, dtype: torch.dtype, *, prompt_kernel: bool = False
    ) -> AttentionPlan | None:
        """The split for ``meta`` (masks in ``dtype``, the queries'), or ``None`` when every
        sequence decodes (one backend call). ``prompt_kernel``: prompt rows go to the compiled
        prefill kernel (the caller checked that it reads this cache)."""
        ql, sl = meta.query_lens, meta.seq_lens
        if (ql == 1).all():
            return None
        cu = np.concatenate([[0], np.cumsum(ql)])
        tables = meta.block_tables.cpu()
        decodes = cls._decodes(meta, tables, cu)
        if prompt_kernel:
            p = np.nonzero(ql > 1)[0]
            prompts = PromptRows(
                tables[p].contiguous(),
                torch.from_numpy(sl[p].astype(np.int32)),
                torch.from_numpy(cu[p].astype(np.int64)),
                torch.from_numpy(ql[p].astype(np.int32)),
            )
            return cls([], [], decodes, prompts)
        is_fresh = (ql == sl) & (ql > 1)
        fresh = [(int(cu[b]), int(cu[b + 1])) for b in np.nonzero(is_fresh)[0]]
        chunks = []
        for b in np.nonzero((ql > 1) & ~is_fresh)[0]:
            n, total = int(ql[b]), int(sl[b])
            keys = torch.arange(total, device=meta.device)
            rows = torch.arange(total - n, total, device=meta.device)
            nb = -(-total // meta.block_size)
            chunks.append(
                ChunkAfterCache(
                    int(cu[b]),
                    int(cu[b + 1]),
                    tables[b, :nb].to(meta.device, torch.int64),
                    total,
                    torch.zeros(n, total, dtype=dtype, device=meta.device).masked_fill_(
                        keys[None, :] > rows[:, None], float("-inf")
                    ),
                )
            )
        return cls(fresh, chunks, decodes)

    @staticmethod
    def _decodes(
        meta: AttentionMetadata, tables: torch.Tensor, cu: np.ndarray
    ) -> tuple[torch.Tensor, AttentionMetadata] | None:
        """The decode rows' packed indices and sub-batch metadata (``None``: no decodes)."""
        ql, sl = meta.query_lens, meta.seq_lens
        dec = np.nonzero(ql == 1)[0]
        if not len(dec):
            return None
        tok = cu[dec]
        sub = AttentionMetadata.build(
            block_size=meta.block_size,
            block_tables=tables.numpy()[dec],
            seq_lens=sl[dec],
            query_lens=ql[dec],
            slot_mapping=meta.slot_mapping.cpu().numpy()[tok],
            device=meta.device,
        )
        return torch.from_numpy(tok).to(meta.device, torch.int64), sub


@dataclass
class LastRows:
    """The last layer's queries cut to the rows whose hidden state reaches ``lm_head``.

    Why: a prompt row's output of the last decoder layer is read by nothing but the final norm
    and ``lm_head``, which run on each sequence's last row only. So in the last layer every row
    still writes its K/V (later steps read them), but only ``index`` (int64 ``[B]``, each
    sequence's last packed row) attends and goes through ``o_proj`` and the MLP: on a prompt
    step of ``T`` rows that is ``T - B`` rows of most of a layer's GEMM work saved (~84% for
    SmolLM2). ``meta`` describes those ``B`` rows as one query each at its sequence's last
    position (``seq_lens`` as the step's), read through the step's paged backend like a decode.

    Only for the compiled CPU backend (``backend``), whose decode kernel reads each sequence's
    blocks in place: a backend that gathers a decode batch padded to its longest sequence (the
    torch reference, what CUDA gets) would pad every short decode to the longest prompt.
    """

    index: torch.Tensor
    meta: AttentionMetadata

    @classmethod
    def build(cls, meta: AttentionMetadata, last: torch.Tensor, backend: str) -> LastRows | None:
        """``None`` when every packed row is some sequence's last (a decode-only step) or
        ``backend`` is not ``"cpu"``."""
        if meta.num_tokens == len(last) or backend != "cpu":
            return None
        sub = AttentionMetadata.build(
            block_size=meta.block_size,
            block_tables=meta.block_tables.cpu().numpy(),
            seq_lens=meta.seq_lens,
            query_lens=np.ones_like(meta.query_lens),
            slot_mapping=meta.slot_mapping.cpu().numpy()[last.cpu().numpy()],
            device=meta.device,
        )
        return cls(last, sub)


def last_rows_attention(
    step: PagedStep, rows: LastRows, layer: int, q: torch.Tensor, scale: float
) -> torch.Tensor:
    """Attention of ``rows`` only (the layer's K/V already written for every row).

    Args:
        q: ``[T, Hq, D]`` every packed row's queries.
    Returns:
        ``[B, Hq, D]`` in ``q.dtype``, for the rows ``rows.index``, in its order.
    """
    kv = step.storage.layer(layer)
    return step.backend.forward(q.index_select(0, rows.index), kv, rows.meta, scale=scale)


def _pool_rows(kv: torch.Tensor, blocks: torch.Tensor, n: int) -> torch.Tensor:
    """The first ``n`` K and V rows of a sequence: ``kv`` ``[N, 2, BS, Hkv, D]``, ``blocks``
    int64 ``[nb]`` → ``[2, 1, Hkv, n, D]`` (SDPA's ``[batch, heads, keys, D]`` for K and V)."""
    g = kv.index_select(0, blocks)  # [nb, 2, BS, Hkv, D]
    g = g.transpose(0, 1).reshape(2, -1, kv.shape[3], kv.shape[4])[:, :n]  # [2, n, Hkv, D]
    return g.transpose(1, 2)[:, None]


def step_attention(
    step: PagedStep,
    plan: AttentionPlan | None,
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
) -> torch.Tensor:
    """Attention of one layer (its K/V already written to the pool).

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` this step's (post-RoPE) keys and values.
    Returns:
        ``[T, Hq, D]`` in ``q.dtype``.
    """
    kv = step.storage.layer(layer)
    if plan is None:
        return step.backend.forward(q, kv, step.metadata, scale=scale)
    out = torch.empty_like(q)
    if plan.prompts is not None:
        rows = plan.prompts
        paged_prefill(
            q.to(kv.dtype),
            kv,
            rows.tables,
            rows.seq_lens,
            rows.starts,
            rows.query_lens,
            out,
            scale=scale,
        )
    for start, end in plan.fresh:
        qs, ks, vs = (x[start:end].transpose(0, 1)[None] for x in (q, k, v))
        o = nnf.scaled_dot_product_attention(
            qs, ks, vs, is_causal=True, scale=scale, enable_gqa=True
        )
        out[start:end] = o[0].transpose(0, 1)
    for c in plan.chunks:
        keys, values = _pool_rows(kv, c.blocks, c.seq_len).to(q.dtype)
        o = nnf.scaled_dot_product_attention(
            q[c.start : c.end].transpose(0, 1)[None],
            keys,
            values,
            attn_mask=c.mask,
            scale=scale,
            enable_gqa=True,
        )
        out[c.start : c.end] = o[0].transpose(0, 1)
    if plan.decodes is not None:
        index, sub = plan.decodes
        out[index] = step.backend.forward(q.index_select(0, index), kv, sub, scale=scale)
    return out
