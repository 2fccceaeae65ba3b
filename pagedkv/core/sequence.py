"""Per-sequence bookkeeping: block table, token ids, block hashes, window and scheduling data."""

from __future__ import annotations

from array import array
from collections.abc import Hashable
from dataclasses import dataclass
from enum import Enum

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
        if self.window_tokens <= 0 or self.sink_tokens < 0:
            raise InvalidArgumentError(
                f"sliding window needs window_tokens > 0 and sink_tokens >= 0, got "
                f"window_tokens={self.window_tokens}, sink_tokens={self.sink_tokens}")

    def first_droppable_block(self, block_size: int) -> int:
        """Blocks before this index hold sink tokens and are never released."""
        return -(-self.sink_tokens // block_size)

    def droppable_end(self, num_tokens: int, block_size: int) -> int:
        """Blocks before this index lie wholly before the window once ``num_tokens`` exist."""
        return max(0, num_tokens - self.window_tokens) // block_size


class Sequence:
    """State of one sequence. ``block_table[i]`` is the physical block holding tokens
    ``[i*block_size, (i+1)*block_size)``; ``block_hashes[i]`` the chained hash of full block i.

    ``num_hashed`` counts leading full blocks already offered to the prefix cache; ``caching`` is
    False once the chain broke (or for sequences that are not cached), ending registration.
    """

    __slots__ = ("arrival", "block_hashes", "block_table", "caching", "host_table", "last_used",
                 "num_hashed", "num_tokens", "priority", "root", "seq_id", "status", "tokens",
                 "window", "window_next")

    def __init__(self, seq_id: Hashable, tokens: array[int] | None, root: bytes | None,
                 priority: int, arrival: int, window: SlidingWindow | None,
                 block_table: list[int], num_tokens: int, block_hashes: list[Hashable],
                 num_hashed: int, caching: bool) -> None:
        self.seq_id = seq_id
        self.block_table = block_table
        self.num_tokens = num_tokens
        self.tokens = tokens  # array('q') of token ids; None when admitted by length only
        self.root = root  # parent hash of block 0; None when hashes come from the caller
        self.block_hashes = block_hashes
        self.num_hashed = num_hashed
        self.caching = caching
        self.priority = priority
        self.arrival = arrival
        self.last_used = arrival
        self.window = window
        self.window_next = 0  # next block index a sliding window may release (set on admit)
        self.status = SeqStatus.RUNNING
        self.host_table: list[int] = []  # host block per logical block while swapped out

    def clone(self, seq_id: Hashable, num_tokens: int, block_size: int, arrival: int) -> Sequence:
        """A copy covering the first ``num_tokens`` tokens (block references not yet taken)."""
        num_blocks = -(-num_tokens // block_size)
        full = num_tokens // block_size
        child = Sequence(seq_id, None if self.tokens is None else self.tokens[:num_tokens],
                         self.root, self.priority, arrival, self.window,
                         self.block_table[:num_blocks], num_tokens, self.block_hashes[:full],
                         min(self.num_hashed, full), self.caching)
        child.window_next = self.clamp_window_next(num_blocks, block_size)
        return child

    def clamp_window_next(self, num_blocks: int, block_size: int) -> int:
        """``window_next`` for a table cut to ``num_blocks`` blocks: never past the table, never
        before the sink blocks (which are never released)."""
        if self.window is None:
            return 0
        return max(self.window.first_droppable_block(block_size),
                   min(self.window_next, num_blocks))
