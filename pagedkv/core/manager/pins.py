"""Prefix pins: a held prefix's blocks carry one extra reference each, so they are never
evicted, until the pin is released."""

from __future__ import annotations

from dataclasses import dataclass

from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.blocks.copy_on_write import PendingCopies
from pagedkv.errors import InvalidArgumentError


@dataclass(frozen=True)
class PrefixPin:
    """A held prefix: its blocks carry one extra reference each until ``unpin``."""

    pin_id: int
    num_tokens: int
    block_ids: tuple[int, ...]


class PrefixPins:
    """The pins held now; ids are never reused."""

    def __init__(self, pool: BlockPool, copies: PendingCopies, block_size: int) -> None:
        self.pool, self.block_size = pool, block_size
        self.copies = copies  # releases go through the copy-on-write queue
        self.held: dict[int, list[int]] = {}  # pin id -> its blocks
        self.made = 0

    def pin(self, blocks: list[int]) -> PrefixPin:
        """Take a reference on each of ``blocks`` (cached, found by a lookup)."""
        self.pool.touch(blocks)
        self.made += 1
        self.held[self.made] = blocks
        return PrefixPin(self.made, len(blocks) * self.block_size, tuple(blocks))

    def unpin(self, pin: PrefixPin) -> None:
        blocks = self.held.pop(pin.pin_id, None)
        if blocks is None:
            raise InvalidArgumentError(f"pin {pin.pin_id} is not held (already unpinned?)")
        self.copies.release(reversed(blocks))

    def unpin_all(self) -> None:
        for blocks in self.held.values():
            self.copies.release(reversed(blocks))
        self.held.clear()
