"""Per-step attention metadata: everything about the batch that is identical for every layer.

Why a separate object: a forward pass calls attention once per layer; building the gather index,
write rows and masks once per step (not once per layer) is most of the speed of the reference
backend. Host-side copies (numpy) of the lengths let backends branch (decode vs. prefill, mask
needed or not) without device syncs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from pagedkv.errors import InvalidArgumentError, ShapeError

MaskKey = tuple[int, int | None, int]


@dataclass
class AttentionMetadata:
    """A batch of ``B`` sequences; sequence ``b`` has ``seq_lens[b]`` KV tokens of which the last
    ``query_lens[b]`` are this step's queries (packed in order, ``cu_seqlens_q``).

    Attributes (``T = sum(query_lens)``, ``M = max_blocks``):
        block_size: tokens per block.
        query_lens, seq_lens: host int64 ``[B]``.
        block_tables: int64 ``[B, M]`` device tensor, padded with the null block 0.
        slot_mapping: int64 ``[T]`` device tensor, ``-1`` = do not write.
        cu_seqlens_q: int32 ``[B + 1]`` device tensor.
        seq_lens_t: int32 ``[B]`` device tensor.
        gather_blocks: int64 ``[B * nblk]`` physical blocks covering ``max_seq_len`` per sequence.
        kv_rows: int64 ``[2 * T_written]`` rows of ``layer.view(-1, H, D)`` (K rows then V rows).
        write_index: int64 ``[T_written]`` packed tokens that are written, or ``None`` (= all).
        max_block_id: largest block id read or written (host int): backends check it against
            the pool once per call instead of failing inside an index op.
    """

    block_size: int
    query_lens: np.ndarray
    seq_lens: np.ndarray
    block_tables: torch.Tensor
    slot_mapping: torch.Tensor
    cu_seqlens_q: torch.Tensor
    seq_lens_t: torch.Tensor
    gather_blocks: torch.Tensor
    kv_rows: torch.Tensor
    write_index: torch.Tensor | None
    q_pad_index: torch.Tensor | None
    q_unpad_index: torch.Tensor | None
    device: torch.device
    max_block_id: int = 0
    _masks: dict[MaskKey, torch.Tensor | None] = field(default_factory=dict, repr=False)
    _parts: list[tuple[torch.Tensor, AttentionMetadata]] | None = field(default=None, repr=False)
    _parts_done: bool = field(default=False, repr=False)

    @property
    def batch_size(self) -> int:
        """Number of sequences ``B``."""
        return len(self.seq_lens)

    @property
    def num_tokens(self) -> int:
        """Number of packed query tokens ``T``."""
        return int(self.query_lens.sum())

    @property
    def max_query_len(self) -> int:
        """Longest query in the batch (1 for pure decode)."""
        return int(self.query_lens.max())

    @property
    def max_seq_len(self) -> int:
        """Longest KV length in the batch."""
        return int(self.seq_lens.max())

    @property
    def blocks_per_seq(self) -> int:
        """Blocks gathered per sequence (``ceil(max_seq_len / block_size)``)."""
        return -(-self.max_seq_len // self.block_size)

    @classmethod
    def build(
        cls,
        *,
        block_size: int,
        block_tables: Sequence[Sequence[int]] | np.ndarray | torch.Tensor,
        seq_lens: Sequence[int] | np.ndarray,
        query_lens: Sequence[int] | np.ndarray,
        slot_mapping: Sequence[int] | np.ndarray | torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> AttentionMetadata:
        """Validate and precompute a step's metadata.

        Args:
            block_tables: int ``[B, >=ceil(seq_len/block_size)]`` (ragged lists are padded with 0).
            seq_lens: int ``[B]`` total KV length per sequence *including* this step's tokens.
            query_lens: int ``[B]``, ``1 <= query_lens[b] <= seq_lens[b]``.
            slot_mapping: int64 ``[sum(query_lens)]``; default: the slots of the last
                ``query_lens[b]`` positions of each sequence, from its block table.
        """
        dev = torch.device(device)
        if (
            isinstance(block_size, bool)
            or not isinstance(block_size, (int, np.integer))
            or (block_size < 1)
        ):
            raise InvalidArgumentError(f"block_size: expected an int >= 1, got {block_size!r}")
        block_size = int(block_size)
        sl = _int_array(seq_lens, "seq_lens").reshape(-1)
        ql = _int_array(query_lens, "query_lens").reshape(-1)
        if sl.size == 0 or sl.shape != ql.shape:
            raise ShapeError(
                f"seq_lens/query_lens: expected equal non-empty [B], got {list(sl.shape)} and "
                f"{list(ql.shape)}"
            )
        if (ql < 1).any() or (ql > sl).any():
            raise InvalidArgumentError(
                f"query_lens: expected 1 <= query_len <= seq_len, got query_lens={ql.tolist()} "
                f"seq_lens={sl.tolist()}"
            )
        bt = _pad_tables(block_tables, len(sl))
        nblk = -(-int(sl.max()) // block_size)
        need = -(-sl // block_size)
        if bt.shape[1] < need.max():
            raise ShapeError(
                f"block_tables: expected >= {int(need.max())} columns, got {bt.shape[1]}"
            )
        gather = bt[:, :nblk]
        nseq, ntok = len(sl), int(ql.sum())
        cu = np.concatenate([[0], np.cumsum(ql)])
        if slot_mapping is None:
            seq_of = np.repeat(np.arange(nseq), ql)
            pos = np.arange(ntok) - cu[seq_of] + (sl - ql)[seq_of]  # position of each token
            slots = bt[seq_of, pos // block_size] * block_size + pos % block_size
        else:
            slots = _int_array(slot_mapping, "slot_mapping")
            if slots.shape != (ntok,):
                raise ShapeError(f"slot_mapping: expected shape [{ntok}], got {list(slots.shape)}")
            if slots.min() < -1:
                raise InvalidArgumentError(
                    f"slot_mapping: expected slots >= -1 (-1 = skip), got {int(slots.min())}"
                )
        keep = slots >= 0
        kept = slots[keep]
        max_block = max(int(gather.max()), int(kept.max()) // block_size if kept.size else 0)
        rows = (kept // block_size) * (2 * block_size) + kept % block_size
        kv_rows = np.concatenate([rows, rows + block_size])
        write_index = None if keep.all() else np.nonzero(keep)[0]
        max_q = int(ql.max())
        q_pad = q_unpad = None
        if (ql != max_q).any():
            i = np.arange(max_q)[None, :]
            valid = i < ql[:, None]
            q_pad = np.where(valid, cu[:-1, None] + i, 0).reshape(-1)
            q_unpad = (np.arange(nseq)[:, None] * max_q + i)[valid]

        def t(a: np.ndarray | None, dtype: torch.dtype = torch.int64) -> torch.Tensor | None:
            return None if a is None else torch.from_numpy(np.ascontiguousarray(a)).to(dev, dtype)

        return cls(
            block_size=block_size,
            query_lens=ql,
            seq_lens=sl,
            block_tables=torch.from_numpy(bt).to(dev),
            slot_mapping=torch.from_numpy(slots).to(dev),
            cu_seqlens_q=torch.from_numpy(cu).to(dev, torch.int32),
            seq_lens_t=torch.from_numpy(sl).to(dev, torch.int32),
            gather_blocks=torch.from_numpy(np.ascontiguousarray(gather).reshape(-1)).to(dev),
            kv_rows=torch.from_numpy(kv_rows).to(dev),
            write_index=t(write_index),
            q_pad_index=t(q_pad),
            q_unpad_index=t(q_unpad),
            device=dev,
            max_block_id=max_block,
        )

    def padding_parts(self) -> list[tuple[torch.Tensor, AttentionMetadata]] | None:
        """Sub-batches that avoid padding blow-up, or ``None`` when padding is cheap.

        A backend that pads every sequence to ``max_query_len x max_seq_len`` does
        ``B * max_q * max_s`` work for ``sum(q_i * s_i)`` useful. A continuous-batching step
        mixes one-token decodes with long prompt chunks, where that ratio is large; then the
        decodes form one part and each longer query its own. Returns ``(token_index int64
        [T_part], metadata)`` pairs covering every packed token once; computed once per step.
        """
        if self._parts_done:
            return self._parts
        self._parts_done = True
        ql, sl = self.query_lens, self.seq_lens
        padded = len(ql) * int(ql.max()) * int(sl.max())
        if len(ql) == 1 or padded <= 2 * int((ql * sl).sum()):
            return None
        groups = [np.nonzero(ql == 1)[0]] + [np.array([b]) for b in np.nonzero(ql > 1)[0]]
        tables = self.block_tables.cpu().numpy()
        slots = self.slot_mapping.cpu().numpy()
        cu = np.concatenate([[0], np.cumsum(ql)])
        parts = []
        for g in groups:
            if not len(g):
                continue
            tok = np.concatenate([np.arange(cu[b], cu[b + 1]) for b in g])
            sub = AttentionMetadata.build(
                block_size=self.block_size,
                block_tables=tables[g],
                seq_lens=sl[g],
                query_lens=ql[g],
                slot_mapping=slots[tok],
                device=self.device,
            )
            sub._parts_done = True
            parts.append((torch.from_numpy(tok).to(self.device), sub))
        self._parts = parts
        return parts

    def mask(
        self, group: int, sliding_window: int | None = None, sink_tokens: int = 0
    ) -> torch.Tensor | None:
        """Boolean attention mask for the folded-GQA layout, or ``None`` if nothing is masked.

        Returns:
            bool ``[B, 1, group * max_query_len, max_seq_len]`` (``True`` = attend): query ``i``
            of sequence ``b`` sits at position ``p = seq_len - query_len + i`` and sees keys
            ``j <= p`` with ``p - j < sliding_window`` or ``j < sink_tokens``. Padded query rows
            see key 0 only (their output is discarded; this keeps softmax finite).
        """
        key = (group, sliding_window, sink_tokens)
        if key not in self._masks:
            self._masks[key] = self._build_mask(group, sliding_window, sink_tokens)
        return self._masks[key]

    def _build_mask(self, group: int, window: int | None, sink: int) -> torch.Tensor | None:
        ql, sl = self.query_lens, self.seq_lens
        max_q, max_s = int(ql.max()), int(sl.max())
        windowed = window is not None and bool((sl > window).any())
        if max_q == 1 and (sl == max_s).all() and not windowed:
            return None
        i = np.arange(max_q)[None, :]
        qpos = np.where(i < ql[:, None], sl[:, None] - ql[:, None] + i, 0)  # [B, max_q]
        j = np.arange(max_s)[None, None, :]
        allowed = j <= qpos[:, :, None]
        if window is not None:
            allowed &= (qpos[:, :, None] - j < window) | (j < sink)
        m = torch.from_numpy(allowed).to(self.device)[:, None]  # [B, 1, max_q, max_s]
        if max_q > 1 and group > 1:
            nseq = len(sl)
            m = m[:, :, None].expand(nseq, 1, group, max_q, max_s)
            m = m.reshape(nseq, 1, group * max_q, max_s)
        return m


def _int_array(x: object, name: str) -> np.ndarray:
    """``x`` (list, numpy array or tensor) as int64 numpy, one vectorised dtype check.

    Raises :class:`InvalidArgumentError` for floats (not rounded), bools, strings, None, objects
    and unsigned values past int64 (they would wrap to negative)."""
    arr = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
    try:
        arr = np.asarray(arr)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(
            f"{name}: expected integers, got ragged or mixed input ({e})"
        ) from None
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise InvalidArgumentError(f"{name}: expected integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and int(arr.max()) > np.iinfo(np.int64).max:
        raise InvalidArgumentError(f"{name}: expected values < 2**63, got {int(arr.max())}")
    return arr.astype(np.int64)


def _pad_tables(
    tables: Sequence[Sequence[int]] | np.ndarray | torch.Tensor, batch: int
) -> np.ndarray:
    """Block tables as int64 ``[B, M]`` numpy, ragged rows padded with the null block 0."""
    if isinstance(tables, (torch.Tensor, np.ndarray)):
        arr = _int_array(tables, "block_tables")
    else:
        rows = [_int_array(r, "block_tables").reshape(-1) for r in tables]
        width = max((len(r) for r in rows), default=0)
        arr = np.zeros((len(rows), width), dtype=np.int64)
        for b, r in enumerate(rows):
            arr[b, : len(r)] = r
    if arr.ndim != 2 or arr.shape[0] != batch:
        raise ShapeError(f"block_tables: expected shape [{batch}, M], got {list(arr.shape)}")
    if arr.size and arr.min() < 0:
        raise InvalidArgumentError(f"block_tables: expected ids >= 0, got {int(arr.min())}")
    return arr
