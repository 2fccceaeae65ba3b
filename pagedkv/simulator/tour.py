"""The block manager's tour (``pagedkv demo --blocks``): a small chat workload, no model.

Requests use one of six shared prompts (few-shot templates) whose popularity falls off as
1/rank^1.2, and every fourth request is a one-off 320-token document that is never reused. They
arrive one after another into a small pool: later requests find their shared prompt's blocks in
the prefix cache, one in eight forks for parallel sampling (copy-on-write), all decode a few
dozen tokens, the oldest finish, and the pool is small enough that sequences are preempted and
cached blocks evicted. Which cached blocks survive is the eviction policy's choice, so the
policy changes the hit rate: on this workload lfu and s3fifo keep the popular prompts best and
fifo worst (seed 0, 48 requests: lfu 40.5%, s3fifo 40.1%, lru 37.8%, fifo 34.1%).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pagedkv.core import BlockManager, CacheConfig
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError

TOUR_PROMPTS = 6  # shared prompts (few-shot templates), popularity ~ 1/rank**1.2
TOUR_DOCUMENT_EVERY = 4  # every 4th request is a one-off 320-token document (never reused)


def _tour_prompt(
    rng: np.random.Generator, r: int, shared: list[list[int]]
) -> tuple[list[int], str]:
    if r % TOUR_DOCUMENT_EVERY == TOUR_DOCUMENT_EVERY - 1:
        return rng.integers(0, 32000, 320).tolist(), "one-off document"
    weights = 1 / np.arange(1, len(shared) + 1) ** 1.2
    k = int(rng.choice(len(shared), p=weights / weights.sum()))
    user = rng.integers(0, 32000, int(rng.integers(8, 80))).tolist()
    return shared[k] + user, f"prompt #{k + 1}"


def _tour_preempt(mgr: BlockManager, running: list[str], say: Callable[..., None]) -> None:
    victim = str(mgr.select_victims(1, policy="newest")[0])
    mgr.free(victim)  # a real engine would requeue it for recompute
    running.remove(victim)
    say(f"  preempted {victim} to make room")


def _tour_decode(
    mgr: BlockManager, running: list[str], rng: np.random.Generator, say: Callable[..., None]
) -> None:
    for _ in range(int(rng.integers(4, 40))):
        tokens = rng.integers(0, 32000, len(running))
        while True:
            try:
                mgr.append_batch(list(running), tokens[: len(running)])
                break
            except OutOfBlocksError:  # the failed call changed nothing: make room, retry
                _tour_preempt(mgr, running, say)
        mgr.commit(list(running))  # the decode step's forward wrote their KV


def run_demo(
    *,
    num_requests: int = 48,
    block_size: int = 16,
    num_blocks: int = 120,
    policy: str = "lru",
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, float | int | None]:
    """Run the block manager's built-in workload; returns the final statistics as a dict.

    Requests use one of six shared prompts of skewed popularity, and every fourth is a one-off
    document that competes for the small pool, so the eviction policy changes the hit rate
    (lfu and s3fifo keep the popular prompts best, fifo worst)."""
    if num_requests <= 0:
        raise InvalidArgumentError(f"--requests must be positive, got {num_requests}")
    rng = np.random.default_rng(seed)
    cfg = CacheConfig.from_memory_budget(  # pays for num_blocks - 1 usable + the null block
        (num_blocks - 1) * block_size * 2 * 4 * 8 * 64 * 2,
        block_size=block_size,
        num_layers=4,
        num_kv_heads=8,
        head_dim=64,
        dtype="float16",
        eviction_policy=policy,
    )
    mgr = BlockManager(cfg)
    say: Callable[..., None] = print if verbose else (lambda *a, **k: None)
    say(
        f"pool: {cfg.num_usable_blocks} usable blocks x {block_size} tokens "
        f"({(cfg.total_bytes or 0) / 2**20:.1f} MiB of fp16 KV for a 4-layer, 8-head, "
        f"64-dim model), eviction={policy}"
    )
    shared = [
        rng.integers(0, 32000, int(rng.integers(6, 11)) * block_size).tolist()
        for _ in range(TOUR_PROMPTS)
    ]
    running: list[str] = []
    for r in range(num_requests):
        prompt, what = _tour_prompt(rng, r, shared)
        sid = f"req{r}"
        while not mgr.can_admit(len(prompt)) and running:
            _tour_preempt(mgr, running, say)
        hit = mgr.admit(sid, prompt)
        mgr.commit([sid])  # the prefill wrote its KV: its full blocks become findable
        running.append(sid)
        if r < 4 or r % 8 == 0:  # the first four, and every one that forks
            say(
                f"{sid}: {what}, {len(prompt)} tokens, {hit} from cache, blocks "
                f"{mgr.block_table(sid)[:6]}{'...' if mgr.num_tokens(sid) > 96 else ''}"
            )
        if r % 8 == 0:  # parallel sampling: two continuations share everything so far
            mgr.fork(sid, f"{sid}.b")
            running.append(f"{sid}.b")
        _tour_decode(mgr, running, rng, say)
        copies = mgr.take_copies()  # a storage layer would copy these blocks now
        if r % 8 == 0:
            say(f"  {sid} forked into {sid}.b; copy-on-write copies (src, dst): {copies[:4]}")
        while len(running) > 4:  # the oldest finish
            mgr.free(running.pop(0))
        mgr.check_integrity()
    for sid in running:
        mgr.free(sid)
    mgr.check_integrity()
    _tour_summary(mgr, say)
    return mgr.stats().as_dict()


def _tour_summary(mgr: BlockManager, say: Callable[..., None]) -> None:
    st = mgr.stats()
    # A block's last release ends one use; a use starts by allocation or by a prefix hit on a
    # cached, unreferenced block. Every sequence has been freed here, so the difference counts
    # the cached blocks that prefix hits brought back into use.
    revived = st.frees - st.allocations
    say("\nstatistics (the requests not printed above ran the same way)")
    for name, value in [
        ("prefix hit rate (tokens)", f"{st.hit_rate:.1%}"),
        ("prefix hit rate (requests)", f"{st.request_hit_rate:.1%}"),
        ("blocks allocated", f"{st.allocations} (from the free list or by evicting)"),
        ("cached blocks reused by hits", f"{revived} (back in use without allocating)"),
        ("blocks released", f"{st.frees} (= allocated + reused: every request finished)"),
        ("evictions", st.evictions),
        ("copy-on-write copies", st.cow_copies),
        ("forks", st.forks),
        ("peak usage", f"{st.peak_usage:.1%}"),
        ("cached blocks left", st.blocks_cached),
    ]:
        say(f"  {name:<28} {value}")
    say("(the same workload under another eviction policy: --policy lru, fifo, lfu or s3fifo)")
