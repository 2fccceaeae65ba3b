"""S3-FIFO (Yang et al., SOSP'23): the scan-resistant policy. A small probationary FIFO filters
one-hit-wonder blocks (unique user suffixes) before they can push shared system prompts out of
the main FIFO; a ghost FIFO of recently evicted keys sends returning blocks straight to main."""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

from pagedkv.core.prefix_cache.eviction.base import EvictionPolicy, register_eviction_policy


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
    COMPACT_SLACK = 64  # stale entries tolerated beyond 3 per live one (tests lower it)

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

    def _state(
        self,
    ) -> tuple[
        deque[tuple[int, int]],
        deque[tuple[int, int]],
        dict[int, tuple[int, int]],
        dict[int, str],
        dict[int, int],
        OrderedDict[Hashable, None],
    ]:
        """The containers the batch loops bind to locals (one lookup each, not one per block)."""
        return self._small, self._main, self._where, self._home, self._freq, self._ghost

    def insert(self, block_id: int, key: Hashable) -> None:
        self._push_all((block_id,), {block_id: key})

    def insert_many(self, block_ids: list[int], block_hash: Sequence[Hashable | None]) -> None:
        self._push_all(block_ids, block_hash)

    def _push_all(
        self, block_ids: Iterable[int], keys: Sequence[Hashable | None] | Mapping[int, Hashable]
    ) -> None:
        """Queue each block, in order: at its home queue, but a block hit while on probation
        is promoted to main, and a new block whose key is in the ghost goes straight there."""
        small, main, where, home, freq, ghost = self._state()
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
        if len(self._small) + len(self._main) > 4 * len(self._where) + self.COMPACT_SLACK:
            self._compact()

    def _compact(self) -> None:
        """Drop stale entries (hits on blocks away from a queue head leave one each), so the
        queues stay O(evictable blocks) under hit-and-release churn without evictions."""
        where = self._where
        for queue in (self._small, self._main):
            live = [e for e in queue if where.get(e[0]) is e]
            queue.clear()
            queue.extend(live)

    def record_hit(self, block_id: int) -> None:
        self._freq[block_id] = min(self._freq.get(block_id, 0) + 1, self.MAX_FREQ)

    def select(self) -> int:
        freq = self._freq
        while True:
            block_id = self._peek(self._small_target)
            hits = freq.get(block_id, 0)
            if hits == 0:
                return block_id
            self.remove(block_id)
            freq[block_id] = 0 if self._home[block_id] == "S" else hits - 1
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

    def pop_leaves(
        self,
        n: int,
        children: Sequence[object],
        drop_leaf: Callable[[int], None],
        block_hash: Sequence[Hashable | None],
    ) -> list[int]:
        """The base loop with ``select``, ``forget`` and ``remove`` inlined step for step, so
        the queues evolve exactly as through the per-call protocol. A head with hits left is
        rare (a few percent of victims in a replay): ``select`` itself re-queues it."""
        small, main, where, home, freq, ghost = self._state()
        capacity, small_target, slack = self.capacity, self._small_target, self.COMPACT_SLACK
        out: list[int] = []
        append = out.append
        for _ in range(min(n, len(where))):  # each pass takes one live entry, or stops
            if freq.get(self._peek(small_target)):
                self.select()  # re-queues heads with hits left; the head is now a victim
            in_small = self._num_small >= small_target or len(where) <= self._num_small
            queue = small if in_small else main
            block_id = queue[0][0]
            if children[block_id]:
                break
            queue.popleft()  # forget
            del where[block_id], home[block_id]
            if len(small) + len(main) > 4 * len(where) + slack:
                self._compact()
            if in_small:
                self._num_small -= 1
                ghost[block_hash[block_id]] = None
                if len(ghost) > capacity:
                    ghost.popitem(last=False)
            freq.pop(block_id, None)
            drop_leaf(block_id)
            append(block_id)
        return out

    def _peek(self, small_target: int) -> int:
        """The head ``select`` considers: of small while it holds its share (or main is empty),
        else of main; stale entries before it are dropped. The chosen queue has a live entry,
        since ``_num_small`` counts the small queue's."""
        where = self._where
        in_small = self._num_small >= small_target or len(where) <= self._num_small
        queue = self._small if in_small else self._main
        while where.get(queue[0][0]) is not queue[0]:
            queue.popleft()
        return queue[0][0]

    def order(self) -> list[int]:
        where = self._where
        return [e[0] for queue in (self._small, self._main) for e in queue if where.get(e[0]) is e]

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, block_id: object) -> bool:
        return block_id in self._where
