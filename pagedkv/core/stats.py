"""Counters the manager keeps and the snapshot it reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class Counters:
    """Monotonic event counts since construction or ``reset_stats``."""

    allocations: int = 0  # blocks handed out (prompt, decode and copy-on-write)
    frees: int = 0  # blocks whose last reference was released
    prefix_queries: int = 0  # admissions with prefix caching on
    prefix_query_tokens: int = 0
    prefix_hit_tokens: int = 0
    prefix_hit_requests: int = 0  # admissions that reused at least one block
    partial_hit_tokens: int = 0  # of prefix_hit_tokens, rows copied from a cached block's head
    cow_copies: int = 0
    forks: int = 0
    preemptions: int = 0
    swapped_out_blocks: int = 0
    swapped_in_blocks: int = 0
    peak_blocks_used: int = 0


@dataclass
class ManagerStats(Counters):
    """A snapshot: the counters plus the pool's state at the time of the call."""

    evictions: int = 0
    evict_listener_errors: int = 0  # eviction-listener calls that raised (contained, logged)
    pressure_callback_errors: int = 0  # pressure-callback calls that raised (contained, logged)
    num_sequences: int = 0
    num_blocks: int = 0  # physical blocks, the null block included (= CacheConfig.num_blocks)
    num_usable_blocks: int = 0  # blocks the manager can hand out (num_blocks - 1)
    blocks_used: int = 0  # referenced by sequences or pins
    blocks_cached: int = 0  # unreferenced but holding a cached prefix (evictable)
    blocks_free: int = 0
    tokens_stored: int = 0  # token slots holding KV, shared blocks counted once
    block_size: int = 0
    bytes_per_block: int | None = None

    @property
    def hit_rate(self) -> float:
        """Token-weighted prefix hit rate."""
        q = self.prefix_query_tokens
        return self.prefix_hit_tokens / q if q else 0.0

    @property
    def request_hit_rate(self) -> float:
        return self.prefix_hit_requests / self.prefix_queries if self.prefix_queries else 0.0

    @property
    def usage(self) -> float:
        """Fraction of usable blocks referenced."""
        u = self.num_usable_blocks
        return self.blocks_used / u if u else 0.0

    @property
    def peak_usage(self) -> float:
        u = self.num_usable_blocks
        return self.peak_blocks_used / u if u else 0.0

    @property
    def internal_fragmentation(self) -> float:
        """Fraction of slots in used blocks not holding a token."""
        slots = self.blocks_used * self.block_size
        return 1.0 - self.tokens_stored / slots if slots else 0.0

    @property
    def bytes_used(self) -> int | None:
        return None if self.bytes_per_block is None else self.blocks_used * self.bytes_per_block

    @property
    def bytes_total(self) -> int | None:
        """Bytes of the usable blocks (what a memory budget pays for)."""
        b = self.bytes_per_block
        return None if b is None else self.num_usable_blocks * b

    def as_dict(self) -> dict[str, float | int | None]:
        """All fields and derived rates, for JSON output."""
        out: dict[str, float | int | None] = dict(asdict(self))
        for name in (
            "hit_rate",
            "request_hit_rate",
            "usage",
            "peak_usage",
            "internal_fragmentation",
            "bytes_used",
            "bytes_total",
        ):
            out[name] = getattr(self, name)
        return out
