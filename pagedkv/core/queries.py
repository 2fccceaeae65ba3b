"""Read-only queries and kernel-format exports of the manager's state."""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from collections.abc import Sequence as Seq

import numpy as np

from pagedkv.core import export
from pagedkv.core import validate as check
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.pressure import PressureCallback, PressureLevel
from pagedkv.core.sequence import SeqStatus, Sequence
from pagedkv.errors import InvalidArgumentError, SequenceStateError, UnknownSequenceError


class QueryAPI(ManagerState):
    """Mixin of ``BlockManager``: nothing here changes state."""

    def __contains__(self, seq_id: object) -> bool:
        return check.seq_id(seq_id) in self._seqs

    @property
    def seq_ids(self) -> list[Hashable]:
        return list(self._seqs)

    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can obtain now: free plus evictable cached."""
        return self.pool.num_available

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used

    @property
    def num_free_host_blocks(self) -> int:
        return len(self._host_free)

    def seq(self, seq_id: Hashable) -> Sequence:
        """The internal state of a sequence (read-only by convention)."""
        try:
            return self._seqs[seq_id]
        except KeyError:
            raise UnknownSequenceError(seq_id) from None
        except TypeError:
            check.seq_id(seq_id)
            raise

    def _running(self, seq_id: Hashable) -> Sequence:
        seq = self.seq(seq_id)
        if seq.status is not SeqStatus.RUNNING:
            raise SequenceStateError(f"sequence {seq_id!r} is {seq.status.value}, not running")
        return seq

    def num_tokens(self, seq_id: Hashable) -> int:
        return self.seq(seq_id).num_tokens

    def num_computed(self, seq_id: Hashable) -> int:
        """Leading tokens whose KV is reported written (prefix hits, ``commit``,
        ``register_prefix``); ``num_tokens - num_computed`` tokens await the next forward."""
        return self.seq(seq_id).num_computed

    def block_table(self, seq_id: Hashable) -> list[int]:
        """Physical block of each logical block (null block 0 where a window released it)."""
        return list(self._running(seq_id).block_table)

    def slot_mapping(self, seq_id: Hashable, start: int = 0, end: int | None = None) -> np.ndarray:
        """int64 ``[end - start]`` slots (``block * block_size + offset``) of a token range."""
        seq = self._running(seq_id)
        start = check.integer("start", start)
        end = seq.num_tokens if end is None else check.integer("end", end)
        if not 0 <= start <= end <= seq.num_tokens:
            raise InvalidArgumentError(
                f"token range [{start}, {end}) outside sequence of {seq.num_tokens} tokens")
        return export.slot_mapping(seq.block_table, self.block_size, start, end)

    def block_table_array(self, seq_ids: Iterable[Hashable],
                          max_blocks: int | None = None) -> np.ndarray:
        """int32 ``[batch, max_blocks]`` block tables padded with the null block (vLLM/FA form)."""
        width = check.optional_count("max_blocks", max_blocks)
        return export.block_table_array([self._running(s).block_table for s in seq_ids], width)

    def flashinfer_page_table(self, seq_ids: Iterable[Hashable]
                              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FlashInfer ``(indptr int32 [B+1], indices int32 [nnz], last_page_len int32 [B])``."""
        seqs = [self._running(s) for s in seq_ids]
        return export.flashinfer_page_table([s.block_table for s in seqs],
                                            [s.num_tokens for s in seqs], self.block_size)

    def seq_lens(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """int32 ``[batch]`` token counts (the ``seq_lens``/``cache_seqlens`` kernels take)."""
        return np.array([self.seq(s).num_tokens for s in seq_ids], dtype=np.int32)

    def packed_slot_mapping(self, seq_ids: Seq[Hashable], starts: Seq[int] | np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
        """Slots of tokens ``[starts[i], num_tokens_i)`` of each sequence, packed for a varlen
        (prefill/extend) step: ``(slot_mapping int64 [total], cu_seqlens int32 [batch + 1])``."""
        seqs = [self._running(s) for s in seq_ids]
        if len(starts) != len(seqs):
            raise InvalidArgumentError(f"{len(seqs)} sequences but {len(starts)} starts")
        parts = [self.slot_mapping(s.seq_id, st) for s, st in zip(seqs, starts, strict=True)]
        cu = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum([len(p) for p in parts], out=cu[1:])
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return flat, cu

    @property
    def pressure_level(self) -> PressureLevel:
        return self.pressure.level

    def on_pressure_change(self, callback: PressureCallback) -> None:
        """Call ``callback(old_level, new_level)`` whenever the memory-pressure level changes."""
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        self.pressure.subscribe(callback)

    def can_admit(self, num_tokens: int) -> bool:
        """Whether a prompt of ``num_tokens`` fits above the watermark with no prefix hit."""
        need = -(-check.count("num_tokens", num_tokens) // self.block_size)
        return need <= self.pool.num_available - self._watermark_blocks
