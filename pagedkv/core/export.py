"""Block tables in the forms attention kernels take.

* vLLM / FlashAttention: ``block_table`` int32 ``[batch, max_blocks]``, padded with the null
  block id 0, and ``slot_mapping`` int64 ``[num_tokens]`` with ``-1`` for tokens not to write.
* FlashInfer: ``paged_kv_indptr`` int32 ``[batch + 1]``, ``paged_kv_indices`` int32 ``[nnz]`` and
  ``paged_kv_last_page_len`` int32 ``[batch]`` (in ``1 .. block_size``; 0 for an empty sequence).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pagedkv.errors import InvalidArgumentError

PAD_SLOT_ID = -1


def _pad_rows(
    rows: Sequence[Sequence[int]] | Sequence[np.ndarray],
    width: int | None,
    pad: int,
    dtype: type[np.integer],
    what: str,
) -> np.ndarray:
    """Stack ragged integer rows into ``[len(rows), width]`` of ``dtype`` padded with ``pad``."""
    longest = max((len(r) for r in rows), default=0)
    width = longest if width is None else width
    if longest > width:
        raise InvalidArgumentError(f"a {what} has {longest} entries > width {width}")
    out = np.full((len(rows), width), pad, dtype=dtype)
    for i in range(len(rows)):
        row = rows[i]
        out[i, : len(row)] = row
    return out


def block_table_array(
    tables: Sequence[Sequence[int]], max_blocks: int | None = None, pad_id: int = 0
) -> np.ndarray:
    """Stack block tables into int32 ``[len(tables), max_blocks]`` padded with ``pad_id``."""
    return _pad_rows(tables, max_blocks, pad_id, np.int32, "block table")


def slot_mapping(table: Sequence[int], block_size: int, start: int, end: int) -> np.ndarray:
    """int64 ``[end - start]`` slots of positions ``start .. end-1``:
    ``table[p // block_size] * block_size + p % block_size``, or -1 where the block is the null
    block (released by a sliding window)."""
    pos = np.arange(start, end, dtype=np.int64)
    blocks = np.asarray(table, dtype=np.int64)[pos // block_size]
    slots = blocks * block_size + pos % block_size
    slots[blocks == 0] = PAD_SLOT_ID
    return slots


def pad_slot_mappings(mappings: Sequence[np.ndarray], width: int | None = None) -> np.ndarray:
    """Stack int64 slot mappings into ``[batch, width]`` padded with -1."""
    return _pad_rows(mappings, width, PAD_SLOT_ID, np.int64, "slot mapping")


def flashinfer_page_table(
    tables: Sequence[Sequence[int]], num_tokens: Sequence[int], block_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """FlashInfer's CSR page table: ``(indptr [B+1], indices [nnz], last_page_len [B])``, int32.
    Only the blocks holding tokens are listed."""
    used = [-(-n // block_size) for n in num_tokens]
    indptr = np.zeros(len(tables) + 1, dtype=np.int32)
    np.cumsum(used, out=indptr[1:])
    indices = np.fromiter(
        (b for t, u in zip(tables, used, strict=True) for b in t[:u]),
        dtype=np.int32,
        count=int(indptr[-1]),
    )
    last = np.array([(n - 1) % block_size + 1 if n else 0 for n in num_tokens], dtype=np.int32)
    return indptr, indices, last
