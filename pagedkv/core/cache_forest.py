"""The cached-block forest: registering chains of full blocks and leaf-first eviction.

A cached block's ``parent`` is the block cached under its parent hash (-1 for a root; the entry
is stale, and unused, once the block leaves the cache); ``children[b]`` is ``None``, one block id
(the common chain case, no set allocated) or a set of ids. Eviction removes leaves first (the
policy picks a victim; if it still has evictable cached children we evict down to one of those
instead), and dropping a block from the cache also drops its cached descendants, so a cached
suffix never outlives its prefix (it could never be hit).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from itertools import islice

from pagedkv.core.eviction import EvictionPolicy

NULL_BLOCK_ID = 0

Children = int | set[int] | None


def link_child(children: list[Children], parent: int, child: int) -> None:
    """Record ``child`` under ``parent`` in ``BlockPool.children``."""
    kids = children[parent]
    if kids is None:
        children[parent] = child
    elif isinstance(kids, int):
        children[parent] = {kids, child}
    else:
        kids.add(child)


def kids_of(children: Children) -> tuple[int, ...] | set[int]:
    """The block ids in one ``BlockPool.children`` entry."""
    if children is None:
        return ()
    return (children,) if isinstance(children, int) else children


# Called with ``[(block_id, hash)]`` of blocks that just left the prefix cache, while their KV
# is still intact (before the pool hands them to a new owner).
EvictListener = Callable[[list[tuple[int, Hashable]]], None]


class CacheForest:
    """Mixin of ``BlockPool``: the prefix-cache map, the forest and eviction."""

    ref_cnt: list[int]
    block_hash: list[Hashable | None]
    parent: list[int]
    children: list[Children]
    cached: dict[Hashable, int]
    free: list[int]
    evictor: EvictionPolicy
    max_cached_blocks: int | None
    num_evictions: int
    drop_leaf: Callable[[int], None]
    _evict_log: list[list[tuple[int, Hashable]] | None]
    _evict_listener: EvictListener | None

    def set_evict_listener(self, listener: EvictListener | None) -> None:
        """Observe blocks leaving the prefix cache (eviction, ``uncache``): ``listener`` gets
        their ``(block_id, hash)`` pairs before any of them is reused, so their KV can still be
        saved (a KV tier's write-on-evict). ``None`` stops observing. The eviction loops pay one
        ``is None`` test per evicted block when nobody listens."""
        self._evict_listener = listener
        self._evict_log[0] = [] if listener is not None else None

    def _flush_evicted(self) -> None:
        log = self._evict_log[0]
        if log and self._evict_listener is not None:
            self._evict_log[0] = []
            self._evict_listener(log)

    def register_chain(self, block_ids: list[int], hashes: list[Hashable], start: int,
                       end: int) -> int:
        """Make full blocks ``block_ids[start:end]`` findable under ``hashes[start:end]``; block
        ``i``'s parent is whatever is cached under ``hashes[i - 1]`` (none for block 0).

        Returns the index where registration stopped: ``end``, or earlier when the chain broke
        (the parent hash is not cached, the block is the null block, or the cache is at its cap
        with nothing evictable); the caller then stops registering that sequence. A hash already
        cached keeps its existing block (this one stays private, a duplicate) and the chain
        continues through the cached one.
        """
        if start >= end:
            return start
        cached, block_hash, parent, children = (self.cached, self.block_hash, self.parent,
                                                self.children)
        get = cached.get
        if start == 0:
            prev = -1
        else:
            found = get(hashes[start - 1])
            if found is None:
                return start
            prev = found
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
            return self._register_slow(block_ids, hashes, i, end, prev)
        # Fast path. Block i's hash is not cached, so no later hash of this chain is either (a
        # cached block's parent is always cached), and each new block's parent is the
        # previous new block, which has no children yet.
        first, h = new_ids[0], hashes[i]
        cached[h] = first
        block_hash[first] = h
        parent[first] = prev
        if prev >= 0:
            link_child(children, prev, first)
        prev = first
        for h, b in zip(hashes[i + 1:end], new_ids[1:], strict=True):
            cached[h] = b
            block_hash[b] = h
            parent[b] = prev
            children[prev] = b
            prev = b
        return end

    def _register_slow(self, block_ids: list[int], hashes: list[Hashable], start: int,
                       end: int, prev: int) -> int:
        """``register_chain`` one block at a time, for chains that meet the null block or the
        cache cap (which may evict, possibly the chain's own parent)."""
        cached, block_hash, parent, children = (self.cached, self.block_hash, self.parent,
                                                self.children)
        cap = self.max_cached_blocks
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
                self.free.append(self._evict(1)[0])
                if prev >= 0 and block_hash[prev] is None:  # the eviction took our parent
                    return i
            cached[h] = b
            block_hash[b] = h
            parent[b] = prev
            if prev >= 0:
                link_child(children, prev, b)
            prev = b
        return end

    def evict(self, n: int) -> int:
        """Evict up to ``n`` cached unreferenced blocks to the free stack; returns how many
        (exactly the number that left the cache for the free stack)."""
        done = min(n, len(self.evictor))
        self.free += self._evict(done)
        return done

    def _evict(self, n: int) -> list[int]:
        """Evict at least ``n`` cached blocks, leaves first; return ``n`` freed block ids (off
        the free stack). The caller guarantees ``n <= len(self.evictor)``."""
        evictor = self.evictor
        queue, free = evictor.queue, self.free
        out: list[int] = []
        while len(out) < n:
            if queue is not None:
                leaves = self._pop_queue_leaves(queue, n - len(out))
            else:
                leaves = evictor.pop_leaves(n - len(out), self.children, self.drop_leaf,
                                            self.block_hash)
            out += leaves
            self.num_evictions += len(leaves)
            if len(out) < n:  # the next victim has cached children
                before = len(free)
                self._evict_subtree(evictor.select(), n - len(out))
                for _ in range(min(len(free) - before, n - len(out))):
                    out.append(free.pop())
        if self._evict_log[0]:
            self._flush_evicted()
        return out

    def _pop_queue_leaves(self, queue: OrderedDict[int, None], n: int) -> list[int]:
        """``EvictionPolicy.pop_leaves`` for a queue policy, inlined: the hot loop of a full
        cache. Walks the queue without popping (each dropped leaf may turn its parent, usually
        the next entry, into a leaf), then pops the taken prefix in one C-level pass."""
        cached, block_hash, parent, children = (self.cached, self.block_hash, self.parent,
                                                self.children)
        log = self._evict_log[0]
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
            if p >= 0:
                kids = children[p]
                if kids == b:
                    children[p] = None
                else:
                    kids.discard(b)  # type: ignore[union-attr]
            append(b)
        deque(map(queue.pop, out), 0)  # pop them all in C (a zero-length deque drains the map)
        return out

    def _evict_subtree(self, root: int, want: int) -> None:
        """Evict up to ``want`` unreferenced blocks at and below ``root`` in post-order
        (children before parents), pushing exactly that many to the free stack. The walk also
        descends through referenced (in-use) cached blocks, so an unreferenced leaf below them
        goes first; an unreferenced block is dropped only once every cached block below it is
        in use, so ``uncache`` frees exactly that one block (the in-use ones below leave the
        cache and stay with their sequences). ``root`` is unreferenced (the policy's victim),
        so at least one block goes. One pass costs O(subtree)."""
        ref_cnt, children = self.ref_cnt, self.children
        done = 0
        stack: list[tuple[int, bool]] = [(root, False)]
        while stack and done < want:
            node, expanded = stack.pop()
            if not expanded:
                stack.append((node, True))
                stack.extend((c, False) for c in kids_of(children[node]))
            elif ref_cnt[node] == 0:
                self.uncache(node)
                done += 1

    def uncache(self, block_id: int) -> None:
        """Drop ``block_id`` and all its cached descendants from the prefix cache. Unreferenced
        ones go to the free stack (each counts as an eviction); referenced ones stay with their
        sequences as private blocks."""
        self.unlink(block_id)
        log = self._evict_log[0]
        stack = [block_id]
        while stack:
            b = stack.pop()
            h = self.block_hash[b]
            if log is not None and h is not None:
                log.append((b, h))
            del self.cached[h]
            self.block_hash[b] = None
            self.evictor.forget(b, h)
            if self.ref_cnt[b] == 0:
                self.free.append(b)
                self.num_evictions += 1
            stack.extend(kids_of(self.children[b]))
            self.children[b] = None
        if log:
            self._flush_evicted()

    def _make_drop_leaf(self) -> Callable[[int], None]:
        """``drop_leaf(b)``: take a childless cached block out of the cache (hash map, hash,
        parent link); the eviction fast path. A closure, so each call touches no attributes."""
        cached, block_hash, parent, children = (self.cached, self.block_hash, self.parent,
                                                self.children)
        log_box = self._evict_log

        def drop_leaf(block_id: int) -> None:
            log = log_box[0]
            if log is not None:
                log.append((block_id, block_hash[block_id]))
            del cached[block_hash[block_id]]
            block_hash[block_id] = None
            p = parent[block_id]
            if p >= 0:
                kids = children[p]
                if isinstance(kids, set):
                    kids.discard(block_id)
                else:
                    children[p] = None

        return drop_leaf

    def unlink(self, block_id: int) -> None:
        """Detach a cached block from its cached parent (it is about to leave the cache)."""
        p = self.parent[block_id]
        if p >= 0:
            kids = self.children[p]
            if isinstance(kids, set):
                kids.discard(block_id)
            else:
                self.children[p] = None

    def reset_cache(self) -> None:
        """Forget every cached hash; unreferenced cached blocks become free."""
        for b in [b for b in self.cached.values() if self.parent[b] == -1]:
            self.uncache(b)
