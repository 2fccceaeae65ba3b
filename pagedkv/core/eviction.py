"""Eviction policies for cached-but-unreferenced blocks, pluggable through a registry.

A policy orders the *evictable set*: blocks that hold a registered prefix-cache entry and have
``ref_cnt == 0``. The block pool drives it through five calls:

* ``insert(block_id, key)`` - the block became evictable (its last reference was released).
  Within one release the pool inserts a sequence's blocks tail-first, so with equal standing a
  child is always ordered before its parent.
* ``remove(block_id)`` - the block left the evictable set without being evicted (a cache hit).
* ``touch(block_id)`` - a prefix lookup hit the block (it may be in use); frequency-aware
  policies count it. Only called when ``tracks_hits`` is true (it is off on LRU's hot path).
* ``select()`` - the next victim; the pool then evicts it (or one of its evictable descendants,
  so that a cached suffix never outlives its prefix) and calls ``forget``.
* ``forget(block_id, key)`` - the block was evicted: drop it and any per-block history.

Hot-path shortcuts: ``insert_many`` and ``pop_leaves`` take a batch of blocks per call. A policy
whose whole state is one insertion-ordered queue (LRU) exposes it as ``queue``, which the pool
then appends to and evicts from in its own loops - no Python call per block, the difference
between ~0.3 M and over 1 M block references per second in a hit-rate replay. The others
override both batch calls with loops that inline their per-block methods step for step (same
victims, same state; tests/core/test_policy_pop_leaves.py checks this), for about 2x.

Policies: ``lru`` (default; by last release), ``fifo`` (by first release after caching, not
refreshed by hits), ``lfu`` (fewest hits, ties by recency) and ``s3fifo``. We chose S3-FIFO
(Yang et al., SOSP'23) as the scan-resistant policy: prompts carry many one-hit-wonder blocks
(unique user suffixes) that a small probationary FIFO filters out before they can push the shared
system prompts out of the main FIFO; it needs only FIFO queues (O(1), no list splicing) and beat
ARC and 2Q on most of the paper's traces. FIFO and LFU keep a sorted deque for blocks that
arrive in order (O(1)) and a heap for the rest (O(log n)).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import ClassVar

EVICTION_POLICIES: dict[str, type[EvictionPolicy]] = {}


def register_eviction_policy(name: str) -> Callable[[type[EvictionPolicy]], type[EvictionPolicy]]:
    """Class decorator adding a policy to ``EVICTION_POLICIES`` under ``name``."""

    def wrap(cls: type[EvictionPolicy]) -> type[EvictionPolicy]:
        cls.name = name
        EVICTION_POLICIES[name] = cls
        return cls

    return wrap


class EvictionPolicy(ABC):
    """Orders the evictable set; see the module docstring for the protocol."""

    name: ClassVar[str] = ""
    tracks_hits: ClassVar[bool] = False

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        # A policy whose entire state is one insertion-ordered queue (``insert`` appends,
        # ``remove``/``forget`` delete, eviction order is iteration order) sets this to it; the
        # pool then appends and evicts in its own loops, with no method call per block.
        self.queue: OrderedDict[int, None] | None = None

    @abstractmethod
    def insert(self, block_id: int, key: Hashable) -> None: ...

    def insert_many(self, block_ids: list[int], block_hash: Sequence[Hashable | None]) -> None:
        """``insert`` each block in order; its key is ``block_hash[block_id]``."""
        for block_id in block_ids:
            self.insert(block_id, block_hash[block_id])

    @abstractmethod
    def remove(self, block_id: int) -> None: ...

    @abstractmethod
    def select(self) -> int:
        """The next victim (not removed). Only called when ``len(self) > 0``."""

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def __contains__(self, block_id: object) -> bool: ...

    def touch(self, block_id: int) -> None:  # noqa: B027 - optional hook
        """A lookup hit ``block_id``."""

    def forget(self, block_id: int, key: Hashable) -> None:
        """``block_id`` left the prefix cache (evicted, or dropped while in use): remove it from
        the evictable set if it is there and drop its history, since the id will be reused."""
        if block_id in self:
            self.remove(block_id)

    def pop_leaves(self, n: int, children: Sequence[object], drop_leaf: Callable[[int], None],
                   block_hash: Sequence[Hashable | None]) -> list[int]:
        """Evict up to ``n`` victims in order and return them, stopping before the first that
        still has cached children (``children[b]`` is truthy iff it has). Each victim is
        forgotten, then handed to ``drop_leaf(b)`` at once, which takes it out of the pool's
        cache, so the next one's leafness is current (a chain's parent becomes a leaf once its
        child is gone). A policy may override it to avoid the per-victim ``select``/``forget``
        calls; a ``queue`` policy never gets it (the pool walks the queue itself)."""
        out: list[int] = []
        while len(out) < n and len(self):
            block_id = self.select()
            if children[block_id]:
                break
            self.forget(block_id, block_hash[block_id])
            drop_leaf(block_id)
            out.append(block_id)
        return out

    @abstractmethod
    def order(self) -> list[int]:
        """Evictable blocks in eviction order, ignoring future promotions (tests, debugging)."""


@register_eviction_policy("lru")
class LRUPolicy(EvictionPolicy):
    """Least recently released first; an OrderedDict gives O(1) for every call.

    Its whole state is ``queue`` (block -> None, least recent first), which it exposes so the
    pool can append and evict in its own loops, with no call per block (``EvictionPolicy.queue``).
    """

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._queue: OrderedDict[int, None] = OrderedDict()
        self.queue = self._queue

    def insert(self, block_id: int, key: Hashable) -> None:
        self._queue[block_id] = None

    def insert_many(self, block_ids: list[int], block_hash: Sequence[Hashable | None]) -> None:
        self._queue.update(dict.fromkeys(block_ids))

    def remove(self, block_id: int) -> None:
        del self._queue[block_id]

    def select(self) -> int:
        return next(iter(self._queue))

    def forget(self, block_id: int, key: Hashable) -> None:
        self._queue.pop(block_id, None)

    def __len__(self) -> int:
        return len(self._queue)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._queue

    def order(self) -> list[int]:
        return list(self._queue)


class _HeapPolicy(EvictionPolicy):
    """Evictable blocks ordered by unique entries ``(rank, clock, block)``, smallest first.

    Most entries are born in order: a block's first release in FIFO, a never-hit block in LFU
    sorts after every such entry before it. Those go to ``_run``, a deque kept sorted by
    appending (O(1)); the rest go to ``_heap``, a min-heap (O(log n)). The victim is the smaller
    of the two heads. Deletion is lazy: ``_live`` maps each evictable block to its current entry
    (the very tuple the run or heap holds, so liveness is an identity test) and any other entry
    is stale, dropped when it reaches a head. Entries are flat tuples since comparing nested
    ones costs about twice as much per heap step.

    ``_history`` is per-block state that survives a hit but not eviction, and the rank: the
    clock at the block's first release if ``RANK_BY_BIRTH`` (FIFO), else its hit count (LFU).
    """

    RANK_BY_BIRTH: ClassVar[bool]
    COMPACT_SLACK = 64  # stale entries tolerated beyond 3 per live one (tests lower it)

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._run: deque[tuple[int, int, int]] = deque()
        self._heap: list[tuple[int, int, int]] = []
        self._live: dict[int, tuple[int, int, int]] = {}
        self._history: dict[int, int] = {}
        self._clock = 0

    def _push_all(self, block_ids: Iterable[int]) -> None:
        """Make each block evictable, in order (``insert`` and ``insert_many`` share it)."""
        run, heap, live, history = self._run, self._heap, self._live, self._history
        by_birth, clock = self.RANK_BY_BIRTH, self._clock
        rank_of = history.setdefault if by_birth else history.get
        for block_id in block_ids:
            clock += 1
            fresh = clock if by_birth else 0  # the rank of a first release / a never-hit block
            rank = rank_of(block_id, fresh)
            entry = live[block_id] = (rank, clock, block_id)
            if rank == fresh:  # sorts after every fresh entry so far
                run.append(entry)
            else:
                heapq.heappush(heap, entry)
        self._clock = clock

    def insert(self, block_id: int, key: Hashable) -> None:
        self._push_all((block_id,))

    def insert_many(self, block_ids: list[int], block_hash: Sequence[Hashable | None]) -> None:
        self._push_all(block_ids)

    def remove(self, block_id: int) -> None:
        """A head entry goes at once (always so for a victim), any other stays, stale."""
        entry = self._live.pop(block_id)
        run, heap = self._run, self._heap
        if run and run[0] is entry:
            run.popleft()
        elif heap and heap[0] is entry:
            heapq.heappop(heap)
        if len(heap) + len(run) > 4 * len(self._live) + self.COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Drop stale entries, in place (callers hold the containers in locals)."""
        live, run, heap = self._live, self._run, self._heap
        kept = [e for e in run if live.get(e[2]) is e]
        run.clear()
        run.extend(kept)
        heap[:] = [e for e in heap if live.get(e[2]) is e]
        heapq.heapify(heap)

    def select(self) -> int:
        run, heap, live = self._run, self._heap, self._live
        while run and live.get(run[0][2]) is not run[0]:
            run.popleft()
        while heap and live.get(heap[0][2]) is not heap[0]:
            heapq.heappop(heap)
        return run[0][2] if run and (not heap or run[0] < heap[0]) else heap[0][2]

    def forget(self, block_id: int, key: Hashable) -> None:
        if block_id in self._live:
            self.remove(block_id)
        self._history.pop(block_id, None)

    def pop_leaves(self, n: int, children: Sequence[object], drop_leaf: Callable[[int], None],
                   block_hash: Sequence[Hashable | None]) -> list[int]:
        """The base loop with ``select``, ``forget`` and ``remove`` inlined step for step, so
        the containers evolve exactly as through the per-call protocol."""
        run, heap, live, history = self._run, self._heap, self._live, self._history
        popleft, heappop, slack = run.popleft, heapq.heappop, self.COMPACT_SLACK
        out: list[int] = []
        append = out.append
        for _ in range(min(n, len(live))):  # each pass takes one live entry, or stops
            while run and live.get(run[0][2]) is not run[0]:
                popleft()
            while heap and live.get(heap[0][2]) is not heap[0]:
                heappop(heap)
            from_run = run and (not heap or run[0] < heap[0])
            block_id = run[0][2] if from_run else heap[0][2]
            if children[block_id]:
                break
            if from_run:  # forget: the entry is a head, so it goes at once (as in remove)
                popleft()
            else:
                heappop(heap)
            del live[block_id]
            if len(heap) + len(run) > 4 * len(live) + slack:
                self._compact()
            history.pop(block_id, None)
            drop_leaf(block_id)
            append(block_id)
        return out

    def __len__(self) -> int:
        return len(self._live)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._live

    def order(self) -> list[int]:
        return [b for _, _, b in sorted(self._live.values())]


