"""The prefix cache: which full blocks are findable by their chained hash, and which go first.

It owns the hash map (``cached``: hash -> block, ``block_hash``: block -> hash), the forest of
cached blocks (``forest.py``), the eviction order (an ``EvictionPolicy`` over the cached blocks
nobody references) and prompt hashing. It never changes a reference count: the ``BlockPool``
releases blocks into ``evictor`` and takes hits out of it, and receives the blocks this cache
evicts (every eviction method returns them, or pushes them onto the free stack it is given).

Eviction removes leaves first (the policy picks a victim; if it still has cached children we
evict down to an evictable descendant instead), and dropping a block also drops its cached
descendants, so a cached suffix never outlives its prefix (it could never be hit).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from itertools import islice
from typing import Any

from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.prefix_cache.block_tokens import BlockTokens
from pagedkv.core.prefix_cache.evict_log import EvictListener, EvictLog
from pagedkv.core.prefix_cache.eviction import EvictionPolicy
from pagedkv.core.prefix_cache.forest import BlockForest, detach, kids_of
from pagedkv.core.prefix_cache.hashing import BlockHasher, HashFn


class PrefixCache:
    """Hash map, forest and eviction order over ``num_blocks`` block ids."""

    def __init__(
        self,
        num_blocks: int,
        policy: EvictionPolicy,
        max_cached_blocks: int | None,
        hash_fn: HashFn,
        block_size: int,
    ) -> None:
        self.cached: dict[Hashable, int] = {}
        self.block_hash: list[Hashable | None] = [None] * num_blocks
        self.forest = BlockForest(num_blocks)
        self.tokens = BlockTokens(num_blocks, block_size)  # for partial-block hits
        self.evictor = policy
        self.max_cached_blocks = max_cached_blocks
        self.hasher = BlockHasher(hash_fn, block_size)
        self.block_size = block_size
        self.num_evictions = 0
        self.evict_log = EvictLog()
        self.drop_leaf = self._make_drop_leaf()

    # ----------------------------------------------------------------- lookup
    def lookup(self, hashes: Sequence[Hashable], max_blocks: int) -> list[int]:
        """Blocks cached under the leading ``hashes`` (at most ``max_blocks``), stopping at
        the first miss: the one prefix lookup (admission, ``lookup_prefix``, pins)."""
        get = self.cached.get
        out: list[int] = []
        add = out.append
        for h in hashes if max_blocks >= len(hashes) else hashes[:max_blocks]:
            b = get(h)
            if b is None:
                break
            add(b)
        return out

    # ------------------------------------------------------------ registration
    def register_chain(
        self,
        block_ids: list[int],
        hashes: Sequence[Hashable],
        start: int,
        end: int,
        free_stack: list[int],
    ) -> int:
        """Make full blocks ``block_ids[start:end]`` findable under ``hashes[start:end]``; block
        ``i``'s parent is whatever is cached under ``hashes[i - 1]`` (none for block 0).

        Returns the index where registration stopped: ``end``, or earlier when the chain broke
        (the parent hash is not cached, the block is the null block, or the cache is at its cap
        with nothing evictable); the caller then stops registering that sequence. A hash already
        cached keeps its existing block (this one stays private, a duplicate) and the chain
        continues through the cached one. Blocks evicted to stay under the cap go onto
        ``free_stack`` (the pool's).
        """
        if start >= end:
            return start
        cached, block_hash, forest = self.cached, self.block_hash, self.forest
        get = cached.get
        prev = -1
        if start:
            found = get(hashes[start - 1])
            if found is None:
                return start
            prev = found
        if end - start == 1 and self.max_cached_blocks is None:  # a decode block, typically
            h, b = hashes[start], block_ids[start]
            if h not in cached:  # else a duplicate: the chain continues through the cached one
                if b == NULL_BLOCK_ID:
                    return start
                cached[h] = b
                block_hash[b] = h
                forest.link(prev, b)
            return end
        i = start
        while i < end:  # leading duplicates: the chain continues through the cached blocks
            existing = get(hashes[i])
            if existing is None:
                break
            prev = existing
            i += 1
        if i == end:
            return end
        new_ids = block_ids[i:end]
        cap = self.max_cached_blocks
        if NULL_BLOCK_ID in new_ids or (cap is not None and len(cached) + len(new_ids) > cap):
            return self._register_slow(block_ids, hashes, i, end, prev, free_stack)
        # Fast path. Block i's hash is not cached, so no later hash of this chain is either (a
        # cached block's parent is always cached), and each new block's parent is the
        # previous new block, which has no children yet.
        cached[hashes[i]] = new_ids[0]
        block_hash[new_ids[0]] = hashes[i]
        forest.link(prev, new_ids[0])
        parent, children = forest.parent, forest.children
        prev = new_ids[0]
        for h, b in zip(hashes[i + 1 : end], new_ids[1:], strict=True):
            cached[h] = b
            block_hash[b] = h
            parent[b] = prev
            children[prev] = b
            prev = b
        return end

    def _register_slow(
        self,
        block_ids: list[int],
        hashes: Sequence[Hashable],
        start: int,
        end: int,
        prev: int,
        free_stack: list[int],
    ) -> int:
        """``register_chain`` one block at a time, for chains that meet the null block or the
        cache cap (which may evict, possibly the chain's own parent)."""
        cached, block_hash, cap = self.cached, self.block_hash, self.max_cached_blocks
        for i in range(start, end):
            h = hashes[i]
            existing = cached.get(h)
            if existing is not None:
                prev = existing
                continue
            b = block_ids[i]
            if b == NULL_BLOCK_ID:
                return i
            if cap is not None and len(cached) >= cap:
                if not self.evictor or cap == 0:
                    return i
                free_stack += self.pop_victims(1)
                if prev >= 0 and block_hash[prev] is None:  # the eviction took our parent
                    return i
            cached[h] = b
            block_hash[b] = h
            self.forest.link(prev, b)
            prev = b
        return end

    # --------------------------------------------------------------- eviction
    def set_evict_listener(self, listener: EvictListener | None) -> None:
        """Observe blocks leaving the prefix cache (eviction, ``uncache``): ``listener`` gets
        their ``(block_id, hash)`` pairs before any of them is reused, so their KV can still be
        saved (a KV tier's write-on-evict). ``None`` stops observing; a non-callable raises
        ``InvalidArgumentError``. An exception the listener raises is contained (logged and
        counted in ``ManagerStats.evict_listener_errors``; the evicting call succeeds): it must
        not leave the eviction half done (``evict_log.py``). The listener must not call back
        into the manager."""
        self.evict_log.listen(listener)

    def pop_victims(self, n: int) -> list[int]:
        """Evict ``n`` unreferenced cached blocks, leaves first, and return their ids (the
        caller owns them now). The caller guarantees ``n <= len(self.evictor)``."""
        evictor = self.evictor
        queue = evictor.queue
        out: list[int] = []
        while len(out) < n:
            if queue is not None:
                leaves = self._pop_queue_leaves(queue, n - len(out))
            else:
                leaves = evictor.pop_leaves(
                    n - len(out), self.forest.children, self.drop_leaf, self.block_hash
                )
            out += leaves
            self.num_evictions += len(leaves)
            if len(out) < n:  # the next victim has cached children
                out += reversed(self._evict_subtree(evictor.select(), n - len(out)))
        if self.evict_log.entries:
            self.evict_log.flush()
        return out

    def pop_victim(self) -> int:
        """``pop_victims(1)[0]`` by the shortest path when a queue policy's head is a leaf (a
        full cache under decode evicts one block per boundary crossed)."""
        queue = self.evictor.queue
        if queue is not None:
            b = next(iter(queue))
            if not self.forest.children[b]:
                queue.popitem(last=False)
                self.drop_leaf(b)
                self.num_evictions += 1
                if self.evict_log.entries:
                    self.evict_log.flush()
                return b
        return self.pop_victims(1)[0]

    def _pop_queue_leaves(self, queue: OrderedDict[int, None], n: int) -> list[int]:
        """``EvictionPolicy.pop_leaves`` for a queue policy, inlined: the hot loop of a full
        cache. Walks the queue without popping (each dropped leaf may turn its parent, usually
        the next entry, into a leaf), then pops the taken prefix in one C-level pass."""
        cached, block_hash = self.cached, self.block_hash
        parent, children = self.forest.parent, self.forest.children
        log = self.evict_log.entries
        out: list[int] = []
        append = out.append
        for b in islice(queue, n):
            if children[b]:
                break
            if log is not None:
                log.append((b, block_hash[b]))
            del cached[block_hash[b]]
            block_hash[b] = None
            p = parent[b]
            if p >= 0:  # forest.detach(children, p, b), inlined
                kids = children[p]
                if type(kids) is set:
                    kids.discard(b)
                else:
                    children[p] = None
            append(b)
        deque(map(queue.pop, out), 0)  # pop them all in C (a zero-length deque drains the map)
        return out

    def _evict_subtree(self, root: int, want: int) -> list[int]:
        """Evict up to ``want`` unreferenced blocks at and below ``root`` in post-order and
        return them. The walk descends through referenced (in-use) cached blocks too, so an
        unreferenced leaf below them goes first; an unreferenced block is dropped only once
        every cached block below it is in use, so each ``uncache`` frees exactly that block
        (the in-use ones below leave the cache and stay with their sequences). ``root`` is
        the policy's victim (unreferenced), so at least one block goes. O(subtree)."""
        out: list[int] = []
        evictor = self.evictor
        for node in self.forest.post_order(root):
            if len(out) >= want:
                break
            if node in evictor:  # cached and unreferenced
                out += self.uncache(node)
        return out

    def uncache(self, block_id: int) -> list[int]:
        """Drop ``block_id`` and all its cached descendants from the cache; returns the
        unreferenced ones (now free: each counts as an eviction). Referenced ones stay with
        their sequences as private blocks."""
        self.forest.unlink(block_id)
        log, evictor, children = self.evict_log.entries, self.evictor, self.forest.children
        freed: list[int] = []
        stack = [block_id]
        while stack:
            b = stack.pop()
            h = self.block_hash[b]
            if log is not None and h is not None:
                log.append((b, h))
            del self.cached[h]
            self.block_hash[b] = None
            if b in evictor:
                freed.append(b)
            evictor.forget(b, h)
            stack.extend(kids_of(children[b]))
            children[b] = None
        self.num_evictions += len(freed)
        if log:
            self.evict_log.flush()
        return freed

    def _make_drop_leaf(self) -> Callable[[int], None]:
        """``drop_leaf(b)``: take a childless cached block out of the cache (hash map, hash,
        parent link); the eviction fast path. A closure over the cache's lists (no attribute
        lookups but the listener's log)."""
        cached, block_hash = self.cached, self.block_hash
        parent, children = self.forest.parent, self.forest.children
        evict_log = self.evict_log

        def drop_leaf(block_id: int) -> None:
            log = evict_log.entries
            if log is not None:
                log.append((block_id, block_hash[block_id]))
            del cached[block_hash[block_id]]
            block_hash[block_id] = None
            detach(children, parent[block_id], block_id)

        return drop_leaf

    def reset(self) -> list[int]:
        """Forget every cached hash; returns the unreferenced cached blocks (now free)."""
        freed: list[int] = []
        for b in [b for b in self.cached.values() if self.forest.parent[b] == -1]:
            freed += self.uncache(b)
        return freed

    # -------------------------------------------------------------- integrity
    def problem(self, ref_cnt: Sequence[int]) -> str | None:
        """What breaks the cache's invariants, if anything: the hash map and ``block_hash``
        agree; exactly the unreferenced cached blocks are evictable; the forest is sound."""
        evictor, cached = self.evictor, self.cached
        if self.block_hash[NULL_BLOCK_ID] is not None:
            return "null block is cached"
        for b, h in enumerate(self.block_hash):
            if h is not None and cached.get(h) != b:
                return f"block {b} hash not mapped back to it"
            if b and (ref_cnt[b] == 0 and h is not None) != (b in evictor):
                return (
                    f"block {b} (ref_cnt {ref_cnt[b]}, cached {h is not None}) evictor "
                    f"membership wrong"
                )
        if len(cached) != sum(1 for h in self.block_hash if h is not None):
            return "hash map size differs from the number of hashed blocks"
        return self.forest.problem(self.block_hash)

    def snapshot(self) -> dict[str, Any]:
        """Copies of all state that decides future hits and evictions (for comparisons)."""
        return {
            "cached": dict(self.cached),
            "block_hash": list(self.block_hash),
            "parent": list(self.forest.parent),
            "children": [sorted(kids_of(c)) for c in self.forest.children],
            "eviction_order": self.evictor.order(),
            "num_evictions": self.num_evictions,
        }
