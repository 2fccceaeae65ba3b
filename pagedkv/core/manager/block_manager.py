"""``BlockManager``: the public API. Each method validates its arguments, then hands the work
to the roles (see the package docstring); it either succeeds or raises a ``PagedKVError``
leaving the manager unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

import numpy as np

from pagedkv.core import validate as check
from pagedkv.core.manager.pins import PrefixPin
from pagedkv.core.manager.queries import ManagerQueries
from pagedkv.core.manager.sequence_table import FEW_TOKENS
from pagedkv.core.prefix_cache.hashing import HashedPrompt
from pagedkv.core.pressure import blocks_at
from pagedkv.core.seq_state import SeqStatus, SlidingWindow
from pagedkv.core.tokens import (
    MAX_TOKEN_ID,
    TokenIds,
    as_token_array,
    batch_token_list,
    few_plain_tokens,
)
from pagedkv.errors import DuplicateSequenceError, InvalidArgumentError

_RUNNING = SeqStatus.RUNNING


class BlockManager(ManagerQueries):
    """Paged KV-cache metadata for many sequences over one pool of blocks."""

    # --------------------------------------------------------------- prompts
    def hash_prompt(
        self,
        token_ids: TokenIds,
        *,
        cache_salt: str | bytes | None = None,
        lora_id: int | str | None = None,
    ) -> HashedPrompt:
        """Hash a prompt once (vLLM keeps ``block_hashes`` on its request the same way); pass
        the result to ``lookup_prefix`` and ``admit`` instead of the token ids. Its hashes are
        exactly the cache keys ``admit`` gives the prompt's full blocks (process-independent:
        what a shared KV tier is keyed by)."""
        return self.admission.hash_prompt(token_ids, cache_salt, lora_id)

    def lookup_prefix(
        self,
        token_ids: TokenIds | HashedPrompt,
        *,
        cache_salt: str | bytes | None = None,
        lora_id: int | str | None = None,
    ) -> int:
        """Tokens of the longest cached prefix of a prompt (no state change)."""
        p = self.admission.parse(token_ids, cache_salt, lora_id)
        return len(self.prefix_cache.lookup(p.hashes, len(p.hashes))) * self.block_size

    # ------------------------------------------------------------- admission
    def admit(
        self,
        seq_id: Hashable,
        token_ids: TokenIds | HashedPrompt | None = None,
        *,
        num_tokens: int | None = None,
        block_hashes: Sequence[Hashable] | None = None,
        cache_salt: str | bytes | None = None,
        lora_id: int | str | None = None,
        priority: int = 0,
        sliding_window: SlidingWindow | None = None,
        compute_last_token: bool = True,
        partial_block_hit: bool = False,
    ) -> int:
        """Allocate blocks for a new sequence's prompt, reusing its longest cached prefix.

        Give either ``token_ids`` (hashed with the configured chained hash, keyed by
        ``cache_salt`` and ``lora_id``; or a ``HashedPrompt`` from ``hash_prompt``, not hashed
        again) or ``num_tokens`` plus optional ``block_hashes``: one caller-made identity per
        full block, already unique for the whole prefix (used as cache keys as they are; decode
        blocks of such a sequence are not cached).

        Returns the number of leading prompt tokens whose KV is already cached (a multiple of
        ``block_size``). With ``compute_last_token`` the hit stops short of the last token,
        which an engine must compute to get logits. The caller writes KV for tokens
        ``[hit, num_tokens)`` at ``slot_mapping(seq_id, hit)``, then reports them written with
        ``commit`` (only then can other sequences hit the new blocks).

        ``partial_block_hit`` (token prompts): also reuse the first tokens of the cached block
        that continues the hit, when they agree with the prompt's; their rows are copied into
        the sequence's own block (queued in ``take_copies``, which the caller must run before
        writing KV), and the hit need not be a multiple of ``block_size``. Off by default: a
        caller that loads the next blocks itself (a KV tier) must not have them overwritten.

        Raises OutOfBlocksError if the prompt's new blocks would dip below the watermark.
        """
        self._check_new(seq_id)
        if token_ids is not None:
            if num_tokens is not None or block_hashes is not None:
                raise InvalidArgumentError("give token_ids or num_tokens/block_hashes, not both")
            p = self.admission.parse(token_ids, cache_salt, lora_id)
        else:
            p = self.admission.parse_keyed(num_tokens, block_hashes)
            check.salt(cache_salt)
            check.lora(lora_id)
        self.admission.check_options(priority, sliding_window)
        check.instance("partial_block_hit", partial_block_hit, bool)
        return self.admission.admit(
            seq_id, p, priority, sliding_window, compute_last_token, partial_block_hit
        )

    def _check_new(self, seq_id: Hashable) -> None:
        try:
            taken = seq_id in self.table.seqs
        except TypeError:
            check.seq_id(seq_id)  # names the unhashable id
            raise
        if taken:
            raise DuplicateSequenceError(seq_id)

    def admit_batch(
        self,
        seq_ids: Sequence[Hashable],
        prompts: Sequence[TokenIds | HashedPrompt],
        *,
        cache_salt: str | bytes | None = None,
        lora_id: int | str | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """Admit many prompts at once, all or nothing; returns int64 ``[batch]`` hit lengths.

        A prompt cannot hit blocks an earlier prompt of the same batch allocated (they are not
        computed yet). The batch is checked up front against the worst case (every unreferenced
        cached block a prompt would hit evicted by an earlier prompt of the batch), so it may
        refuse a batch that would just fit; then nothing changes. Keyword arguments go to every
        ``admit`` and are validated before the first one; each prompt is hashed once."""
        ids = check.seq_ids(seq_ids)
        if len(ids) != len(prompts):
            raise InvalidArgumentError(f"{len(ids)} ids but {len(prompts)} prompts")
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("admit_batch got a sequence id twice")
        for sid in ids:
            self._check_new(sid)
        check.only_keys("admit_batch", kwargs, ("priority", "sliding_window", "compute_last_token"))
        priority, window = kwargs.get("priority", 0), kwargs.get("sliding_window")
        self.admission.check_options(priority, window)
        parsed = [self.admission.parse(p, cache_salt, lora_id) for p in prompts]
        last = kwargs.get("compute_last_token", True)
        hits = self.admission.admit_batch(ids, parsed, priority, window, last)
        return np.array(hits, dtype=np.int64)

    # ------------------------------------------------------------- lifecycle
    def free(self, seq_id: Hashable) -> None:
        """Drop a sequence; its blocks go back to the pool. Committed full blocks stay cached
        (findable); uncommitted ones were never cached, so nothing unwritten is left behind."""
        self.table.free(self.table.get(seq_id))

    def free_batch(self, seq_ids: Iterable[Hashable]) -> None:
        ids = check.seq_ids(seq_ids)
        seqs = [self.table.get(s) for s in ids]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError("free_batch got a sequence id twice")
        for seq in seqs:
            self.table.free(seq)

    # ---------------------------------------------------------------- decode
    def append(self, seq_id: Hashable, token_ids: TokenIds) -> np.ndarray:
        """Append tokens to a running sequence; returns their int64 ``[n]`` slots.

        Allocates blocks as boundaries are crossed and gives the sequence a private copy of a
        shared or cached partial last block (queued in ``take_copies``).

        Hot path (an engine calling it once per sequence per step, like vLLM's
        ``allocate_slots``): a plain ``int`` or a short ``list`` of plain ints is checked with
        int comparisons; other inputs go through ``as_token_array``. Both paths are identical
        in effect (tests/core/test_append_fast_path.py)."""
        try:
            seq = self.table.seqs[seq_id]
        except (KeyError, TypeError):
            seq = self.table.running(seq_id)  # raises the unknown-id / unhashable-id error
        if seq.status is not _RUNNING:
            self.table.running(seq_id)  # raises the state error
        if type(token_ids) is int and 0 <= token_ids <= MAX_TOKEN_ID:
            return self.table.append(seq, None, token_ids)
        tokens: Sequence[int] | None = few_plain_tokens(token_ids, FEW_TOKENS)
        if tokens is None:
            tokens = as_token_array(token_ids)
        if not tokens:
            return np.empty(0, dtype=np.int64)
        return self.table.append(seq, tokens, 0)

    def append_batch(
        self, seq_ids: Sequence[Hashable], token_ids: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """Append one token to each sequence (the decode hot path): O(1) per sequence, a block
        allocated only at a boundary. ``seq_ids``: a list (any iterable but a ``str``);
        ``token_ids``: ``[B]`` ints. Returns int64 ``[B]`` slots."""
        seqs = self.table.get_many(seq_ids)
        toks = batch_token_list(token_ids, len(seqs))
        if len(set(map(id, seqs))) != len(seqs):
            raise InvalidArgumentError("append_batch got a sequence id twice")
        return self.table.append_batch(seqs, toks)

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Roll a sequence back to its first ``num_tokens`` tokens (rejected speculative tokens).
        Blocks past the new end are released; a cached block made partial is copied on write."""
        seq = self.table.running(seq_id)
        n = check.integer("num_tokens", num_tokens)
        if not 0 <= n <= seq.num_tokens:
            raise InvalidArgumentError(
                f"cannot truncate a {seq.num_tokens}-token sequence to {n} tokens"
            )
        self.table.check_window_cut(seq, n, f"cannot truncate to {n} tokens")
        self.table.truncate(seq, n)

    def fork(self, parent_id: Hashable, child_id: Hashable, num_tokens: int | None = None) -> None:
        """Create ``child_id`` sharing the parent's blocks for its first ``num_tokens`` tokens
        (default: all). No data is copied; whichever sequence first writes into a shared partial
        block gets a private copy. ``num_tokens = k * block_size`` shares a known common prefix
        of ``k`` blocks explicitly. The child has computed what the parent has (up to its end)."""
        parent = self.table.running(parent_id)
        check.seq_id(child_id)
        if child_id in self.table.seqs:
            raise DuplicateSequenceError(child_id)
        n = parent.num_tokens if num_tokens is None else check.integer("num_tokens", num_tokens)
        if not 0 <= n <= parent.num_tokens:
            raise InvalidArgumentError(
                f"cannot fork {n} tokens from a {parent.num_tokens}-token sequence"
            )
        self.table.check_window_cut(parent, n, f"cannot fork {n} tokens")
        self.table.fork(parent, child_id, n)

    def take_copies(self) -> list[tuple[int, int]]:
        """Pending copy-on-write ``(src_block, dst_block)`` pairs; execute them before writing
        this step's KV. The queue is cleared and the sources' holds are released."""
        held = bool(self.copies.held)
        copies = self.copies.take()
        if held:
            self.pressure.update(self.pool.num_used)
        return copies

    # ---------------------------------------------------------------- commit
    def commit(self, seq_ids: Iterable[Hashable]) -> None:
        """Report that every token of these running sequences now has its KV written (call once
        per step, after the forward pass, with the sequences it computed). Each sequence's newly
        full blocks become findable by prefix lookups, except for prompts shorter than
        ``min_cache_tokens``. O(1) per sequence when no block became full. ``seq_ids``: a list
        (any iterable but a ``str``, which is refused). All or nothing: unknown, unhashable or
        swapped-out ids raise before anything changes."""
        self.table.commit(self.table.get_many(seq_ids))

    def register_prefix(self, seq_id: Hashable, num_tokens: int | None = None) -> int:
        """Report the KV of the sequence's first ``num_tokens`` tokens (default: all) written
        and make its full blocks among them findable, regardless of ``min_cache_tokens`` (and
        again after ``reset_prefix_cache`` or an eviction dropped its chain). For chunked
        prefill, call it after each chunk's forward. Returns the leading tokens of the sequence
        now findable in the cache (what ``lookup_prefix`` of its tokens would return, capped at
        its computed tokens)."""
        seq = self.table.running(seq_id)
        n = seq.num_tokens if num_tokens is None else check.integer("num_tokens", num_tokens)
        if not 0 <= n <= seq.num_tokens:
            raise InvalidArgumentError(
                f"cannot register {n} tokens of a {seq.num_tokens}-token sequence"
            )
        seq.num_computed = max(seq.num_computed, n)
        if not self.admission.caching:
            return 0
        return self.registrar.register_prefix(seq, n)

    # ---------------------------------------------------------- prefix cache
    def pin_prefix(
        self,
        token_ids: TokenIds | HashedPrompt,
        *,
        cache_salt: str | bytes | None = None,
        lora_id: int | str | None = None,
    ) -> PrefixPin:
        """Hold the longest cached prefix of a prompt so it is never evicted."""
        p = self.admission.parse(token_ids, cache_salt, lora_id)
        pin = self.pins.pin(self.prefix_cache.lookup(p.hashes, len(p.hashes)))
        self.table.after_alloc()
        return pin

    def unpin_prefix(self, pin: PrefixPin) -> None:
        """Release a pin; its blocks become evictable once no sequence uses them."""
        self.pins.unpin(check.instance("pin", pin, PrefixPin))
        self.pressure.update(self.pool.num_used)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix and drop all pins. Blocks in use stay with their
        sequences (private from now on: ``commit`` no longer offers them, an explicit
        ``register_prefix`` re-registers them); unreferenced cached blocks become free."""
        self.pins.unpin_all()
        self.pool.reset_cache()
        for seq in self.table.seqs.values():
            seq.caching = False
            seq.num_hashed = 0
        self.registrar.tracked.clear()
        self.pressure.update(self.pool.num_used)

    def evict_cached(self, num_blocks: int) -> int:
        """Evict up to ``num_blocks`` unreferenced cached blocks now (leaves first); returns
        exactly how many blocks left the cache for the free list (never more than asked)."""
        return self.pool.evict(check.count("num_blocks", num_blocks))

    def reclaim_to(self, usage: float) -> int:
        """Evict cached blocks until (used + cached) / usable <= ``usage``; returns evictions."""
        usage = check.fraction("usage", usage)
        usable = self.config.num_usable_blocks
        occupied = usable - len(self.pool.free_stack)
        return self.pool.evict(max(0, occupied - math.floor(blocks_at(usage, usable))))

    # ------------------------------------------------------------ preemption
    def preempt(self, seq_id: Hashable, mode: str = "recompute") -> list[tuple[int, int]]:
        """Preempt a running sequence: ``recompute`` frees it (its cached prefix may survive to
        speed up the recompute); ``swap`` moves it to host memory and returns the
        ``(device_block, host_block)`` copies to execute."""
        if not isinstance(mode, str) or mode not in ("recompute", "swap"):
            raise InvalidArgumentError(f"mode must be 'recompute' or 'swap', got {mode!r}")
        seq = self.table.running(seq_id)
        copies = self.table.swap_out(seq) if mode == "swap" else []
        if mode == "recompute":
            self.table.free(seq)
        self.counters.preemptions += 1
        return copies

    def swap_out(self, seq_id: Hashable) -> list[tuple[int, int]]:
        """Move a running sequence's blocks to the host pool. Returns ``(device_block,
        host_block)`` copies; execute them before this step writes any KV.

        A block still waiting for its copy-on-write copy is read from that copy's source
        (held until ``take_copies``), so the copies may run in either order; the pending copy
        itself is dropped once the block has no other user. Uncommitted blocks never entered
        the prefix cache, so the released device blocks leave nothing unwritten behind."""
        return self.table.swap_out(self.table.running(seq_id))

    def swap_in(self, seq_id: Hashable) -> list[tuple[int, int]]:
        """Bring a swapped sequence back into fresh device blocks. Returns ``(host_block,
        device_block)`` copies; execute them before the sequence's next KV write."""
        seq = self.table.get(seq_id)
        if seq.status is not SeqStatus.SWAPPED:
            raise InvalidArgumentError(f"sequence {seq_id!r} is not swapped out")
        return self.table.swap_in(seq)
