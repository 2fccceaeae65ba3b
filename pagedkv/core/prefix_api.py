"""Explicit prefix-cache operations: look up, pin/unpin, reset, evict, reclaim.

(Registering blocks - reporting KV written - is ``commit.py``.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

from pagedkv.core import validate as check
from pagedkv.core.hashing import root_hash
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.pressure import blocks_at
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

    def prompt_hashes(self, token_ids: TokenIds, *, cache_salt: str | bytes | None = None,
                      lora_id: int | str | None = None) -> list[bytes]:
        """The chained hash of every full block of ``token_ids``, exactly the cache keys
        ``admit`` gives them (process-independent: what a shared KV tier is keyed by)."""
        tokens = as_token_array(token_ids)
        check.salt(cache_salt)
        check.lora(lora_id)
        root = root_hash(self._hash_fn, cache_salt, lora_id)
        return cast("list[bytes]", self._token_hashes(root, tokens))

    def _cached_prefix(self, token_ids: TokenIds, cache_salt: str | bytes | None,
                       lora_id: int | str | None) -> list[int]:
        if not self._caching:  # validate as a lookup would, but hash nothing
            as_token_array(token_ids)
            check.salt(cache_salt)
            check.lora(lora_id)
            return []
        hashes = self.prompt_hashes(token_ids, cache_salt=cache_salt, lora_id=lora_id)
        blocks = []
        for h in hashes:
            b = self.pool.cached.get(h)
            if b is None:
                break
            blocks.append(b)
        return blocks

    def lookup_prefix(self, token_ids: TokenIds, *, cache_salt: str | bytes | None = None,
                      lora_id: int | str | None = None) -> int:
        """Tokens of the longest cached prefix of ``token_ids`` (no state change)."""
        return len(self._cached_prefix(token_ids, cache_salt, lora_id)) * self.block_size

    def pin_prefix(self, token_ids: TokenIds, *, cache_salt: str | bytes | None = None,
                   lora_id: int | str | None = None) -> PrefixPin:
        """Hold the longest cached prefix of ``token_ids`` so it is never evicted."""
        blocks = self._cached_prefix(token_ids, cache_salt, lora_id)
        self.pool.hit_many(blocks)
        self._next_pin += 1
        self._pins[self._next_pin] = blocks
        self._after_alloc()
        return PrefixPin(self._next_pin, len(blocks) * self.block_size, tuple(blocks))

    def unpin_prefix(self, pin: PrefixPin) -> None:
        """Release a pin; its blocks become evictable once no sequence uses them."""
        check.instance("pin", pin, PrefixPin)
        blocks = self._pins.pop(pin.pin_id, None)
        if blocks is None:
            raise InvalidArgumentError(f"pin {pin.pin_id} is not held (already unpinned?)")
        self._release(reversed(blocks))
        self.pressure.update(self.pool.num_used)

    def reset_prefix_cache(self) -> None:
        """Forget every cached prefix and drop all pins. Blocks in use stay with their
        sequences (private from now on: ``commit`` no longer offers them, an explicit
        ``register_prefix`` re-registers them); unreferenced cached blocks become free."""
        for blocks in self._pins.values():
            self._release(reversed(blocks))
        self._pins.clear()
        self.pool.reset_cache()
        for seq in self._seqs.values():
            seq.caching = False
            seq.num_hashed = 0
        self._unregistered.clear()
        self.pressure.update(self.pool.num_used)

    def evict_cached(self, num_blocks: int) -> int:
        """Evict up to ``num_blocks`` unreferenced cached blocks now (leaves first); returns
        exactly how many blocks left the cache for the free list (never more than asked)."""
        return self.pool.evict(check.count("num_blocks", num_blocks))

    def reclaim_to(self, usage: float) -> int:
        """Evict cached blocks until (used + cached) / usable <= ``usage``; returns evictions."""
        usage = check.fraction("usage", usage)
        usable = self.config.num_usable_blocks
        occupied = usable - len(self.pool.free)
        excess = occupied - math.floor(blocks_at(usage, usable))
        return self.pool.evict(max(0, excess))
