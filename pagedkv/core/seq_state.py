"""Per-sequence bookkeeping: block table, token ids, block hashes, window and scheduling data."""

from __future__ import annotations

from array import array
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

from pagedkv.core.prefix_cache.hashing import HashedPrompt
from pagedkv.core.validate import is_int
from pagedkv.errors import InvalidArgumentError


class SeqStatus(Enum):
    RUNNING = "running"
    SWAPPED = "swapped"


@dataclass(frozen=True)
class SlidingWindow:
    """Keep the first ``sink_tokens`` (StreamingLLM's attention sinks) and the last
    ``window_tokens`` of a sequence. Blocks wholly outside both are released and their block-table
    entries become the null block; attention must mask those positions."""

    window_tokens: int
    sink_tokens: int = 0

    def __post_init__(self) -> None:
        if not (is_int(self.window_tokens) and is_int(self.sink_tokens)):
            raise InvalidArgumentError(
                f"sliding window sizes must be ints, got window_tokens={self.window_tokens!r}, "
                f"sink_tokens={self.sink_tokens!r}"
            )
        if self.window_tokens <= 0 or self.sink_tokens < 0:
            raise InvalidArgumentError(
                f"sliding window needs window_tokens > 0 and sink_tokens >= 0, got "
                f"window_tokens={self.window_tokens}, sink_tokens={self.sink_tokens}"
            )

    def first_droppable_block(self, block_size: int) -> int:
        """Blocks before this index hold sink tokens and are never released."""
        return -(-self.sink_tokens // block_size)

    def droppable_end(self, num_tokens: int, block_size: int) -> int:
        """Blocks before this index lie wholly before the window once ``num_tokens`` exist."""
        return max(0, num_tokens - self.window_tokens) // block_size

    def first_needed(self, position: int) -> int:
        """The first non-sink position the token at ``position`` attends to."""
        return max(0, position + 1 - self.window_tokens)


class SeqState:
    """State of one sequence. ``block_table[i]`` is the physical block holding tokens
    ``[i*block_size, (i+1)*block_size)``; ``block_hashes[i]`` the chained hash of full block i.

    ``num_computed`` counts leading tokens whose KV the caller reported written (prefix hits
    count: their KV was written by whoever committed them); only blocks wholly below it may be
    offered to the prefix cache. ``num_hashed`` counts leading full blocks already offered;
    ``caching`` is False once the chain broke (or for sequences that are not cached), ending
    registration by ``commit``. ``prompt`` is the ``HashedPrompt`` it was admitted from, if any:
    blocks it fills later with the prompt's own tokens (chunked prefill) reuse its hashes.
    """

    __slots__ = (
        "arrival",
        "block_hashes",
        "block_table",
        "caching",
        "host_table",
        "last_used",
        "num_computed",
        "num_hashed",
        "num_tokens",
        "priority",
        "prompt",
        "root",
        "seq_id",
        "status",
        "tokens",
        "window",
        "window_next",
    )

    def __init__(
        self,
        seq_id: Hashable,
        tokens: array[int] | None,
        root: bytes | None,
        priority: int,
        arrival: int,
        window: SlidingWindow | None,
        block_table: list[int],
        num_tokens: int,
        block_hashes: list[Hashable],
        num_hashed: int,
        caching: bool,
    ) -> None:
        self.seq_id = seq_id
        self.block_table = block_table
        self.num_tokens = num_tokens
        self.tokens = tokens  # array('q') of token ids; None when admitted by length only
        self.root = root  # parent hash of block 0; None when hashes come from the caller
        self.block_hashes = block_hashes
        self.num_hashed = num_hashed
        self.num_computed = 0  # tokens with KV written (set by the creator)
        self.caching = caching
        self.priority = priority
        self.arrival = arrival
        self.last_used = arrival
        self.window = window
        self.window_next = 0  # next block index a sliding window may release (set on admit)
        self.status = SeqStatus.RUNNING
        self.host_table: list[int] = []  # host block per logical block while swapped out
        self.prompt: HashedPrompt | None = None

    def clone(self, seq_id: Hashable, num_tokens: int, block_size: int, arrival: int) -> SeqState:
        """A copy covering the first ``num_tokens`` tokens (block references not yet taken)."""
        num_blocks = -(-num_tokens // block_size)
        full = num_tokens // block_size
        child = SeqState(
            seq_id,
            None if self.tokens is None else self.tokens[:num_tokens],
            self.root,
            self.priority,
            arrival,
            self.window,
            self.block_table[:num_blocks],
            num_tokens,
            self.block_hashes[:full],
            min(self.num_hashed, full),
            self.caching,
        )
        child.window_next = self.clamp_window_next(num_blocks, block_size)
        child.num_computed = min(self.num_computed, num_tokens)
        child.prompt = self.prompt
        return child

    def released_needed(self, end: int, block_size: int) -> tuple[int, int] | None:
        """Positions ``(first, last)`` a sliding window already released that this sequence,
        cut to its first ``end`` tokens, would still need: its last token (whose block the next
        token writes next to) and every position the next token (at ``end``) attends to, back
        to ``window.first_needed(end)``. None when every needed block is live. The released
        blocks are one contiguous run, ``[first droppable, window_next)``."""
        if self.window is None or end == 0:
            return None
        lo = max(
            min(self.window.first_needed(end), end - 1) // block_size,
            self.window.first_droppable_block(block_size),
        )
        hi = min(-(-end // block_size), self.window_next)
        if lo >= hi:
            return None
        return lo * block_size, min(hi * block_size, end) - 1

    def clamp_window_next(self, num_blocks: int, block_size: int) -> int:
        """``window_next`` for a table cut to ``num_blocks`` blocks: never past the table, never
        before the sink blocks (which are never released)."""
        if self.window is None:
            return 0
        return max(self.window.first_droppable_block(block_size), min(self.window_next, num_blocks))
