"""Copy-on-write bookkeeping: the queue of pending block copies and the blocks they read.

Writing into a partial last block that is shared (``ref_cnt > 1``) or cached gives the writer a
private ``dst`` block and queues ``(src, dst)``; the storage layer runs the queued copies (from
``take_copies()``) before it writes the step's KV. Two things must hold until then:

* **the source is not reused.** The writer's reference on ``src`` is not dropped but moves to the
  pending copy (``_held``), so ``src`` cannot go back to the pool - be evicted, reallocated, or
  overwritten by a swap-in - before the copy reads it, even if every sequence using it is freed.
  ``take_copies`` drops those references. A hold does not make ``src`` look shared: the
  remaining owner still writes it in place (the copy runs before that write).
* **the destination is still wanted.** When the last reference to a pending ``dst`` goes (its
  sequence freed, truncated, preempted, swapped out, or slid past by a window), the copy is
  dropped at once, before any later allocation could hand ``dst`` to someone else.

A copy never reads a block that another pending copy writes: copying from a pending ``dst``
reads that copy's source instead, so the copies are independent and may run in any order (one
batched gather/scatter).
"""

from __future__ import annotations

from collections.abc import Iterable

from pagedkv.core.manager_state import ManagerState
from pagedkv.core.sequence import Sequence
from pagedkv.core.validate import is_int
from pagedkv.errors import InvalidArgumentError


class CopyOnWriteAPI(ManagerState):
    """Mixin of ``BlockManager``."""

    def take_copies(self) -> list[tuple[int, int]]:
        """Pending copy-on-write ``(src_block, dst_block)`` pairs; execute them before writing
        this step's KV. The queue is cleared and the sources' holds are released."""
        copies = [(src, dst) for dst, src in self._copies.items()]
        self._copies = {}
        if self._held:
            held, self._held = self._held, []
            self.counters.frees += self.pool.release(held)
            self.pressure.update(self.pool.num_used)
        return copies

    @property
    def num_pending_copies(self) -> int:
        """Copy-on-write copies queued since the last ``take_copies``."""
        return len(self._copies)

    def is_block_writable(self, block_id: int) -> bool:
        """Whether KV in ``block_id`` may be overwritten in place: one holder and not cached
        (cached blocks are immutable, e.g. one made partial again by ``truncate``)."""
        n = self.pool.num_blocks
        if not is_int(block_id) or not 0 <= block_id < n:
            raise InvalidArgumentError(f"block_id must be an int in [0, {n}), got {block_id!r}")
        return self._writable(int(block_id))

    def _writable(self, b: int) -> bool:
        r = self.pool.ref_cnt[b] - (self._held.count(b) if self._held else 0)
        return r == 1 and self.pool.block_hash[b] is None

    def _shared(self, b: int) -> bool:
        """More than one sequence or pin holds ``b`` (pending-copy holds do not count)."""
        r = self.pool.ref_cnt[b]
        return r > 1 and (not self._held or r - self._held.count(b) > 1)

    def _cow_last(self, seq: Sequence) -> int:
        """Give ``seq`` a private copy of its last block; returns the new block."""
        src = seq.block_table[-1]
        read = self._copies.get(src, src)  # a pending dst is not filled yet: read its source
        self.pool.ref_cnt[read] += 1  # the copy's hold; read is referenced, so no state change
        self._held.append(read)
        dst = self.pool.allocate_one()
        self._release((src,))
        seq.block_table[-1] = dst
        self._copies[dst] = read
        self.counters.cow_copies += 1
        self.counters.allocations += 1
        return dst

    def _release(self, blocks: Iterable[int]) -> None:
        """Drop one reference per block (tails first); drop pending copies into blocks that
        lost their last reference, before anything can reallocate them."""
        self.counters.frees += self.pool.release(blocks)
        if self._copies:
            ref_cnt = self.pool.ref_cnt
            for dst in [d for d in self._copies if not ref_cnt[d]]:
                del self._copies[dst]
