"""The block manager: sequences, block tables, prefix caching, fork/copy-on-write, swapping.

Pure metadata. Storage executes what the manager decides: after every step, call
``take_copies()`` and run those block copies (copy-on-write) before writing the step's new KV;
``swap_out``/``swap_in`` return the block copies between device and host pools likewise.

Visibility of cached blocks: a full block is findable by other sequences' prefix lookups only
after the caller reports its KV written - ``commit(seq_ids)`` once per step after the forward
(every token of those sequences is computed), or ``register_prefix(seq_id, n)`` for a prefix
(chunked prefill). A sequence freed, truncated, preempted or swapped out before that leaves
nothing in the cache, so no prefix hit can ever read KV that was not written.

Every public method validates its arguments first and either succeeds or raises a
``PagedKVError`` leaving the manager unchanged.
"""

from __future__ import annotations

from array import array
from collections.abc import Hashable, Iterable
from collections.abc import Sequence as Seq
from typing import Any, cast

import numpy as np

from pagedkv.core import validate as check
from pagedkv.core.block_pool import NULL_BLOCK_ID, BlockPool
from pagedkv.core.commit import CommitAPI
from pagedkv.core.config import CacheConfig
from pagedkv.core.decode import DecodeAPI
from pagedkv.core.eviction import EVICTION_POLICIES
from pagedkv.core.hashing import HASH_FUNCTIONS, chain_hashes, root_hash, token_bytes
from pagedkv.core.inspection import InspectionAPI
from pagedkv.core.prefix_api import PrefixCacheAPI
from pagedkv.core.pressure import PressureMonitor
from pagedkv.core.queries import QueryAPI
from pagedkv.core.sequence import SeqStatus, Sequence, SlidingWindow
from pagedkv.core.stats import Counters
from pagedkv.core.swap import SwapAPI
from pagedkv.core.tokens import TokenIds, as_token_array
from pagedkv.errors import DuplicateSequenceError, InvalidArgumentError, OutOfBlocksError


