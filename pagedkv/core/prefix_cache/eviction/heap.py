"""FIFO and LFU: evictable blocks ordered by a rank (first release / hit count), kept in a sorted
deque for entries that arrive in order plus a heap for the rest."""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import ClassVar

from pagedkv.core.prefix_cache.eviction.base import EvictionPolicy, register_eviction_policy


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

    def pop_leaves(
        self,
        n: int,
        children: Sequence[object],
        drop_leaf: Callable[[int], None],
        block_hash: Sequence[Hashable | None],
    ) -> list[int]:
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

    def record_hit(self, block_id: int) -> None:
        self._history[block_id] = self._history.get(block_id, 0) + 1
