"""The pool of device blocks: reference counts and the free stack, over a ``PrefixCache``.

Every usable block (1 .. num_blocks-1; block 0 is the reserved null block used for padding and
for positions a sliding window released) is in exactly one of three states:

* **free** - ``ref_cnt == 0``, no hash; on ``free_stack``. Allocation pops from it first
  (LIFO, so a freshly freed block is reused while it is warm; a fresh pool hands out 1, 2, ...).
* **cached** - ``ref_cnt == 0`` with a hash in the prefix cache; owned by its eviction policy.
  Allocation evicts one only when the free stack is empty, so cached KV lives as long as possible.
* **used** - ``ref_cnt > 0``; referenced by block tables, prefix pins or pending copies (it may
  also be cached).

The pool moves blocks between the states; the cache (``prefix_cache/``) decides which cached
block goes first. The pool reads the cache's ``block_hash`` to tell a block that becomes
evictable on release from one that becomes free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.prefix_cache.prefix_cache import PrefixCache
from pagedkv.errors import PagedKVError


class BlockPool:
    """Reference counts of ``num_blocks`` physical blocks. Callers check ``num_available``
    before ``allocate`` so a failing request never changes anything."""

    def __init__(self, num_blocks: int, cache: PrefixCache) -> None:
        self.num_blocks = num_blocks
        self.cache = cache
        self.ref_cnt: list[int] = [0] * num_blocks
        self.free_stack: list[int] = list(range(num_blocks - 1, NULL_BLOCK_ID, -1))
        self.num_used = 0  # blocks with ref_cnt > 0, kept as a counter (checked by integrity)

    @property
    def num_available(self) -> int:
        """Blocks an allocation can get: free plus evictable cached."""
        return self.num_blocks - 1 - self.num_used

    # ------------------------------------------------------------ allocation
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks (ref_cnt 1, no hash), evicting cached blocks if the stack is empty."""
        free = self.free_stack
        num_free = len(free)
        if n <= num_free:
            ids = free[num_free - n :]
            del free[num_free - n :]
            ids.reverse()
        else:
            ids = free[::-1]
            free.clear()
            ids += self.cache.pop_victims(n - num_free)
        ref_cnt = self.ref_cnt
        for b in ids:
            ref_cnt[b] = 1
        self.num_used += n
        return ids

    def allocate_one(self) -> int:
        """``allocate(1)[0]`` without the list (the decode hot path)."""
        b = self.free_stack.pop() if self.free_stack else self.cache.pop_victim()
        self.ref_cnt[b] = 1
        self.num_used += 1
        return b

    def release(self, block_ids: Iterable[int]) -> int:
        """Drop one reference from each block, in the given order (pass tails first). Returns
        how many blocks lost their last reference (became free or evictable)."""
        ref_cnt, block_hash, free = self.ref_cnt, self.cache.block_hash, self.free_stack
        evictor = self.cache.evictor
        queue = evictor.queue
        free_before = len(free)
        # A newly evictable block goes straight into a queue policy's queue, else into an
        # ordered dict handed to the policy; cached = the queue's (or dict's) growth.
        evictable: OrderedDict[int, None] | dict[int, None] = {} if queue is None else queue
        cached_before = len(evictable)
        for b in block_ids:
            r = ref_cnt[b] - 1
            if r:
                if b != NULL_BLOCK_ID:
                    ref_cnt[b] = r
                continue
            ref_cnt[b] = 0
            if block_hash[b] is None:
                free.append(b)
            else:
                evictable[b] = None
        num_cached = len(evictable) - cached_before
        if queue is None and num_cached:
            evictor.insert_many(list(evictable), block_hash)
        released = len(free) - free_before + num_cached
        self.num_used -= released
        return released

    def share(self, block_ids: Iterable[int]) -> None:
        """Take one more reference to each of ``block_ids``, all already referenced (a fork's
        child, a pending copy's hold); the null block is skipped."""
        ref_cnt = self.ref_cnt
        for b in block_ids:
            if b != NULL_BLOCK_ID:
                ref_cnt[b] += 1

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference to each cached block a prefix lookup found (vLLM's ``touch``): an
        unreferenced one leaves the eviction order."""
        ref_cnt, evictor = self.ref_cnt, self.cache.evictor
        queue, tracks_hits = evictor.queue, evictor.tracks_hits
        for b in block_ids:
            r = ref_cnt[b]
            if not r:
                if queue is not None:
                    del queue[b]
                else:
                    evictor.remove(b)
                self.num_used += 1
            ref_cnt[b] = r + 1
            if tracks_hits:
                evictor.record_hit(b)

    # -------------------------------------------------------------- eviction
    def evict(self, n: int) -> int:
        """Evict up to ``n`` cached unreferenced blocks to the free stack; returns how many
        (exactly the number that left the cache for the free stack)."""
        done = min(n, len(self.cache.evictor))
        self.free_stack += self.cache.pop_victims(done)
        return done

    def reset_cache(self) -> None:
        """Forget every cached hash; unreferenced cached blocks become free."""
        self.free_stack += self.cache.reset()

    # ------------------------------------------------------------ integrity
    def check_integrity(self) -> None:
        """Raise ``PagedKVError`` naming the first broken pool or cache invariant."""
        problem = self.problem()
        if problem:
            raise PagedKVError(f"block pool integrity: {problem}")

    def problem(self) -> str | None:
        """What breaks the pool's invariants (module docstring), the cache's included."""
        n, ref_cnt, block_hash = self.num_blocks, self.ref_cnt, self.cache.block_hash
        if ref_cnt[NULL_BLOCK_ID] != 0:
            return "null block is referenced"
        free = set(self.free_stack)
        if len(free) != len(self.free_stack):
            return "free stack holds duplicates"
        if NULL_BLOCK_ID in free:
            return "null block on the free stack"
        for b in range(1, n):
            rc, h = ref_cnt[b], block_hash[b]
            if rc < 0:
                return f"block {b} ref_cnt {rc} < 0"
            if b in free and (rc != 0 or h is not None):
                return f"free block {b} has ref_cnt {rc} / hash {h!r}"
            if rc == 0 and h is None and b not in free:
                return f"block {b} is unreferenced, uncached and not free (leaked)"
        used = sum(1 for rc in ref_cnt if rc > 0)
        if used != self.num_used:
            return f"num_used counter {self.num_used} but {used} blocks referenced"
        if len(free) + len(self.cache.evictor) + used != n - 1:
            return "free + cached + used != usable blocks"
        return self.cache.problem(ref_cnt)

    def snapshot(self) -> dict[str, Any]:
        """Copies of the pool's state (the free stack in order: allocation pops its end)."""
        return {
            "ref_cnt": list(self.ref_cnt),
            "free_stack": list(self.free_stack),
            "num_used": self.num_used,
            **self.cache.snapshot(),
        }
