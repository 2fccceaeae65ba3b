"""Offering sequences' computed blocks to the prefix cache: the only way a block becomes findable.

A full block becomes findable by other sequences' prefix lookups only after the caller reports
its KV written (``BlockManager.commit`` / ``register_prefix``). Until then a sequence's blocks
are private, so a sequence freed, truncated, preempted or swapped out before its forward leaves
nothing in the cache that a later hit could read as someone else's KV.

Blocks are hashed when they fill (``seal``, so a commit stays O(1) per sequence) and registered
at the next commit that covers them. The registrar tracks the few sequences with hashed blocks
not yet offered, so a commit never looks at the others.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import cast

from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.seq_state import SeqState


class Registrar:
    """Hashes sealed blocks and registers computed ones, for sequences over one pool."""

    def __init__(self, pool: BlockPool) -> None:
        self.pool = pool
        self.cache = pool.cache
        self.block_size = pool.cache.block_size
        self.tracked: dict[Hashable, SeqState] = {}  # hashed blocks not yet offered

    def track(self, seq: SeqState) -> None:
        """Remember ``seq`` if it has hashed blocks not yet offered to the cache."""
        if seq.caching and len(seq.block_hashes) > seq.num_hashed:
            self.tracked[seq.seq_id] = seq

    def forget(self, seq_id: Hashable) -> None:
        self.tracked.pop(seq_id, None)

    def seal(self, seq: SeqState) -> None:
        """The sequence's last block just became full: hash it (registration waits for the
        commit). Caller-keyed sequences have no hashes past their prompt. A block holding its
        ``HashedPrompt``'s own tokens takes the prompt's hash instead of hashing again."""
        tokens, root = seq.tokens, seq.root
        if tokens is None or root is None:
            return
        bs, hashes, prompt = self.block_size, seq.block_hashes, seq.prompt
        full = seq.num_tokens // bs
        while len(hashes) < full:
            i = len(hashes)
            start = i * bs
            if (
                prompt is not None
                and i < len(prompt.hashes)
                and (i == 0 or hashes[i - 1] == prompt.hashes[i - 1])
                and tokens[start : start + bs].tobytes()
                == prompt.data[start * 8 : (start + bs) * 8]
            ):
                hashes.append(prompt.hashes[i])
            else:
                parent = cast(bytes, hashes[i - 1] if i else root)  # token-hashed: bytes
                hashes.append(self.cache.hasher.hash_block(parent, tokens[start : start + bs]))
        self.tracked[seq.seq_id] = seq

    def register_computed(self) -> None:
        """Offer every tracked sequence's computed, hashed blocks to the cache (after a
        commit). A sequence whose chain breaks stops caching."""
        bs, tracked = self.block_size, self.tracked
        for sid, seq in list(tracked.items()):
            if not seq.caching:  # its chain broke since it was tracked
                del tracked[sid]
                continue
            upto = min(len(seq.block_hashes), seq.num_computed // bs)
            if upto <= seq.num_hashed:
                continue
            self.register(seq, upto)
            if not seq.caching or seq.num_hashed == len(seq.block_hashes):
                del tracked[sid]

    def register(self, seq: SeqState, upto: int) -> None:
        """Offer full blocks ``num_hashed .. upto-1`` of ``seq`` to the prefix cache (their KV
        is written: callers pass ``upto <= num_computed // block_size``)."""
        cache, table, hashes = self.cache, seq.block_table, seq.block_hashes
        done = cache.register_chain(table, hashes, seq.num_hashed, upto, self.pool.free_stack)
        if seq.tokens is not None and done > seq.num_hashed:
            cache.tokens.record_chain(
                table, hashes, seq.num_hashed, done, seq.tokens, cache.block_hash
            )
        if done < upto:
            seq.caching = False
        seq.num_hashed = max(seq.num_hashed, done)

    def register_prefix(self, seq: SeqState, num_tokens: int) -> int:
        """Register the computed full blocks among the first ``num_tokens`` tokens, even if
        ``min_cache_tokens`` or a dropped chain stopped caching; returns the leading tokens of
        ``seq`` findable in the cache now (capped at its computed tokens)."""
        self.extend_hashes(seq, seq.num_computed // self.block_size)
        seq.num_hashed = self.findable_prefix(seq)  # the chain may have been dropped since
        seq.caching = True
        self.register(seq, min(num_tokens // self.block_size, len(seq.block_hashes)))
        seq.num_hashed = self.findable_prefix(seq)  # ... or continue through others' blocks
        self.track(seq)
        return seq.num_hashed * self.block_size

    def extend_hashes(self, seq: SeqState, full: int) -> None:
        """Hash token-keyed full blocks up to ``full`` (a sequence whose caching had stopped
        was not hashed past that point)."""
        hashes = seq.block_hashes
        if len(hashes) >= full or seq.tokens is None or seq.root is None:
            return
        bs, start = self.block_size, len(hashes)
        parent = cast(bytes, hashes[-1] if hashes else seq.root)  # token-hashed: bytes
        hashes += self.cache.hasher.hash_blocks(
            parent, seq.tokens[start * bs : full * bs], full - start
        )

    def findable_prefix(self, seq: SeqState) -> int:
        """Leading computed blocks whose hashes are in the cache now (through any block)."""
        limit = min(len(seq.block_hashes), seq.num_computed // self.block_size)
        return len(self.cache.lookup(seq.block_hashes, limit))

    def problem(self, seqs: Iterable[SeqState], known: dict[Hashable, SeqState]) -> str | None:
        """A sequence with unoffered hashed blocks is tracked; nothing unknown is tracked."""
        for seq in seqs:
            if (
                seq.caching
                and len(seq.block_hashes) > seq.num_hashed
                and self.tracked.get(seq.seq_id) is not seq
            ):
                return f"sequence {seq.seq_id!r} has unoffered hashed blocks but is not tracked"
        if any(known.get(sid) is not s for sid, s in self.tracked.items()):
            return "a sequence no longer known is tracked for registration"
        return None
