"""Hit-rate replay: prefix hit rate vs. cache capacity, through the real block manager.

Operators size a prefix cache by asking what hit rate a given capacity buys. This mode answers
it by replaying a trace's requests in file order (no timing) through the same
:class:`~pagedkv.core.BlockManager` that serves, so the answer includes the manager's real
eviction order (policy, leaf-first, tail-first release): each request is admitted with its
chained block keys (``compute_last_token=False`` — this counts cacheable tokens, not the engine's
last-token recompute), its hit is recorded, it is committed (its prefill has run: only now may
later requests hit its blocks, as in an engine) and freed at once so its blocks stay cached as
evictable. Capacity ``C`` blocks is ``CacheConfig(num_blocks=C + 1)`` (block 0 is the null block).

Counting rules, chosen to be comparable with the independent ``kvcache-simulator``: token
weighted; only the longest cached prefix counts; measured over the requests after a warm-up
fraction (default the last 50%); the trace's partial last prompt block is a cacheable block of
its own (``partial="cache"``: the prompt is padded to whole blocks, as that simulator counts it)
or — like a real engine, which hashes only full blocks — never cached (``partial="drop"``). A
prompt longer than the whole cache is admitted truncated to the capacity.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import numpy as np

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.blocks import BlockStream
from pagedkv.simulator.oracle import HitResult, belady, measured_tokens, warmup_requests

ORACLE_POLICIES = ("belady",)
PARTIAL_MODES = ("cache", "drop")
Progress = Callable[[int, int], None]


def manager_policies() -> list[str]:
    """Eviction policies the block manager offers (its registry)."""
    from pagedkv.core.prefix_cache.eviction import EVICTION_POLICIES

    return sorted(EVICTION_POLICIES)


def replay_manager(
    stream: BlockStream,
    policy: str,
    capacity: int,
    warmup_fraction: float = 0.5,
    partial: str = "cache",
    progress: Progress | None = None,
) -> HitResult:
    """Replay ``stream`` through a ``BlockManager`` of ``capacity`` usable blocks."""
    from pagedkv.core import BlockManager, CacheConfig

    if capacity <= 0:
        raise InvalidArgumentError(f"capacity must be positive, got {capacity} blocks")
    if partial not in PARTIAL_MODES:
        raise InvalidArgumentError(f"partial must be one of {PARTIAL_MODES}, got {partial!r}")
    bs = stream.block_size
    cfg = CacheConfig(
        block_size=bs,
        num_blocks=capacity + 1,
        enable_prefix_caching=True,
        eviction_policy=policy,
        watermark=0.0,
    )
    mgr = BlockManager(cfg)
    nreq = stream.num_requests
    warm = warmup_requests(nreq, warmup_fraction)
    keys: list[int] = stream.keys.tolist()
    starts: list[int] = stream.starts.tolist()
    lens: list[int] = stream.input_lens.tolist()
    cumw: list[int] = np.concatenate([[0], np.cumsum(stream.weights)]).tolist()
    drop = partial == "drop"
    admit, commit, free = mgr.admit, mgr.commit, mgr.free
    hit_tokens = 0
    filled = warm == 0
    tick = max(1, nreq // 200)
    t0 = time.perf_counter()
    for r in range(nreq):
        if r == warm and not filled:
            s = mgr.stats()
            filled = s.evictions > 0 or s.blocks_free == 0
        lo, hi = starts[r], starts[r + 1]
        if drop:
            ntok = lens[r] if hi - lo <= capacity else capacity * bs
            hashes = keys[lo : lo + ntok // bs]
        else:
            nb = min(hi - lo, capacity)
            ntok = nb * bs
            hashes = keys[lo : lo + nb]
        hit = admit(r, num_tokens=ntok, block_hashes=hashes, compute_last_token=False)
        if r >= warm:
            hit_tokens += cumw[lo + hit // bs] - cumw[lo]
        commit((r,))
        free(r)
        if progress is not None and r % tick == 0:
            progress(r, nreq)
    seconds = time.perf_counter() - t0
    if progress is not None:
        progress(nreq, nreq)
    return HitResult(
        policy,
        bs,
        capacity,
        hit_tokens,
        measured_tokens(stream, warm),
        warm,
        filled,
        stream.num_refs,
        seconds,
        mgr.stats().evictions,
    )


def run_policy(
    stream: BlockStream,
    policy: str,
    capacity: int,
    warmup_fraction: float = 0.5,
    partial: str = "cache",
    progress: Progress | None = None,
) -> HitResult:
    """One point of the sweep: a manager policy, or the offline ``belady`` oracle."""
    if policy == "belady":
        return belady(stream, capacity, warmup_fraction)
    known = manager_policies()
    if policy not in known:
        raise InvalidArgumentError(
            f"unknown policy {policy!r}; known: {[*known, *ORACLE_POLICIES]}"
        )
    return replay_manager(stream, policy, capacity, warmup_fraction, partial, progress)


def capacities_for(block_size: int, blocks: Iterable[int], tokens: Iterable[int]) -> list[int]:
    """Capacities in blocks at ``block_size``: explicit block counts plus token budgets
    (``tokens // block_size``), de-duplicated and sorted."""
    caps = set(blocks)
    for t in tokens:
        if t < block_size:
            raise InvalidArgumentError(
                f"capacity of {t} tokens holds no block of {block_size} tokens"
            )
        caps.add(t // block_size)
    bad = [c for c in caps if c <= 0]
    if bad:
        raise InvalidArgumentError(f"capacities must be positive block counts, got {bad}")
    return sorted(caps)
