"""LRU: least recently released first. The default policy, and the fastest path: its whole
state is one OrderedDict, which it exposes as ``queue`` so the pool appends released blocks and
the prefix cache evicts from the front, in their own loops."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

from pagedkv.core.prefix_cache.eviction.base import EvictionPolicy, register_eviction_policy


@register_eviction_policy("lru")
class LRUPolicy(EvictionPolicy):
    """Least recently released first; an OrderedDict gives O(1) for every call.

    Its whole state is ``queue`` (block -> None, least recent first), which it exposes so the
    pool and the prefix cache can append and evict in their own loops, with no call per block
    (``EvictionPolicy.queue``).
    A subclass that overrides any protocol method gets the per-call protocol instead, so its
    overrides are honoured.
    """

    _PROTOCOL = ("insert", "insert_many", "remove", "select", "forget", "record_hit", "pop_leaves")

    def __init__(self, capacity: int) -> None:
        super().__init__(capacity)
        self._queue: OrderedDict[int, None] = OrderedDict()
        cls = type(self)
        plain = all(getattr(cls, m) is getattr(LRUPolicy, m) for m in self._PROTOCOL)
        self.queue = self._queue if plain else None

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
