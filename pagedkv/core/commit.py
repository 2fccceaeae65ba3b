"""Reporting KV written: ``commit`` and ``register_prefix``, the only ways a block enters the
prefix cache.

A full block becomes findable by other sequences' prefix lookups only after the caller reports
its KV written. Until then a sequence's blocks are private, so a sequence freed, truncated,
preempted or swapped out before its forward leaves nothing in the cache that a later hit could
read as someone else's KV. Each sequence tracks ``num_computed``: its leading tokens with KV
written (prefix hits count; appended tokens do not until reported).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import cast

from pagedkv.core import validate as check
from pagedkv.core.hashing import chain_hashes, token_bytes
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.sequence import SeqStatus, Sequence
from pagedkv.errors import InvalidArgumentError, SequenceStateError, UnknownSequenceError


class CommitAPI(ManagerState):
    """Mixin of ``BlockManager``."""

    def commit(self, seq_ids: Iterable[Hashable]) -> None:
        """Report that every token of these running sequences now has its KV written (call once
        per step, after the forward pass, with the sequences it computed). Each sequence's newly
        full blocks become findable by prefix lookups, except for prompts shorter than
        ``min_cache_tokens``. O(1) per sequence when no block became full. All or nothing:
        unknown or swapped-out ids raise before anything changes."""
        try:
            seqs = list(map(self._seqs.__getitem__, seq_ids))
        except KeyError as exc:
            raise UnknownSequenceError(exc.args[0]) from None
        except TypeError:
            check.seq_ids(seq_ids)  # names the unhashable id (or the non-iterable)
            raise
        if self._num_swapped:  # the decode hot path skips this loop: nothing is swapped out
            for seq in seqs:
                if seq.status is not SeqStatus.RUNNING:
                    raise SequenceStateError(
                        f"sequence {seq.seq_id!r} is {seq.status.value}, not running: its KV "
                        f"is on the host, nothing was computed")
        for seq in seqs:
            seq.num_computed = seq.num_tokens
        if self._unregistered:
            self._register_computed()

    def _track(self, seq: Sequence) -> None:
        """Remember ``seq`` if it has hashed blocks not yet offered to the cache, so ``commit``
        finds them without looking at every committed sequence."""
        if seq.caching and len(seq.block_hashes) > seq.num_hashed:
            self._unregistered[seq.seq_id] = seq

    def _register_computed(self) -> None:
        """Offer every tracked sequence's computed, hashed blocks to the cache. The tracked
        set holds only sequences that hashed a block since their last registration (a few per
        decode step), so this costs nothing per committed sequence."""
        bs, pending, register = self.block_size, self._unregistered, self.pool.register_chain
        for sid, seq in list(pending.items()):
            if not seq.caching:  # its chain broke since it was tracked
                del pending[sid]
                continue
            hashes = seq.block_hashes
            upto = min(len(hashes), seq.num_computed // bs)
            if upto <= seq.num_hashed:
                continue
            done = register(seq.block_table, hashes, seq.num_hashed, upto)  # as _register
            seq.num_hashed = done
            if done < upto:
                seq.caching = False
                del pending[sid]
            elif done == len(hashes):
                del pending[sid]

    def register_prefix(self, seq_id: Hashable, num_tokens: int | None = None) -> int:
        """Report the KV of the sequence's first ``num_tokens`` tokens (default: all) written
        and make its full blocks among them findable, regardless of ``min_cache_tokens`` (and
        again after ``reset_prefix_cache`` or an eviction dropped its chain). For chunked
        prefill, call it after each chunk's forward. Returns the leading tokens of the sequence
        now findable in the cache (what ``lookup_prefix`` of its tokens would return, capped at
        its computed tokens)."""
        seq = self._running(seq_id)
        n = seq.num_tokens if num_tokens is None else check.integer("num_tokens", num_tokens)
        if not 0 <= n <= seq.num_tokens:
            raise InvalidArgumentError(
                f"cannot register {n} tokens of a {seq.num_tokens}-token sequence")
        if n > seq.num_computed:
            seq.num_computed = n
        if not self._caching:
            return 0
        self._extend_hashes(seq, seq.num_computed // self.block_size)
        seq.num_hashed = self._findable_prefix(seq)  # the chain may have been dropped since
        seq.caching = True  # retried even if min_cache_tokens or a broken chain stopped it
        self._register(seq, min(n // self.block_size, len(seq.block_hashes)))
        seq.num_hashed = self._findable_prefix(seq)  # ... or continue through others' blocks
        self._track(seq)
        return seq.num_hashed * self.block_size

    def _extend_hashes(self, seq: Sequence, full: int) -> None:
        """Hash token-keyed full blocks up to ``full`` (a sequence whose caching had stopped
        was not hashed past that point); ``_track`` then sees blocks hashed but not offered."""
        hashes = seq.block_hashes
        if len(hashes) >= full or seq.tokens is None or seq.root is None:
            return
        bs, start = self.block_size, len(hashes)
        parent = cast(bytes, hashes[-1] if hashes else seq.root)  # token-hashed: bytes
        hashes += chain_hashes(self._hash_fn, parent,
                               token_bytes(seq.tokens[start * bs:full * bs]), bs * 8,
                               full - start)

    def _findable_prefix(self, seq: Sequence) -> int:
        """Leading computed blocks whose hashes are in the cache now (through any block): the
        chain may have been dropped since ``num_hashed`` was set."""
        cached, hashes = self.pool.cached, seq.block_hashes
        limit = min(len(hashes), seq.num_computed // self.block_size)
        i = 0
        while i < limit and hashes[i] in cached:
            i += 1
        return i

    def _register(self, seq: Sequence, upto: int) -> None:
        """Offer full blocks ``num_hashed .. upto-1`` of ``seq`` to the prefix cache (their KV
        is written: callers pass ``upto <= num_computed // block_size``)."""
        done = self.pool.register_chain(seq.block_table, seq.block_hashes, seq.num_hashed, upto)
        if done < upto:
            seq.caching = False
        seq.num_hashed = max(seq.num_hashed, done)