@register_eviction_policy("fifo")
class FIFOPolicy(_HeapPolicy):
    """First cached, first out: a block keeps the position of its first release, hits or not."""

    RANK_BY_BIRTH = True


@register_eviction_policy("lfu")
class LFUPolicy(_HeapPolicy):
    """Fewest prefix hits first (counted over the block's cached lifetime), ties LRU."""

    tracks_hits = True
    RANK_BY_BIRTH = False

    def touch(self, block_id: int) -> None:
        self._history[block_id] = self._history.get(block_id, 0) + 1


@register_eviction_policy("s3fifo")
class S3FIFOPolicy(EvictionPolicy):
    """S3-FIFO: a small probationary FIFO (10% of capacity), a main FIFO and a ghost FIFO.

    New blocks enter the small queue unless their key is in the ghost (recently evicted from the
    small queue), in which case they go to main. Eviction from small promotes blocks hit since
    insertion to main; eviction from main re-queues blocks with remaining hits (decrementing).

    Queues hold ``(block, generation)`` entries and ``_where`` maps each evictable block to its
    current entry (the very tuple, so liveness is an identity test): removal is O(1) and lazy,
    except that an entry at the head of its queue (always so for a victim) is dropped at once.
    ``_home`` is the queue a cached block belongs to, also while it is in use.
    """

    tracks_hits = True
    SMALL_FRACTION = 0.1
    MAX_FREQ = 3

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._small: deque[tuple[int, int]] = deque()
        self._main: deque[tuple[int, int]] = deque()
        self._where: dict[int, tuple[int, int]] = {}  # evictable block -> its live entry
        self._home: dict[int, str] = {}  # cached block -> "S" or "M"
        self._freq: dict[int, int] = {}
        self._ghost: OrderedDict[Hashable, None] = OrderedDict()
        self._num_small = 0  # live entries in the small queue
        self._gen = 0
        self._small_target = max(1, int(capacity * self.SMALL_FRACTION))

    def insert(self, block_id: int, key: Hashable) -> None:
        self._push_all((block_id,), {block_id: key})

    def insert_many(self, block_ids: list[int], block_hash: Sequence[Hashable | None]) -> None:
        self._push_all(block_ids, block_hash)

    def _push_all(self, block_ids: Iterable[int],
                  keys: Sequence[Hashable | None] | Mapping[int, Hashable]) -> None:
        """Queue each block, in order: at its home queue, but a block hit while on probation
        is promoted to main, and a new block whose key is in the ghost goes straight there."""
        small, main, where, home, freq, ghost = (self._small, self._main, self._where,
                                                 self._home, self._freq, self._ghost)
        gen, num_small = self._gen, self._num_small
        for block_id in block_ids:
            queue = home.get(block_id)
            if queue is None:
                queue = "S"
                key = keys[block_id]
                if key in ghost:  # evicted from probation recently, yet wanted again
                    del ghost[key]
                    queue = "M"
            elif queue == "S" and freq.get(block_id, 0) > 0:
                queue = "M"
                freq[block_id] = 0
            gen += 1
            entry = where[block_id] = (block_id, gen)
            home[block_id] = queue
            (small if queue == "S" else main).append(entry)
            num_small += queue == "S"
        self._gen, self._num_small = gen, num_small

    def remove(self, block_id: int) -> None:
        entry = self._where.pop(block_id)
        in_small = self._home[block_id] == "S"
        self._num_small -= in_small
        queue = self._small if in_small else self._main
        if queue[0] is entry:  # a head goes at once (always so for a victim)
            queue.popleft()

    def touch(self, block_id: int) -> None:
        self._freq[block_id] = min(self._freq.get(block_id, 0) + 1, self.MAX_FREQ)

    def select(self) -> int:
        where, freq = self._where, self._freq
        while True:
            # Small while it holds its share (or main is empty); the chosen queue has a live
            # entry, since ``_num_small`` counts the small queue's.
            in_small = self._num_small >= self._small_target or len(where) <= self._num_small
            queue = self._small if in_small else self._main
            while where.get(queue[0][0]) is not queue[0]:
                queue.popleft()
            block_id = queue[0][0]
            hits = freq.get(block_id, 0)
            if hits == 0:
                return block_id
            self.remove(block_id)
            freq[block_id] = 0 if in_small else hits - 1
            self._home[block_id] = "M"
            self._push_all((block_id,), ())  # to the back of main (its home: no key needed)

    def forget(self, block_id: int, key: Hashable) -> None:
        if block_id in self._where:
            self.remove(block_id)
        if self._home.pop(block_id, None) == "S":
            self._ghost[key] = None
            if len(self._ghost) > self.capacity:
                self._ghost.popitem(last=False)
        self._freq.pop(block_id, None)

    def pop_leaves(self, n: int, children: Sequence[object], drop_leaf: Callable[[int], None],
                   block_hash: Sequence[Hashable | None]) -> list[int]:
        """The base loop with ``select``, ``forget`` and ``remove`` inlined step for step, so
        the queues evolve exactly as through the per-call protocol. A head with hits left is
        rare (a few percent of victims in a replay): ``select`` itself re-queues it."""
        small, main, where, home, freq, ghost = (self._small, self._main, self._where,
                                                 self._home, self._freq, self._ghost)
        capacity, small_target, num_small = self.capacity, self._small_target, self._num_small
        out: list[int] = []
        append = out.append
        for _ in range(min(n, len(where))):  # each pass takes one live entry, or stops
            in_small = num_small >= small_target or len(where) <= num_small
            queue = small if in_small else main
            while where.get(queue[0][0]) is not queue[0]:
                queue.popleft()
            block_id = queue[0][0]
            if freq.get(block_id):
                self._num_small = num_small
                block_id = self.select()
                num_small = self._num_small
                in_small = home[block_id] == "S"
                queue = small if in_small else main
            if children[block_id]:
                break
            queue.popleft()  # forget
            del where[block_id], home[block_id]
            if in_small:
                num_small -= 1
                ghost[block_hash[block_id]] = None
                if len(ghost) > capacity:
                    ghost.popitem(last=False)
            freq.pop(block_id, None)
            drop_leaf(block_id)
            append(block_id)
        self._num_small = num_small
        return out

    def order(self) -> list[int]:
        where = self._where
        return [e[0] for queue in (self._small, self._main) for e in queue
                if where.get(e[0]) is e]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._where
