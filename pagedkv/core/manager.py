"""The block manager: sequences, block tables, prefix caching, fork/copy-on-write, swapping.

Pure metadata. Storage executes what the manager decides: after every step, call
``take_copies()`` and run those block copies (copy-on-write) before writing the step's new KV;
``swap_out``/``swap_in`` return the block copies between device and host pools likewise.

Visibility of cached blocks (``cache_visibility="allocate"``, the default, as in vLLM): a full
block is findable by other sequences' prefix lookups from the call that allocated it; its KV must
be written in the same step before attention reads it (true for any write-then-attend forward).
With ``"commit"`` a block is findable only after ``register_prefix(seq_id, n)`` reports its KV
written.

Every public method either succeeds or raises a ``PagedKVError`` leaving the manager unchanged.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable
from collections.abc import Sequence as Seq
from typing import Any

import numpy as np

from pagedkv.core import export
from pagedkv.core.block_pool import NULL_BLOCK_ID, BlockPool
from pagedkv.core.config import CacheConfig
from pagedkv.core.decode import DecodeAPI
from pagedkv.core.eviction import EVICTION_POLICIES
from pagedkv.core.hashing import HASH_FUNCTIONS, chain_hashes, root_hash, token_bytes
from pagedkv.core.inspection import InspectionAPI
from pagedkv.core.prefix_api import PrefixCacheAPI
from pagedkv.core.pressure import PressureCallback, PressureLevel, PressureMonitor
from pagedkv.core.sequence import SeqStatus, Sequence, SlidingWindow
from pagedkv.core.stats import Counters
from pagedkv.core.swap import SwapAPI
from pagedkv.core.tokens import TokenIds, as_token_array
from pagedkv.errors import (
    DuplicateSequenceError,
    InvalidArgumentError,
    OutOfBlocksError,
    SequenceStateError,
    UnknownSequenceError,
)


class BlockManager(DecodeAPI, PrefixCacheAPI, SwapAPI, InspectionAPI):
    """Paged KV-cache metadata for many sequences over one pool of blocks.

    Admission, freeing and the read-only queries/exports live here; decode growth, copy-on-write,
    truncate, fork and sliding windows in ``DecodeAPI``; explicit prefix-cache calls in
    ``PrefixCacheAPI``; preemption and swapping in ``SwapAPI``; statistics and
    ``check_integrity`` in ``InspectionAPI``.
    """

    def __init__(self, config: CacheConfig) -> None:
        self.config = config
        self.block_size = config.block_size
        self.null_block_id = NULL_BLOCK_ID
        policy = EVICTION_POLICIES[config.eviction_policy](config.num_usable_blocks)
        self.pool = BlockPool(config.num_blocks, policy, config.max_cached_blocks)
        self._caching = config.enable_prefix_caching
        self._commit_on_alloc = config.cache_visibility == "allocate"
        self._hash_fn = HASH_FUNCTIONS[config.hash_algo]
        self._watermark_blocks = int(config.watermark * config.num_usable_blocks)
        self._min_cache_tokens = config.min_cache_tokens
        self._seqs: dict[Hashable, Sequence] = {}
        self._copies: list[tuple[int, int]] = []
        self._pins: dict[int, list[int]] = {}
        self._next_pin = 0
        self._clock = 0
        self.counters = Counters()
        self.pressure = PressureMonitor(config.pressure_thresholds, config.num_usable_blocks)
        self._host_free = list(range(config.num_host_blocks - 1, -1, -1))

    # ------------------------------------------------------------ queries
    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

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

    def _running(self, seq_id: Hashable) -> Sequence:
        seq = self.seq(seq_id)
        if seq.status is not SeqStatus.RUNNING:
            raise SequenceStateError(f"sequence {seq_id!r} is {seq.status.value}, not running")
        return seq

    def num_tokens(self, seq_id: Hashable) -> int:
        return self.seq(seq_id).num_tokens

    def block_table(self, seq_id: Hashable) -> list[int]:
        """Physical block of each logical block (null block 0 where a window released it)."""
        return list(self._running(seq_id).block_table)

    def slot_mapping(self, seq_id: Hashable, start: int = 0, end: int | None = None) -> np.ndarray:
        """int64 ``[end - start]`` slots (``block * block_size + offset``) of a token range."""
        seq = self._running(seq_id)
        end = seq.num_tokens if end is None else end
        if not 0 <= start <= end <= seq.num_tokens:
            raise InvalidArgumentError(
                f"token range [{start}, {end}) outside sequence of {seq.num_tokens} tokens")
        return export.slot_mapping(seq.block_table, self.block_size, start, end)

    def block_table_array(self, seq_ids: Iterable[Hashable],
                          max_blocks: int | None = None) -> np.ndarray:
        """int32 ``[batch, max_blocks]`` block tables padded with the null block (vLLM/FA form)."""
        return export.block_table_array([self._running(s).block_table for s in seq_ids],
                                        max_blocks)

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
        parts = [self.slot_mapping(s.seq_id, int(st)) for s, st in zip(seqs, starts, strict=True)]
        cu = np.zeros(len(parts) + 1, dtype=np.int32)
        np.cumsum([len(p) for p in parts], out=cu[1:])
        flat = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return flat, cu

    @property
    def pressure_level(self) -> PressureLevel:
        return self.pressure.level

    def on_pressure_change(self, callback: PressureCallback) -> None:
        """Call ``callback(old_level, new_level)`` whenever the memory-pressure level changes."""
        self.pressure.subscribe(callback)

    def can_admit(self, num_tokens: int) -> bool:
        """Whether a prompt of ``num_tokens`` fits above the watermark with no prefix hit."""
        need = -(-num_tokens // self.block_size)
        return need <= self.pool.num_available - self._watermark_blocks

    # ------------------------------------------------------------ admission
    def admit(self, seq_id: Hashable, token_ids: TokenIds | None = None, *,
              num_tokens: int | None = None, block_hashes: Seq[Hashable] | None = None,
              cache_salt: str | None = None, lora_id: int | str | None = None,
              priority: int = 0, sliding_window: SlidingWindow | None = None,
              compute_last_token: bool = True) -> int:
        """Allocate blocks for a new sequence's prompt, reusing its longest cached prefix.

        Give either ``token_ids`` (hashed with the configured chained hash, keyed by
        ``cache_salt`` and ``lora_id``) or ``num_tokens`` plus optional ``block_hashes``: one
        caller-made identity per full block, already unique for the whole prefix (used as cache
        keys as they are; decode blocks of such a sequence are not cached).

        Returns the number of leading prompt tokens whose KV is already cached (a multiple of
        ``block_size``). With ``compute_last_token`` the hit stops short of the last token,
        which an engine must compute to get logits. The caller writes KV for tokens
        ``[hit, num_tokens)`` at ``slot_mapping(seq_id, hit)``.

        Raises OutOfBlocksError if the prompt's new blocks would dip below the watermark.
        """
        if seq_id in self._seqs:
            raise DuplicateSequenceError(seq_id)
        bs = self.block_size
        tokens: array[int] | None = None
        if token_ids is not None:
            if num_tokens is not None or block_hashes is not None:
                raise InvalidArgumentError("give token_ids or num_tokens/block_hashes, not both")
            tokens = as_token_array(token_ids)
            n = len(tokens)
        elif num_tokens is None or num_tokens < 0:
            raise InvalidArgumentError(f"need token_ids or num_tokens >= 0, got {num_tokens}")
        else:
            n = num_tokens
            if block_hashes is not None and len(block_hashes) != n // bs:
                raise InvalidArgumentError(
                    f"block_hashes has {len(block_hashes)} entries; {n} tokens make {n // bs} "
                    f"full blocks of {bs}")
        root: bytes | None = None
        hashes: list[Hashable] = []
        caching = self._caching
        if caching:
            if tokens is not None:
                root = root_hash(self._hash_fn, cache_salt, lora_id)
                hashes = list(chain_hashes(self._hash_fn, root, token_bytes(tokens), bs * 8,
                                           n // bs))
            elif block_hashes is not None:
                hashes = list(block_hashes)
        pool = self.pool
        cached, ref_cnt = pool.cached, pool.ref_cnt
        max_hit = max(0, (n - 1) // bs) if compute_last_token else n // bs
        hit_blocks: list[int] = []
        reclaimed = 0
        get, add_hit = cached.get, hit_blocks.append
        for h in hashes if max_hit >= len(hashes) else hashes[:max_hit]:
            b = get(h)
            if b is None:
                break
            add_hit(b)
            if not ref_cnt[b]:
                reclaimed += 1
        num_hit = len(hit_blocks)
        need = -(-n // bs) - num_hit
        available = pool.num_blocks - 1 - pool.num_used - reclaimed - self._watermark_blocks
        if need > available and need > 0:  # needing no block never fails, reserve or not
            raise OutOfBlocksError(need, max(available, 0))

        if hit_blocks:
            pool.hit_many(hit_blocks)
        self._clock += 1
        hit_blocks += pool.allocate(need)
        caching_seq = (bool(hashes) or root is not None) and n >= self._min_cache_tokens
        seq = Sequence(seq_id, tokens, root, priority, self._clock, sliding_window, hit_blocks,
                       n, hashes, num_hit, caching_seq)
        self._seqs[seq_id] = seq
        if caching_seq and self._commit_on_alloc:
            done = pool.register_chain(hit_blocks, hashes, num_hit, len(hashes))
            if done < len(hashes):
                seq.caching = False
            seq.num_hashed = done
        c = self.counters
        c.allocations += need
        if caching:
            c.prefix_queries += 1
            c.prefix_query_tokens += n
            if num_hit:
                c.prefix_hit_tokens += num_hit * bs
                c.prefix_hit_requests += 1
        if sliding_window is not None:
            # Nothing is released yet: the prompt's own prefill still reads every block in its
            # tokens' windows. Blocks behind the window go from the next append on.
            seq.window_next = sliding_window.first_droppable_block(bs)
        used = pool.num_used
        if used > c.peak_blocks_used:
            c.peak_blocks_used = used
        pressure = self.pressure
        if not pressure.low_bound <= used < pressure.high_bound:
            pressure.update(used)
        return num_hit * bs

    def admit_batch(self, seq_ids: Seq[Hashable], prompts: Seq[TokenIds], *,
                    cache_salt: str | None = None, lora_id: int | str | None = None,
                    **kwargs: Any) -> np.ndarray:
        """Admit many prompts at once, all or nothing; returns int64 ``[batch]`` hit lengths.

        The batch is checked up front against the worst case (every unreferenced cached block a
        prompt would hit evicted by an earlier prompt of the batch), so it may refuse a batch
        that would just fit; then nothing changes. Keyword arguments go to every ``admit``."""
        if len(seq_ids) != len(prompts):
            raise InvalidArgumentError(f"{len(seq_ids)} ids but {len(prompts)} prompts")
        if len(set(seq_ids)) != len(seq_ids):
            raise InvalidArgumentError("admit_batch got a sequence id twice")
        for sid in seq_ids:
            if sid in self._seqs:
                raise DuplicateSequenceError(sid)
        bs, pool = self.block_size, self.pool
        worst = 0
        for prompt in prompts:
            tokens = as_token_array(prompt)
            safe_hits = 0  # leading hits already referenced: no earlier admission can take them
            if self._caching:
                fn = self._hash_fn
                hashes = chain_hashes(fn, root_hash(fn, cache_salt, lora_id),
                                      token_bytes(tokens), bs * 8, max(0, len(tokens) - 1) // bs)
                for h in hashes:
                    b = pool.cached.get(h)
                    if b is None or pool.ref_cnt[b] == 0:
                        break
                    safe_hits += 1
            worst += -(-len(tokens) // bs) - safe_hits
        available = pool.num_available - self._watermark_blocks
        if worst > max(available, 0):
            raise OutOfBlocksError(worst, max(available, 0))
        hits = [self.admit(sid, p, cache_salt=cache_salt, lora_id=lora_id, **kwargs)
                for sid, p in zip(seq_ids, prompts, strict=True)]
        return np.array(hits, dtype=np.int64)

    def _register(self, seq: Sequence, upto: int) -> None:
        """Offer full blocks ``num_hashed .. upto-1`` of ``seq`` to the prefix cache."""
        done = self.pool.register_chain(seq.block_table, seq.block_hashes, seq.num_hashed, upto)
        if done < upto:
            seq.caching = False
        seq.num_hashed = done

    def _after_alloc(self) -> None:
        used = self.pool.num_used
        if used > self.counters.peak_blocks_used:
            self.counters.peak_blocks_used = used
        self.pressure.update(used)

    def _release(self, blocks: Iterable[int]) -> None:
        self.counters.frees += self.pool.release(blocks)

    # ---------------------------------------------------------- lifecycle
    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence; its blocks go back to the pool (cached ones stay findable)."""
        seq = self._seqs.pop(seq_id, None)
        if seq is None:
            raise UnknownSequenceError(seq_id)
        if seq.status is SeqStatus.SWAPPED:
            self._host_free.extend(b for b in reversed(seq.host_table) if b >= 0)
        else:
            self.counters.frees += self.pool.release(reversed(seq.block_table))
        used, pressure = self.pool.num_used, self.pressure
        if not pressure.low_bound <= used < pressure.high_bound:
            pressure.update(used)

    def free_batch(self, seq_ids: Iterable[Hashable]) -> None:
        ids = list(seq_ids)
        for s in ids:
            self.seq(s)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("free_batch got a sequence id twice")
        for s in ids:
            self.free(s)
