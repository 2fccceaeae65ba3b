"""The manager's roles, built from a ``CacheConfig``, and the calls that only read them:
queries, kernel-format exports, victim selection, statistics, snapshots and the integrity check
(plus ``reset_stats`` and ``on_pressure_change``, which touch nothing but counters and
subscribers).

``BlockManager`` (``block_manager.py``) extends this with the calls that change blocks and
sequences.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from pagedkv.core import export
from pagedkv.core import validate as check
from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.blocks.copy_on_write import PendingCopies
from pagedkv.core.blocks.host_pool import HostPool
from pagedkv.core.config import CacheConfig
from pagedkv.core.manager import inspection
from pagedkv.core.manager.admission import Admission
from pagedkv.core.manager.pins import PrefixPins
from pagedkv.core.manager.registrar import Registrar
from pagedkv.core.manager.sequence_table import SequenceTable
from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.preemption import PREEMPTION_POLICIES
from pagedkv.core.prefix_cache.eviction import EVICTION_POLICIES
from pagedkv.core.prefix_cache.hashing import HASH_FUNCTIONS
from pagedkv.core.prefix_cache.prefix_cache import PrefixCache
from pagedkv.core.pressure import PressureCallback, PressureLevel, PressureMonitor
from pagedkv.core.seq_state import SeqState, SeqStatus
from pagedkv.core.stats import Counters, ManagerStats
from pagedkv.errors import InvalidArgumentError


class ManagerQueries:
    """Builds the roles (see the package docstring) and answers questions about them."""

    def __init__(self, config: CacheConfig) -> None:
        check.instance("config", config, CacheConfig)
        self.config = config
        self.block_size = bs = config.block_size
        self.null_block_id = NULL_BLOCK_ID
        self.counters = Counters()
        self.pressure = PressureMonitor(config.pressure_thresholds, config.num_usable_blocks)
        policy = EVICTION_POLICIES[config.eviction_policy](config.num_usable_blocks)
        self.prefix_cache = PrefixCache(
            config.num_blocks,
            policy,
            config.max_cached_blocks,
            HASH_FUNCTIONS[config.hash_algo],
            bs,
        )
        self.pool = BlockPool(config.num_blocks, self.prefix_cache)
        self.copies = PendingCopies(self.pool, self.counters)
        self.registrar = Registrar(self.pool)
        self.host_pool = HostPool(config.num_host_blocks)
        self.table = SequenceTable(
            self.pool, self.copies, self.registrar, self.host_pool, self.counters, self.pressure
        )
        self.admission = Admission(
            self.table,
            self.pool,
            self.counters,
            caching=config.enable_prefix_caching,
            watermark_blocks=int(config.watermark * config.num_usable_blocks),
            min_cache_tokens=config.min_cache_tokens,
            hash_algo=config.hash_algo,
        )
        self.pins = PrefixPins(self.pool, self.copies, bs)

    # ------------------------------------------------------------- sequences
    def __contains__(self, seq_id: object) -> bool:
        return check.seq_id(seq_id) in self.table.seqs

    @property
    def seq_ids(self) -> list[Hashable]:
        return list(self.table.seqs)

    def seq(self, seq_id: Hashable) -> SeqState:
        """The internal state of a sequence (read-only by convention)."""
        return self.table.get(seq_id)

    def num_tokens(self, seq_id: Hashable) -> int:
        return self.table.get(seq_id).num_tokens

    def num_computed(self, seq_id: Hashable) -> int:
        """Leading tokens whose KV is reported written (prefix hits, ``commit``,
        ``register_prefix``); ``num_tokens - num_computed`` tokens await the next forward."""
        return self.table.get(seq_id).num_computed

    # ---------------------------------------------------------------- blocks
    @property
    def num_free_blocks(self) -> int:
        """Blocks an allocation can obtain now: free plus evictable cached."""
        return self.pool.num_available

    @property
    def num_used_blocks(self) -> int:
        return self.pool.num_used

    @property
    def num_free_host_blocks(self) -> int:
        return self.host_pool.num_free

    @property
    def num_pending_copies(self) -> int:
        """Copy-on-write copies queued since the last ``take_copies``."""
        return len(self.copies)

    def is_block_writable(self, block_id: int) -> bool:
        """Whether KV in ``block_id`` may be overwritten in place: one holder and not cached
        (cached blocks are immutable, e.g. one made partial again by ``truncate``)."""
        n = self.pool.num_blocks
        if not check.is_int(block_id) or not 0 <= block_id < n:
            raise InvalidArgumentError(f"block_id must be an int in [0, {n}), got {block_id!r}")
        return self.copies.writable(int(block_id))

    def can_admit(self, num_tokens: int) -> bool:
        """Whether a prompt of ``num_tokens`` fits above the watermark with no prefix hit."""
        need = -(-check.count("num_tokens", num_tokens) // self.block_size)
        return need <= self.pool.num_available - self.admission.watermark_blocks

    # --------------------------------------------------------------- exports
    def block_table(self, seq_id: Hashable) -> list[int]:
        """Physical block of each logical block (null block 0 where a window released it)."""
        return list(self.table.running(seq_id).block_table)

    def slot_mapping(self, seq_id: Hashable, start: int = 0, end: int | None = None) -> np.ndarray:
        """int64 ``[end - start]`` slots (``block * block_size + offset``) of a token range."""
        seq = self.table.running(seq_id)
        start = check.integer("start", start)
        end = seq.num_tokens if end is None else check.integer("end", end)
        if not 0 <= start <= end <= seq.num_tokens:
            raise InvalidArgumentError(
                f"token range [{start}, {end}) outside sequence of {seq.num_tokens} tokens"
            )
        return export.slot_mapping(seq.block_table, self.block_size, start, end)

    def block_table_array(
        self, seq_ids: Iterable[Hashable], max_blocks: int | None = None
    ) -> np.ndarray:
        """int32 ``[batch, max_blocks]`` block tables padded with the null block (vLLM/FA form)."""
        width = check.optional_count("max_blocks", max_blocks)
        return export.block_table_array([self.table.running(s).block_table for s in seq_ids], width)

    def flashinfer_page_table(
        self, seq_ids: Iterable[Hashable]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """FlashInfer ``(indptr int32 [B+1], indices int32 [nnz], last_page_len int32 [B])``."""
        seqs = [self.table.running(s) for s in seq_ids]
        return export.flashinfer_page_table(
            [s.block_table for s in seqs], [s.num_tokens for s in seqs], self.block_size
        )

    def seq_lens(self, seq_ids: Iterable[Hashable]) -> np.ndarray:
        """int32 ``[batch]`` token counts (the ``seq_lens``/``cache_seqlens`` kernels take)."""
        return np.array([self.table.get(s).num_tokens for s in seq_ids], dtype=np.int32)

    def packed_slot_mapping(
        self, seq_ids: Sequence[Hashable], starts: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Slots of tokens ``[starts[i], num_tokens_i)`` of each sequence, packed for a varlen
        (prefill/extend) step: ``(slot_mapping int64 [total], cu_seqlens int32 [batch + 1])``."""
        seqs = [self.table.running(s) for s in seq_ids]
        if len(starts) != len(seqs):
            raise InvalidArgumentError(f"{len(seqs)} sequences but {len(starts)} starts")
        parts = [self.slot_mapping(s.seq_id, st) for s, st in zip(seqs, starts, strict=True)]
        cu = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum([len(p) for p in parts], out=cu[1:])
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return flat, cu

    # ------------------------------------------------------------ preemption
    def blocks_freed_by(self, seq_id: Hashable) -> int:
        """Blocks that would return to the pool if the sequence were freed now."""
        ref_cnt = self.pool.ref_cnt
        return sum(
            1
            for b in self.table.running(seq_id).block_table
            if b != NULL_BLOCK_ID and ref_cnt[b] == 1
        )

    def select_victims(
        self, num_blocks: int, policy: str = "priority", exclude: Iterable[Hashable] = ()
    ) -> list[Hashable]:
        """Running sequences to preempt, in order, until freeing them would return at least
        ``num_blocks`` blocks (all candidates if that is impossible). Changes nothing."""
        num_blocks = check.count("num_blocks", num_blocks)
        if not isinstance(policy, str) or policy not in PREEMPTION_POLICIES:
            raise InvalidArgumentError(
                f"unknown preemption policy {policy!r}; known: {sorted(PREEMPTION_POLICIES)}"
            )
        skip = set(check.seq_ids(exclude))
        candidates = [
            s
            for s in self.table.seqs.values()
            if s.status is SeqStatus.RUNNING and s.seq_id not in skip
        ]
        victims: list[Hashable] = []
        freed = 0
        for seq in PREEMPTION_POLICIES[policy](candidates):
            if freed >= num_blocks:
                break
            victims.append(seq.seq_id)
            freed += self.blocks_freed_by(seq.seq_id)
        return victims

    # -------------------------------------------------------------- pressure
    @property
    def pressure_level(self) -> PressureLevel:
        return self.pressure.level

    def on_pressure_change(self, callback: PressureCallback) -> None:
        """Call ``callback(old_level, new_level)`` whenever the memory-pressure level changes.
        An exception it raises is logged and counted (``stats().pressure_callback_errors``),
        never propagated: the call that changed the level goes on (see ``core/pressure.py``)."""
        if not callable(callback):
            raise InvalidArgumentError(f"callback must be callable, got {callback!r}")
        self.pressure.subscribe(callback)

    # ------------------------------------------------------------ inspection
    def stats(self) -> ManagerStats:
        """Counters plus current usage and internal fragmentation (O(number of sequences))."""
        return inspection.stats(self)

    def check_integrity(self) -> None:
        """Raise ``PagedKVError`` naming the first broken invariant (``inspection.py``)."""
        inspection.check_integrity(self)

    def reset_stats(self) -> None:
        """Zero the counters (peak usage restarts from the current usage)."""
        inspection.reset_stats(self)

    def snapshot(self) -> dict[str, Any]:
        """A deep copy of every role's state, comparable with ``==``: two managers with equal
        snapshots behave the same from here on (tests check that a failed call changes
        nothing by comparing snapshots)."""
        return inspection.snapshot(self)
