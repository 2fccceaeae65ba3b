"""The pool of physical blocks: ref counts, a free stack, the prefix-cache map and the evictor.

Every usable block (1 .. num_blocks-1; block 0 is the reserved null block used for padding and
for positions a sliding window released) is in exactly one of three states:

* **free** - ``ref_cnt == 0``, no hash; on the free stack. Allocation pops from it first (LIFO,
  so a freshly freed block is reused while it is warm; a fresh pool hands out 1, 2, 3, ...).
* **cached** - ``ref_cnt == 0`` with a registered block hash; owned by the eviction policy.
  Allocation evicts one only when the free stack is empty, so cached KV lives as long as possible.
* **used** - ``ref_cnt > 0``; referenced by block tables and/or prefix pins (it may also be cached).

Cached blocks form a forest kept by ``CacheForest`` (``cache_forest.py``): leaf-first eviction,
and a cached suffix never outlives its prefix.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterable

from pagedkv.core.cache_forest import (
    NULL_BLOCK_ID,
    CacheForest,
    Children,
    EvictListener,
    kids_of,
    link_child,
)
from pagedkv.core.eviction import EvictionPolicy
from pagedkv.errors import PagedKVError

__all__ = ["NULL_BLOCK_ID", "BlockPool", "Children", "kids_of", "link_child"]


class BlockPool(CacheForest):
    """Metadata of ``num_blocks`` physical blocks. Callers check ``num_available`` before
    ``allocate`` so a failing request never changes anything."""

    def __init__(self, num_blocks: int, policy: EvictionPolicy,
                 max_cached_blocks: int | None = None) -> None:
        self.num_blocks = num_blocks
        self.ref_cnt: list[int] = [0] * num_blocks
        self.block_hash: list[Hashable | None] = [None] * num_blocks
        self.parent: list[int] = [-1] * num_blocks
        # A cached block's cached children: None, one block id (the common chain case, no set
        # allocated), or a set of ids. Truthy iff the block has cached children.
        self.children: list[Children] = [None] * num_blocks
        self.cached: dict[Hashable, int] = {}
        self.free: list[int] = list(range(num_blocks - 1, NULL_BLOCK_ID, -1))
        self.evictor = policy
        self.max_cached_blocks = max_cached_blocks
        self.num_evictions = 0
        self.num_used = 0  # blocks with ref_cnt > 0, kept as a counter (checked by integrity)
        # Eviction listener (see CacheForest.set_evict_listener): [log or None] while observed.
        self._evict_log: list[list[tuple[int, Hashable]] | None] = [None]
        self._evict_listener: EvictListener | None = None
        self.drop_leaf = self._make_drop_leaf()

    # ----------------------------------------------------------------- counts
    @property
    def num_available(self) -> int:
        """Blocks an allocation can get: free plus evictable cached."""
        return self.num_blocks - 1 - self.num_used

    # ------------------------------------------------------------ alloc/free
    def allocate(self, n: int) -> list[int]:
        """Take ``n`` blocks (ref_cnt 1, no hash), evicting cached blocks if the stack is empty."""
        free = self.free
        num_free = len(free)
        if n <= num_free:
            ids = free[num_free - n:]
            del free[num_free - n:]
            ids.reverse()
        else:
            ids = free[::-1]
            free.clear()
            ids += self._evict(n - num_free)
        ref_cnt = self.ref_cnt
        for b in ids:
            ref_cnt[b] = 1
        self.num_used += n
        return ids

    def allocate_one(self) -> int:
        """``allocate(1)[0]`` without the list (the decode hot path)."""
        b = self.free.pop() if self.free else self._evict(1)[0]
        self.ref_cnt[b] = 1
        self.num_used += 1
        return b

    def release(self, block_ids: Iterable[int]) -> int:
        """Drop one reference from each block, in the given order (pass tails first). Returns
        how many blocks lost their last reference (became free or evictable)."""
        ref_cnt, block_hash, free = self.ref_cnt, self.block_hash, self.free
        queue = self.evictor.queue
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
            self.evictor.insert_many(list(evictable), block_hash)
        released = len(free) - free_before + num_cached
        self.num_used -= released
        return released

    def hit(self, block_id: int) -> None:
        """Take a reference to a cached block found by a prefix lookup."""
        self.hit_many((block_id,))

    def hit_many(self, block_ids: Iterable[int]) -> None:
        """Take a reference to each cached block found by a prefix lookup."""
        ref_cnt, evictor = self.ref_cnt, self.evictor
        queue = evictor.queue
        for b in block_ids:
            r = ref_cnt[b]
            if not r:
                if queue is not None:
                    del queue[b]
                else:
                    evictor.remove(b)
                self.num_used += 1
            ref_cnt[b] = r + 1
            if evictor.tracks_hits:
                evictor.touch(b)

    # ------------------------------------------------------------ integrity
    def check_integrity(self) -> None:
        """Raise ``PagedKVError`` if any pool invariant is broken (see the module docstring)."""

        def fail(msg: str) -> None:
            raise PagedKVError(f"block pool integrity: {msg}")

        n = self.num_blocks
        ref_cnt, evictor = self.ref_cnt, self.evictor
        if ref_cnt[NULL_BLOCK_ID] != 0 or self.block_hash[NULL_BLOCK_ID] is not None:
            fail("null block is referenced or cached")
        free = set(self.free)
        if len(free) != len(self.free):
            fail("free stack holds duplicates")
        if NULL_BLOCK_ID in free:
            fail("null block on the free stack")
        for b in range(1, n):
            rc, h = ref_cnt[b], self.block_hash[b]
            if rc < 0:
                fail(f"block {b} ref_cnt {rc} < 0")
            if b in free and (rc != 0 or h is not None):
                fail(f"free block {b} has ref_cnt {rc} / hash {h!r}")
            if (rc == 0 and h is not None) != (b in evictor):
                fail(f"block {b} (ref_cnt {rc}, cached {h is not None}) evictor membership wrong")
            if rc == 0 and h is None and b not in free:
                fail(f"block {b} is unreferenced, uncached and not free (leaked)")
            if h is not None and self.cached.get(h) != b:
                fail(f"block {b} hash not mapped back to it")
            p = self.parent[b]  # meaningful only while b is cached
            if h is not None and p >= 0 and (self.block_hash[p] is None
                                             or b not in kids_of(self.children[p])):
                fail(f"block {b} parent {p} is not cached or does not list it")
            if h is None and self.children[b]:
                fail(f"uncached block {b} lists cached children {self.children[b]}")
            for c in kids_of(self.children[b]):
                if self.block_hash[c] is None or self.parent[c] != b:
                    fail(f"block {b} lists child {c} (cached {self.block_hash[c] is not None}, "
                         f"parent {self.parent[c]})")
        used = sum(1 for rc in ref_cnt if rc > 0)
        if used != self.num_used:
            fail(f"num_used counter {self.num_used} but {used} blocks referenced")
        if len(free) + len(evictor) + used != n - 1:
            fail("free + cached + used != usable blocks")
        if len(self.cached) != sum(1 for h in self.block_hash if h is not None):
            fail("hash map size differs from the number of hashed blocks")
