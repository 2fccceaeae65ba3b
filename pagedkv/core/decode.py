"""Growing and reshaping running sequences: decode appends, sliding-window release, truncate
(speculative rollback) and fork.

Full blocks are immutable. Writing into a partial last block that is shared or cached first gives
the sequence a private copy (``cow.py``). Appended tokens are not computed yet: a block they
fill is hashed here (so ``commit`` stays O(1)) but becomes findable only once the caller
commits it.
"""

from __future__ import annotations

from collections.abc import Hashable
from collections.abc import Sequence as Seq
from typing import cast

import numpy as np

from pagedkv.core import export
from pagedkv.core import validate as check
from pagedkv.core.block_pool import NULL_BLOCK_ID
from pagedkv.core.cow import CopyOnWriteAPI
from pagedkv.core.export import PAD_SLOT_ID
from pagedkv.core.hashing import token_bytes
from pagedkv.core.sequence import SeqStatus, Sequence
from pagedkv.core.tokens import (
    MAX_TOKEN_ID,
    TokenIds,
    as_token_array,
    batch_token_list,
    few_plain_tokens,
)
from pagedkv.errors import (
    DuplicateSequenceError,
    InvalidArgumentError,
    OutOfBlocksError,
    UnknownSequenceError,
)

_RUNNING = SeqStatus.RUNNING
_FEW = 8  # appends of up to this many tokens compute their slots without numpy
_ONE_SLOT = np.zeros(1, dtype=np.int64)


