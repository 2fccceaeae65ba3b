"""Attribute declarations shared by the manager and its mixins (typing only)."""

from __future__ import annotations

from array import array
from collections.abc import Callable, Hashable, Iterable
from typing import TYPE_CHECKING

from pagedkv.core.block_pool import BlockPool
from pagedkv.core.config import CacheConfig
from pagedkv.core.pressure import PressureMonitor
from pagedkv.core.sequence import Sequence
from pagedkv.core.stats import Counters


class ManagerState:
    """What every part of ``BlockManager`` may read; assigned in ``BlockManager.__init__``."""

    config: CacheConfig
    block_size: int
    pool: BlockPool
    counters: Counters
    pressure: PressureMonitor
    _seqs: dict[Hashable, Sequence]
    _copies: dict[int, int]
    _held: list[int]
    _num_swapped: int  # sequences swapped out to the host pool
    _unregistered: dict[Hashable, Sequence]  # hashed blocks not yet offered (commit.py)
    _pins: dict[int, list[int]]
    _next_pin: int
    _host_free: list[int]
    _caching: bool
    _min_cache_tokens: int
    _clock: int
    _watermark_blocks: int
    _hash_fn: Callable[[bytes], bytes]

    if TYPE_CHECKING:  # defined by BlockManager

        def seq(self, seq_id: Hashable) -> Sequence: ...

        def _running(self, seq_id: Hashable) -> Sequence: ...

        def _release(self, blocks: Iterable[int]) -> None: ...

        def _after_alloc(self) -> None: ...

        def _register(self, seq: Sequence, upto: int) -> None: ...

        def _track(self, seq: Sequence) -> None: ...

        def free(self, seq_id: Hashable) -> None: ...

        def _token_hashes(self, root: bytes, tokens: array[int]) -> list[Hashable]: ...
