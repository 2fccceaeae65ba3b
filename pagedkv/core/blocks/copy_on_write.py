"""Copy-on-write: the queue of pending block copies and the blocks they read.

Writing into a partial last block that is shared (``ref_cnt > 1``) or cached gives the writer a
private ``dst`` block and queues ``(src, dst)``; so does a partial-block prefix hit at
admission (``add_held``: the first rows of a cached ``src`` reused by a new sequence). The
storage layer runs the queued copies (from ``take()``) before it writes the step's KV. Two
things must hold until then:

* **the source is not reused.** The writer's reference on ``src`` is not dropped but moves to the
  pending copy (``held``), so ``src`` cannot go back to the pool - be evicted, reallocated, or
  overwritten by a swap-in - before the copy reads it, even if every sequence using it is freed.
  ``take`` drops those references. A hold does not make ``src`` look shared: the remaining
  owner still writes it in place (the copy runs before that write).
* **the destination is still wanted.** When the last reference to a pending ``dst`` goes (its
  sequence freed, truncated, preempted, swapped out, or slid past by a window), the copy is
  dropped at once, before any later allocation could hand ``dst`` to someone else. That is why
  every release of a sequence's blocks goes through ``release`` here.

A copy never reads a block that another pending copy writes: copying from a pending ``dst``
reads that copy's source instead, so the copies are independent and may run in any order (one
batched gather/scatter).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.stats import Counters


class PendingCopies:
    """Copy-on-write copies queued since the last ``take``, over one ``BlockPool``."""

    def __init__(self, pool: BlockPool, counters: Counters) -> None:
        self.pool = pool
        self.counters = counters
        self.copies: dict[int, int] = {}  # dst -> src
        self.held: list[int] = []  # one reference per pending copy, on the block it reads
        self._ref_cnt, self._block_hash = pool.ref_cnt, pool.cache.block_hash

    def __len__(self) -> int:
        return len(self.copies)

    def needs_copy(self, block_id: int) -> bool:
        """Whether writing into ``block_id`` (a sequence's partial last block) needs a private
        copy first: it is cached (cached blocks are immutable) or another sequence or pin
        holds it (pending-copy holds do not count). The one copy-on-write condition."""
        return self._block_hash[block_id] is not None or (
            self._ref_cnt[block_id] > 1 and self.shared(block_id)
        )

    def shared(self, block_id: int) -> bool:
        """More than one sequence or pin holds ``block_id`` (pending-copy holds do not count)."""
        r = self._ref_cnt[block_id]
        return r > 1 and (not self.held or r - self.held.count(block_id) > 1)

    def writable(self, block_id: int) -> bool:
        """Whether KV in ``block_id`` may be overwritten in place: one holder, not cached."""
        holders = self._ref_cnt[block_id] - (self.held.count(block_id) if self.held else 0)
        return holders >= 1 and not self.needs_copy(block_id)

    def copy_last(self, table: list[int]) -> int:
        """Give the owner of block table ``table`` a private copy of its last block; returns
        the new block (the caller checked one is available)."""
        src = table[-1]
        read = self.copies.get(src, src)  # a pending dst is not filled yet: read its source
        self.pool.share((read,))  # the copy's hold; read is referenced, so no state change
        self.held.append(read)
        dst = self.pool.allocate_one()
        self.release((src,))
        table[-1] = dst
        self.copies[dst] = read
        self.counters.cow_copies += 1
        self.counters.allocations += 1
        return dst

    def add_held(self, src: int, dst: int) -> None:
        """Queue a copy of cached block ``src`` into the fresh private block ``dst`` whose
        first rows a partial-block prefix hit reuses; the caller already took the reference
        on ``src`` that becomes the copy's hold (``BlockPool.touch``, before allocating
        ``dst``, so the allocation cannot evict ``src``)."""
        self.held.append(src)
        self.copies[dst] = src

    def release(self, blocks: Iterable[int]) -> None:
        """Drop one reference per block (tails first) and the pending copies into blocks that
        lost their last reference, before anything can reallocate them."""
        self.counters.frees += self.pool.release(blocks)
        if self.copies:
            ref_cnt = self._ref_cnt
            for dst in [d for d in self.copies if not ref_cnt[d]]:
                del self.copies[dst]

    def take(self) -> list[tuple[int, int]]:
        """The pending ``(src, dst)`` copies, in queue order; the queue is cleared and the
        sources' holds are released."""
        out = [(src, dst) for dst, src in self.copies.items()]
        self.copies = {}
        if self.held:
            held, self.held = self.held, []
            self.counters.frees += self.pool.release(held)
        return out

    def problem(self) -> str | None:
        """What breaks the rules in the module docstring, if anything."""
        ref_cnt, held = self._ref_cnt, Counter(self.held)
        for dst, src in self.copies.items():
            if ref_cnt[dst] == 0:
                return f"pending copy {src}->{dst} targets an unreferenced block"
            if held[src] == 0 or ref_cnt[src] == 0:
                return f"pending copy {src}->{dst} reads a block it does not hold"
            if src in self.copies:
                return f"pending copy {src}->{dst} reads another copy's unfilled target"
            if self._block_hash[dst] is not None:
                return f"pending copy {src}->{dst} targets a cached block"
        return None

    def snapshot(self) -> dict[str, Any]:
        return {"copies": dict(self.copies), "held": list(self.held)}