class DecodeAPI(CopyOnWriteAPI):
    """Mixin of ``BlockManager``."""

    def _seal(self, seq: Sequence) -> None:
        """The sequence's last block just became full: hash it (registration waits for
        ``commit``). Caller-keyed sequences have no hashes past their prompt."""
        if seq.tokens is None or seq.root is None:
            return
        hashes = seq.block_hashes
        full = seq.num_tokens // self.block_size
        while len(hashes) < full:
            i = len(hashes)
            parent = cast(bytes, hashes[i - 1] if i else seq.root)  # token-hashed: bytes
            start = i * self.block_size
            data = token_bytes(seq.tokens[start:start + self.block_size])
            hashes.append(self._hash_fn(parent + data))
        self._unregistered[seq.seq_id] = seq  # registered by the commit after its forward

    def append(self, seq_id: Hashable, token_ids: TokenIds) -> np.ndarray:
        """Append tokens to a running sequence; returns their int64 ``[n]`` slots.

        Allocates blocks as boundaries are crossed and gives the sequence a private copy of a
        shared or cached partial last block (queued in ``take_copies``).

        Hot path (an engine calling it once per sequence per step, like vLLM's
        ``allocate_slots``): a plain ``int`` or a short ``list`` of plain ints is checked with
        int comparisons and its slots computed in Python; only the returned array is numpy.
        Other inputs go through ``as_token_array``/``slot_mapping``; both paths are identical
        in effect (tests/core/test_append_fast_path.py)."""
        try:
            seq = self._seqs[seq_id]
        except (KeyError, TypeError):
            seq = self._running(seq_id)  # raises the unknown-id / unhashable-id error
        if seq.status is not _RUNNING:
            self._running(seq_id)  # raises the state error
        new_tokens: Seq[int] | None = None
        if type(token_ids) is int and 0 <= token_ids <= MAX_TOKEN_ID:
            k, one = 1, token_ids
        else:
            new_tokens = few_plain_tokens(token_ids, _FEW)
            if new_tokens is None:
                new_tokens = as_token_array(token_ids)
            k = len(new_tokens)
            if k == 0:
                return np.empty(0, dtype=np.int64)
        bs, n, table, pool = self.block_size, seq.num_tokens, seq.block_table, self.pool
        new_blocks = -(-(n + k) // bs) - len(table)
        if n % bs:
            b = table[-1]
            # not self._writable(b), inlined (hot path; append_batch inlines it too)
            cow = pool.block_hash[b] is not None or (pool.ref_cnt[b] > 1 and self._shared(b))
        else:
            cow = False
        need = new_blocks + cow
        if need and need > pool.num_available:
            raise OutOfBlocksError(need, pool.num_available)
        if cow:
            self._cow_last(seq)
        if new_blocks:
            table.extend(pool.allocate(new_blocks))
            self.counters.allocations += new_blocks
        tokens = seq.tokens
        if tokens is not None:
            if new_tokens is None:
                tokens.append(one)
            else:
                tokens.extend(new_tokens)
        seq.num_tokens = n + k
        self._clock += 1
        seq.last_used = self._clock
        if seq.caching and (n + k) // bs > n // bs:
            self._seal(seq)
        if seq.window is not None:
            self._slide(seq, n + 1)
        if need or seq.window is not None:
            self._after_alloc()  # else the used-block count did not change, and the peak and
            # pressure level already match it (check_integrity verifies both after every call)
        if k == 1:  # export.slot_mapping's result without building its intermediate arrays
            b = table[n // bs]
            out = _ONE_SLOT.copy()  # ~2x faster than np.array([slot], dtype=np.int64)
            out[0] = b * bs + n % bs if b != NULL_BLOCK_ID else PAD_SLOT_ID
            return out
        if k > _FEW:
            return export.slot_mapping(table, bs, n, n + k)
        return np.array([table[p // bs] * bs + p % bs if table[p // bs] != NULL_BLOCK_ID
                         else PAD_SLOT_ID for p in range(n, n + k)], dtype=np.int64)

    def append_batch(self, seq_ids: Seq[Hashable], token_ids: Seq[int] | np.ndarray
                     ) -> np.ndarray:
        """Append one token to each sequence (the decode hot path): O(1) per sequence, a block
        allocated only at a boundary. ``token_ids``: ``[B]`` ints. Returns int64 ``[B]`` slots."""
        try:
            seqs = list(map(self._seqs.__getitem__, seq_ids))
        except KeyError as exc:
            raise UnknownSequenceError(exc.args[0]) from None
        except TypeError:
            check.seq_ids(seq_ids)  # names the unhashable id
            raise
        toks = batch_token_list(token_ids, len(seqs))
        if len(set(seq_ids)) != len(seqs):
            raise InvalidArgumentError("append_batch got a sequence id twice")
        bs, pool = self.block_size, self.pool
        ref_cnt, block_hash = pool.ref_cnt, pool.block_hash
        shared = self._shared
        need = 0
        running = SeqStatus.RUNNING
        for s in seqs:
            if s.status is not running:
                self._running(s.seq_id)  # raises the state error
            if s.num_tokens % bs == 0:
                need += 1
            else:
                b = s.block_table[-1]
                need += block_hash[b] is not None or (ref_cnt[b] > 1 and shared(b))
        if need > pool.num_available:
            raise OutOfBlocksError(need, pool.num_available)
        self._clock += 1
        clock = self._clock
        allocate_one = pool.allocate_one
        new_blocks = 0
        slots = []
        last = bs - 1
        for s, t in zip(seqs, toks):  # noqa: B905 - lengths checked above
            n = s.num_tokens
            off = n % bs
            if off:
                b = s.block_table[-1]
                if block_hash[b] is not None or (ref_cnt[b] > 1 and shared(b)):
                    b = self._cow_last(s)
            else:
                b = allocate_one()
                s.block_table.append(b)
                new_blocks += 1
            slots.append(b * bs + off)
            s.num_tokens = n + 1
            s.last_used = clock
            tokens = s.tokens
            if tokens is not None:
                tokens.append(t)
            if off == last and s.caching:
                self._seal(s)
            if s.window is not None:
                self._slide(s, n + 1)
        self.counters.allocations += new_blocks
        self._after_alloc()
        return np.array(slots, dtype=np.int64)

    def _slide(self, seq: Sequence, first_new: int) -> None:
        """Release blocks wholly behind the window of the step's first new token (the one at
        position ``first_new - 1``): every token computed in this step may still read back to
        its own window, so only blocks before the earliest of those windows may go."""
        assert seq.window is not None
        end = seq.window.droppable_end(first_new, self.block_size)
        table = seq.block_table
        while seq.window_next < end:
            b = table[seq.window_next]
            table[seq.window_next] = NULL_BLOCK_ID
            self._release((b,))
            seq.window_next += 1

    def _check_window_cut(self, seq: Sequence, end: int, what: str) -> None:
        """Refuse to cut a windowed sequence to ``end`` tokens if a token it keeps, or the next
        token it computes (at position ``end``), would read positions already released: paged
        attention would silently read the null block's zeros as KV."""
        gone = seq.released_needed(end, self.block_size)
        if gone is None:
            return
        if seq.block_table[(end - 1) // self.block_size] == NULL_BLOCK_ID:
            raise InvalidArgumentError(
                f"{what}: token {end - 1} lies in a block the sliding window already released")
        assert seq.window is not None
        raise InvalidArgumentError(
            f"{what}: the next token (position {end}) attends to positions "
            f"{seq.window.first_needed(end)}..{end}, but the sliding window already released "
            f"positions {gone[0]}..{gone[1]}")

    def truncate(self, seq_id: Hashable, num_tokens: int) -> None:
        """Roll a sequence back to its first ``num_tokens`` tokens (rejected speculative tokens).
        Blocks past the new end are released; a cached block made partial is copied on write."""
        seq = self._running(seq_id)
        num_tokens = check.integer("num_tokens", num_tokens)
        bs = self.block_size
        if not 0 <= num_tokens <= seq.num_tokens:
            raise InvalidArgumentError(
                f"cannot truncate a {seq.num_tokens}-token sequence to {num_tokens} tokens")
        self._check_window_cut(seq, num_tokens, f"cannot truncate to {num_tokens} tokens")
        keep = -(-num_tokens // bs)
        tail = seq.block_table[keep:]
        del seq.block_table[keep:]
        self._release(reversed(tail))
        if seq.tokens is not None:
            del seq.tokens[num_tokens:]
        full = num_tokens // bs
        del seq.block_hashes[full:]
        seq.num_hashed = min(seq.num_hashed, full)
        seq.num_tokens = num_tokens
        seq.num_computed = min(seq.num_computed, num_tokens)
        seq.window_next = seq.clamp_window_next(keep, bs)
        self.pressure.update(self.pool.num_used)

    def fork(self, parent_id: Hashable, child_id: Hashable, num_tokens: int | None = None) -> None:
        """Create ``child_id`` sharing the parent's blocks for its first ``num_tokens`` tokens
        (default: all). No data is copied; whichever sequence first writes into a shared partial
        block gets a private copy. ``num_tokens = k * block_size`` shares a known common prefix
        of ``k`` blocks explicitly. The child has computed what the parent has (up to its end)."""
        parent = self._running(parent_id)
        check.seq_id(child_id)
        if child_id in self._seqs:
            raise DuplicateSequenceError(child_id)
        n = parent.num_tokens if num_tokens is None else check.integer("num_tokens", num_tokens)
        if not 0 <= n <= parent.num_tokens:
            raise InvalidArgumentError(
                f"cannot fork {n} tokens from a {parent.num_tokens}-token sequence")
        self._check_window_cut(parent, n, f"cannot fork {n} tokens")
        self._clock += 1
        child = parent.clone(child_id, n, self.block_size, self._clock)
        ref_cnt = self.pool.ref_cnt
        for b in child.block_table:
            if b != NULL_BLOCK_ID:
                ref_cnt[b] += 1
        self._seqs[child_id] = child
        self._track(child)
        self.counters.forks += 1