class BlockManager(QueryAPI, CommitAPI, DecodeAPI, PrefixCacheAPI, SwapAPI, InspectionAPI):
    """Paged KV-cache metadata for many sequences over one pool of blocks.

    Admission and freeing live here; read-only queries and exports in ``QueryAPI``; reporting
    KV written (``commit``, ``register_prefix``) in ``CommitAPI``; decode growth, truncate,
    fork and sliding windows in ``DecodeAPI`` (copy-on-write in ``CopyOnWriteAPI``); explicit
    prefix-cache calls in ``PrefixCacheAPI``; preemption and swapping in ``SwapAPI``;
    statistics and ``check_integrity`` in ``InspectionAPI``.
    """

    def __init__(self, config: CacheConfig) -> None:
        check.instance("config", config, CacheConfig)
        self.config = config
        self.block_size = config.block_size
        self.null_block_id = NULL_BLOCK_ID
        policy = EVICTION_POLICIES[config.eviction_policy](config.num_usable_blocks)
        self.pool = BlockPool(config.num_blocks, policy, config.max_cached_blocks)
        self._caching = config.enable_prefix_caching
        self._hash_fn = HASH_FUNCTIONS[config.hash_algo]
        self._watermark_blocks = int(config.watermark * config.num_usable_blocks)
        self._min_cache_tokens = config.min_cache_tokens
        self._seqs: dict[Hashable, Sequence] = {}
        self._num_swapped = 0
        self._unregistered: dict[Hashable, Sequence] = {}
        self._copies: dict[int, int] = {}  # pending copy-on-write: dst -> src (cow.py)
        self._held: list[int] = []  # sources held for the pending copies until take_copies
        self._pins: dict[int, list[int]] = {}
        self._next_pin = 0
        self._clock = 0
        self.counters = Counters()
        self.pressure = PressureMonitor(config.pressure_thresholds, config.num_usable_blocks)
        self._host_free = list(range(config.num_host_blocks - 1, -1, -1))

    # ------------------------------------------------------------ admission
    def _prompt(self, token_ids: TokenIds | None, num_tokens: int | None,
                block_hashes: Seq[Hashable] | None) -> tuple[array[int] | None, int,
                                                             list[Hashable] | None]:
        """Validate ``admit``'s prompt arguments: ``(tokens, n, caller keys)``."""
        if token_ids is not None:
            if num_tokens is not None or block_hashes is not None:
                raise InvalidArgumentError("give token_ids or num_tokens/block_hashes, not both")
            tokens = as_token_array(token_ids)
            return tokens, len(tokens), None
        if num_tokens is None:
            raise InvalidArgumentError(f"need token_ids or num_tokens >= 0, got {num_tokens}")
        n = check.count("num_tokens", num_tokens)
        keys = None if block_hashes is None else check.block_hashes(
            block_hashes, n // self.block_size, n, self.block_size)
        return None, n, keys

    def admit(self, seq_id: Hashable, token_ids: TokenIds | None = None, *,
              num_tokens: int | None = None, block_hashes: Seq[Hashable] | None = None,
              cache_salt: str | bytes | None = None, lora_id: int | str | None = None,
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
        ``[hit, num_tokens)`` at ``slot_mapping(seq_id, hit)``, then reports them written with
        ``commit`` (only then can other sequences hit the new blocks).

        Raises OutOfBlocksError if the prompt's new blocks would dip below the watermark.
        """
        try:
            taken = seq_id in self._seqs
        except TypeError:
            check.seq_id(seq_id)  # names the unhashable id
            raise
        if taken:
            raise DuplicateSequenceError(seq_id)
        tokens, n, keys = self._prompt(token_ids, num_tokens, block_hashes)
        self._check_options(cache_salt, lora_id, priority, sliding_window)
        root: bytes | None = None
        hashes: list[Hashable] = []
        if self._caching:
            if tokens is not None:
                root = root_hash(self._hash_fn, cache_salt, lora_id)
                hashes = self._token_hashes(root, tokens)
            elif keys is not None:
                hashes = keys
        return self._admit_hashed(seq_id, tokens, n, root, hashes, priority, sliding_window,
                                  compute_last_token)

    def _token_hashes(self, root: bytes, tokens: array[int]) -> list[Hashable]:
        """Chained hashes of every full block of a token prompt (``admit``'s cache keys)."""
        bs = self.block_size
        return cast("list[Hashable]", chain_hashes(self._hash_fn, root, token_bytes(tokens),
                                                   bs * 8, len(tokens) // bs))

    def _admit_hashed(self, seq_id: Hashable, tokens: array[int] | None, n: int,
                      root: bytes | None, hashes: list[Hashable], priority: int,
                      sliding_window: SlidingWindow | None, compute_last_token: bool) -> int:
        """``admit`` once its arguments are validated and its prompt hashed (``hashes`` becomes
        the sequence's own list): the prefix lookup, capacity check and allocation."""
        bs, pool = self.block_size, self.pool
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
        seq.num_computed = num_hit * bs  # hit blocks were committed by whoever cached them
        self._seqs[seq_id] = seq
        if caching_seq and len(hashes) > num_hit:
            self._unregistered[seq_id] = seq
        c = self.counters
        c.allocations += need
        if self._caching:
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
                    cache_salt: str | bytes | None = None, lora_id: int | str | None = None,
                    **kwargs: Any) -> np.ndarray:
        """Admit many prompts at once, all or nothing; returns int64 ``[batch]`` hit lengths.

        A prompt cannot hit blocks an earlier prompt of the same batch allocated (they are not
        computed yet). The batch is checked up front against the worst case (every unreferenced
        cached block a prompt would hit evicted by an earlier prompt of the batch), so it may
        refuse a batch that would just fit; then nothing changes. Keyword arguments go to every
        ``admit`` and are validated before the first one."""
        ids = check.seq_ids(seq_ids)
        if len(ids) != len(prompts):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(prompts)} prompts")
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("admit_batch got a sequence id twice")
        for sid in ids:
            if sid in self._seqs:
                raise DuplicateSequenceError(sid)
        self._check_admit_options(cache_salt, lora_id, kwargs)
        token_arrays = [as_token_array(p) for p in prompts]
        bs, pool = self.block_size, self.pool
        cached, ref_cnt = pool.cached, pool.ref_cnt
        root = root_hash(self._hash_fn, cache_salt, lora_id) if self._caching else None
        # Each prompt is hashed once, here; the hashes serve the check and the admission.
        prompt_hashes = [[] if root is None else self._token_hashes(root, t)
                         for t in token_arrays]
        worst = 0
        for tokens, hashes in zip(token_arrays, prompt_hashes, strict=True):
            safe_hits = 0  # leading hits already referenced: no earlier admission can take them
            for h in hashes[:max(0, len(tokens) - 1) // bs]:
                b = cached.get(h)
                if b is None or ref_cnt[b] == 0:
                    break
                safe_hits += 1
            worst += -(-len(tokens) // bs) - safe_hits
        available = pool.num_available - self._watermark_blocks
        if worst > max(available, 0):
            raise OutOfBlocksError(worst, max(available, 0))
        priority, window = kwargs.get("priority", 0), kwargs.get("sliding_window")
        last = kwargs.get("compute_last_token", True)
        hits = [self._admit_hashed(sid, t, len(t), root, h, priority, window, last)
                for sid, t, h in zip(ids, token_arrays, prompt_hashes, strict=True)]
        return np.array(hits, dtype=np.int64)

    @staticmethod
    def _check_options(cache_salt: object, lora_id: object, priority: object,
                       sliding_window: object) -> None:
        """``admit``'s keyword options; the common all-default case costs three tests."""
        if cache_salt is not None or lora_id is not None:
            check.salt(cache_salt)
            check.lora(lora_id)
        if type(priority) is not int:
            check.priority(priority)
        if sliding_window is not None:
            check.instance("sliding_window", sliding_window, SlidingWindow, optional=True)

    def _check_admit_options(self, cache_salt: object, lora_id: object,
                             kwargs: dict[str, Any]) -> None:
        """What ``admit`` would refuse about the shared options, before a batch starts."""
        allowed = {"priority", "sliding_window", "compute_last_token"}
        extra = sorted(set(kwargs) - allowed)
        if extra:
            raise InvalidArgumentError(
                f"admit_batch takes token prompts and {sorted(allowed)}; got {extra}")
        self._check_options(cache_salt, lora_id, kwargs.get("priority", 0),
                            kwargs.get("sliding_window"))

    def _after_alloc(self) -> None:
        used = self.pool.num_used
        if used > self.counters.peak_blocks_used:
            self.counters.peak_blocks_used = used
        self.pressure.update(used)

    # ---------------------------------------------------------- lifecycle
    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence; its blocks go back to the pool. Committed full blocks stay cached
        (findable); uncommitted ones were never cached, so nothing unwritten is left behind."""
        seq = self.seq(seq_id)
        del self._seqs[seq_id]
        self._unregistered.pop(seq_id, None)
        if seq.status is SeqStatus.SWAPPED:
            self._num_swapped -= 1
            self._host_free.extend(b for b in reversed(seq.host_table) if b >= 0)
        else:
            self._release(reversed(seq.block_table))
        used, pressure = self.pool.num_used, self.pressure
        if not pressure.low_bound <= used < pressure.high_bound:
            pressure.update(used)

    def free_batch(self, seq_ids: Iterable[Hashable]) -> None:
        ids = check.seq_ids(seq_ids)
        for s in ids:
            self.seq(s)
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("free_batch got a sequence id twice")
        for s in ids:
            self.free(s)
