"""Upper bounds for prefix-cache hit rate: the infinite cache and Belady's offline optimum.

A serving engine can never know the future, so the block manager has no Belady policy; but an
operator needs to know how far a real policy is from the best possible one at the same capacity.
Both bounds are computed here, over exactly the same chained block keys that the manager sees
(:mod:`pagedkv.simulator.blocks`), and with the same counting rules as the manager replay: a
request scores the token weight of its longest cached prefix, measured over the requests after
the warm-up window.

Belady (MIN with bypass) keeps the cache *prefix-closed* like the manager does (only leaf blocks
— cached blocks with no cached child — are evicted), evicts the leaf whose next use is farthest
in the future, and declines to insert a block whose own next use is farther than every eviction
candidate's. The blocks of the request being served are protected while it inserts.
"""

from __future__ import annotations

import heapq
import math
import time
from dataclasses import asdict, dataclass

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import BlockStream, next_use, parents


@dataclass
class HitResult:
    """Token-weighted prefix hit rate of one (policy, block size, capacity) replay."""

    policy: str
    block_size: int
    capacity_blocks: int | None  # None = infinite
    hit_tokens: int
    total_tokens: int
    warmup_requests: int
    filled_before_window: bool
    block_refs: int
    seconds: float
    evictions: int = 0

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.total_tokens if self.total_tokens else 0.0

    @property
    def refs_per_second(self) -> float:
        return self.block_refs / self.seconds if self.seconds > 0 else math.inf

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["hit_rate"] = self.hit_rate
        d["refs_per_second"] = self.refs_per_second if self.seconds > 0 else None
        return d


def warmup_requests(num_requests: int, warmup_fraction: float) -> int:
    """Requests replayed before measuring; ``floor(n * fraction)`` as kvcache-simulator does."""
    if not 0.0 <= warmup_fraction < 1.0:
        raise InvalidArgumentError(f"warmup fraction must be in [0, 1), got {warmup_fraction}")
    return math.floor(num_requests * warmup_fraction)


def measured_tokens(stream: BlockStream, warmup: int) -> int:
    return int(stream.input_lens[warmup:].sum())


def infinite_cache(stream: BlockStream, warmup_fraction: float = 0.5) -> HitResult:
    """Hit rate of an unbounded cache: a block hits iff any earlier request used it.

    Keys are chained, so a block seen before implies its whole prefix was seen before; the
    longest cached prefix is therefore just the set of previously seen blocks.
    """
    t0 = time.perf_counter()
    warm = warmup_requests(stream.num_requests, warmup_fraction)
    _, first = np.unique(stream.keys, return_index=True)
    seen = np.ones(stream.num_refs, dtype=bool)
    seen[first] = False
    lo = int(stream.starts[warm])
    hit = int(stream.weights[lo:][seen[lo:]].sum())
    return HitResult(
        "infinite",
        stream.block_size,
        None,
        hit,
        measured_tokens(stream, warm),
        warm,
        True,
        stream.num_refs,
        time.perf_counter() - t0,
    )


def belady(stream: BlockStream, capacity: int, warmup_fraction: float = 0.5) -> HitResult:
    """Offline-optimal (Belady MIN with bypass) prefix hit rate at ``capacity`` blocks."""
    if capacity <= 0:
        raise InvalidArgumentError(f"capacity must be positive, got {capacity} blocks")
    t0 = time.perf_counter()
    ids_a, nxt_a, n_unique = next_use(stream)
    par_l: list[int] = parents(stream, ids_a, n_unique).tolist()
    ids: list[int] = ids_a.tolist()
    nxt: list[int] = nxt_a.tolist()
    weights: list[int] = stream.weights.tolist()
    starts: list[int] = stream.starts.tolist()
    nreq = stream.num_requests
    warm = warmup_requests(nreq, warmup_fraction)

    present = bytearray(n_unique)
    children = [0] * n_unique
    key = [0] * n_unique  # next use of a cached block
    version = [0] * n_unique
    guard = [-1] * n_unique  # request index that currently protects the block
    heap: list[tuple[int, int, int, int]] = []  # (-next use, -push seq, version, block)
    seq = 0
    size = 0
    hit_tokens = 0
    evictions = 0
    filled = False
    push = heapq.heappush
    pop = heapq.heappop

    for r in range(nreq):
        lo, hi = starts[r], starts[r + 1]
        i = lo
        while i < hi and present[ids[i]]:  # prefix-closed: present blocks form the prefix
            b = ids[i]
            guard[b] = r
            key[b] = nxt[i]
            if children[b] == 0:
                version[b] += 1
                seq += 1
                push(heap, (-nxt[i], -seq, version[b], b))
            i += 1
        if r >= warm:
            hit_tokens += sum(weights[lo:i])
        while i < hi:
            b = ids[i]
            if size >= capacity:
                skipped = []
                victim = -1
                while heap:
                    item = pop(heap)
                    v = item[3]
                    if not present[v] or children[v] or version[v] != item[2]:
                        continue
                    if guard[v] == r:
                        skipped.append(item)
                        continue
                    victim = v
                    if -item[0] <= nxt[i]:  # inserting b would be the worse choice: bypass
                        skipped.append(item)
                        victim = -1
                    break
                for item in skipped:
                    push(heap, item)
                if victim < 0:
                    break
                present[victim] = 0
                size -= 1
                evictions += 1
                p = par_l[victim]
                if p >= 0:
                    children[p] -= 1
                    if children[p] == 0 and present[p]:
                        version[p] += 1
                        seq += 1
                        push(heap, (-key[p], -seq, version[p], p))
            p = par_l[b]
            present[b] = 1
            size += 1
            guard[b] = r
            key[b] = nxt[i]
            if p >= 0:
                children[p] += 1
            version[b] += 1
            seq += 1
            push(heap, (-nxt[i], -seq, version[b], b))
            i += 1
        if size >= capacity and r < warm:
            filled = True
    return HitResult(
        "belady",
        stream.block_size,
        capacity,
        hit_tokens,
        measured_tokens(stream, warm),
        warm,
        filled or warm == 0,
        stream.num_refs,
        time.perf_counter() - t0,
        evictions,
    )
