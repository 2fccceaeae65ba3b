"""The host (CPU) block pool that swapped-out sequences live in.

Host blocks are plain slots: no sharing, no caching, so a free stack is all the state. A
sequence swapped out takes one host block per live device block; swapping in or freeing it
gives them back.
"""

from __future__ import annotations

from collections.abc import Iterable

from pagedkv.errors import OutOfBlocksError, PagedKVError


class HostPool:
    """``num_blocks`` host blocks, ids ``0 .. num_blocks-1`` (no null block)."""

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks
        self.free_stack: list[int] = list(range(num_blocks - 1, -1, -1))

    @property
    def num_free(self) -> int:
        return len(self.free_stack)

    def allocate(self, n: int) -> list[int]:
        """Take ``n`` host blocks (lowest ids first on a fresh pool)."""
        if n > len(self.free_stack):
            raise OutOfBlocksError(n, len(self.free_stack), what="host blocks")
        free = self.free_stack
        ids = free[len(free) - n :]
        del free[len(free) - n :]
        ids.reverse()
        return ids

    def release(self, block_ids: Iterable[int]) -> None:
        """Give host blocks back, in the order given (pass tails first)."""
        self.free_stack.extend(block_ids)

    def check_integrity(self, used: list[int]) -> None:
        """``used`` (the host blocks swapped sequences hold) and the free stack partition the
        pool."""
        every = used + self.free_stack
        if len(every) != len(set(every)) or len(every) != self.num_blocks:
            raise PagedKVError(
                f"host pool integrity: {len(used)} used + "
                f"{len(self.free_stack)} free != {self.num_blocks}"
            )
