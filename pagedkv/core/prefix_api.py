"""Explicit prefix-cache operations: look up, pin/unpin, register, reset, reclaim."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import cast

from pagedkv.core.hashing import chain_hashes, root_hash, token_bytes
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.tokens import TokenIds, as_token_array
from pagedkv.errors import InvalidArgumentError


@dataclass(frozen=True)
class PrefixPin:
    """A held prefix: its blocks carry one extra reference each until ``unpin``."""

    pin_id: int
    num_tokens: int
    block_ids: tuple[int, ...]


class PrefixCacheAPI(ManagerState):
    """Mixin of ``BlockManager``."""

    def _cached_prefix(self, token_ids: TokenIds, cache_salt: str | None,
                       lora_id: int | str | None) -> list[int]:
        if not self._caching:
            return []
        tokens = as_token_array(token_ids)
        fn = self._hash_fn
        bs = self.block_size
        hashes = chain_hashes(fn, root_hash(fn, cache_salt, lora_id), token_bytes(tokens),
                              bs * 8, len(tokens) // bs)
        blocks = []
        for h in hashes:
            b = self.pool.cached.get(h)
            if b is None:
                break
            blocks.append(b)
        return blocks

    def lookup_prefix(self, token_ids: TokenIds, *, cache_salt: str | None = None,
                      lora_id: int | str | None = None) -> int:
        """Tokens of the longest cached prefix of ``token_ids`` (no state change)."""
        return len(self._cached_prefix(token_ids, cache_salt, lora_id)) * self.block_size

    def pin_prefix(self, token_ids: TokenIds, *, cache_salt: str | None = None,
                   lora_id: int | str | None = None) -> PrefixPin:
        """Hold the longest cached prefix of ``token_ids`` so it is never evicted."""
        blocks = self._cached_prefix(token_ids, cache_salt, lora_id)
        for b in blocks:
            self.pool.hit(b)
        self._next_pin += 1
        self._pins[self._next_pin] = blocks
        self._after_alloc()
        return PrefixPin(self._next_pin, len(blocks) * self.block_size, tuple(blocks))

    def unpin_prefix(self, pin: PrefixPin) -> None:
        """Release a pin; its blocks become evictable once no sequence uses them."""
        blocks = self._pins.pop(pin.pin_id, None)
        if blocks is None:
            raise InvalidArgumentError(f"pin {pin.pin_id} is not held (already unpinned?)")
        self._release(reversed(blocks))
        self.pressure.update(self.pool.num_used)

    def register_prefix(self, seq_id: Hashable, num_tokens: int | None = None) -> int:
        """Make the sequence's full blocks up to ``num_tokens`` findable by other sequences
        (regardless of ``min_cache_tokens``); with ``cache_visibility="commit"`` this is how a
        caller reports KV written. Returns the tokens of the sequence now in the cache chain."""
        seq = self._running(seq_id)
        n = seq.num_tokens if num_tokens is None else num_tokens
        if not 0 <= n <= seq.num_tokens:
            raise InvalidArgumentError(
                f"cannot register {n} tokens of a {seq.num_tokens}-token sequence")
        if not self._caching:
            return 0
        full = n // self.block_size
        if len(seq.block_hashes) < full and seq.tokens is not None and seq.root is not None:
            bs, hashes = self.block_size, seq.block_hashes
            start = len(hashes)
            parent = cast(bytes, hashes[-1] if hashes else seq.root)  # token-hashed: bytes
            hashes += chain_hashes(self._hash_fn, parent,
                                   token_bytes(seq.tokens[start * bs:full * bs]), bs * 8,
                                   full - start)
        seq.caching = True  # retried even if min_cache_tokens or a broken chain stopped it
        self._register(seq, min(full, len(seq.block_hashes)))
        return seq.num_hashed * self.block_size

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix and drop all pins. Blocks in use stay with their
        sequences (private from now on); unreferenced cached blocks become free."""
        for blocks in self._pins.values():
            self._release(reversed(blocks))
        self._pins.clear()
        self.pool.reset_cache()
        for seq in self._seqs.values():
            seq.caching = False
        self.pressure.update(self.pool.num_used)

    def evict_cached(self, num_blocks: int) -> int:
        """Evict up to ``num_blocks`` unreferenced cached blocks now; returns how many."""
        if num_blocks < 0:
            raise InvalidArgumentError(f"num_blocks must be >= 0, got {num_blocks}")
        return self.pool.evict(num_blocks)

    def reclaim_to(self, usage: float) -> int:
        """Evict cached blocks until (used + cached) / usable <= ``usage``; returns evictions."""
        if not 0.0 <= usage <= 1.0:
            raise InvalidArgumentError(f"usage must be in [0, 1], got {usage}")
        usable = self.config.num_usable_blocks
        occupied = usable - len(self.pool.free)
        excess = occupied - int(usage * usable)
        return self.pool.evict(max(0, excess))
