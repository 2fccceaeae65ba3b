"""``pagedkv demo``: a short, offline tour of the block manager on a built-in workload.

A chat service with one shared system prompt: requests arrive in waves, share the system prompt
through the prefix cache, some fork for parallel sampling (copy-on-write), decode, finish; the
pool is small enough that cached blocks get evicted. Prints what happened and the statistics.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from pagedkv.core import BlockManager, CacheConfig


def run_demo(*, num_requests: int = 48, block_size: int = 16, num_blocks: int = 160,
             policy: str = "lru", seed: int = 0,
             verbose: bool = True) -> dict[str, float | int | None]:
    """Run the built-in workload; returns the final statistics as a dict."""
    rng = np.random.default_rng(seed)
    cfg = CacheConfig.from_memory_budget(
        num_blocks * block_size * 2 * 4 * 8 * 64 * 2, block_size=block_size, num_layers=4,
        num_kv_heads=8, head_dim=64, dtype="float16", eviction_policy=policy)
    mgr = BlockManager(cfg)
    say = print if verbose else (lambda *a, **k: None)
    say(f"pool: {cfg.num_blocks} blocks x {block_size} tokens "
        f"({(cfg.total_bytes or 0) / 2**20:.1f} MiB of fp16 KV for a 4-layer, 8-head, "
        f"64-dim model), "
        f"eviction={policy}")
    system_prompt = rng.integers(0, 32000, 64).tolist()
    running: list[str] = []
    for r in range(num_requests):
        user = rng.integers(0, 32000, int(rng.integers(8, 80))).tolist()
        sid = f"req{r}"
        while not mgr.can_admit(len(system_prompt) + len(user)) and running:
            victim = str(mgr.select_victims(1, policy="newest")[0])
            mgr.free(victim)  # a real engine would requeue it for recompute
            running.remove(victim)
            say(f"  preempted {victim} to make room")
        hit = mgr.admit(sid, system_prompt + user)
        running.append(sid)
        if r < 3 or r % 12 == 0:
            say(f"{sid}: prompt {len(system_prompt) + len(user)} tokens, {hit} from cache, "
                f"blocks {mgr.block_table(sid)[:6]}{'...' if mgr.num_tokens(sid) > 96 else ''}")
        if r % 8 == 0:  # parallel sampling: two continuations share everything so far
            mgr.fork(sid, f"{sid}.b")
            running.append(f"{sid}.b")
        for _ in range(int(rng.integers(4, 40))):
            ids = list(running)
            mgr.append_batch(ids, rng.integers(0, 32000, len(ids)))
        copies = mgr.take_copies()  # a storage layer would copy these blocks now
        if copies and r % 8 == 0:
            say(f"  fork of {sid}: copy-on-write copies {copies[:4]}")
        while len(running) > 6:  # the oldest finish
            done = running.pop(0)
            mgr.free(done)
        mgr.check_integrity()
    for sid in running:
        mgr.free(sid)
    mgr.check_integrity()
    st = mgr.stats()
    say("\nstatistics")
    rows: list[tuple[str, object]] = [("prefix hit rate (tokens)", f"{st.hit_rate:.1%}"),
            ("prefix hit rate (requests)", f"{st.request_hit_rate:.1%}"),
            ("blocks allocated / freed", f"{st.allocations} / {st.frees}"),
            ("evictions", st.evictions), ("copy-on-write copies", st.cow_copies),
            ("forks", st.forks), ("peak usage", f"{st.peak_usage:.1%}"),
            ("cached blocks left", st.blocks_cached)]
    for name, value in rows:
        say(f"  {name:<28} {value}")
    return st.as_dict()


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's options, shared by ``python -m pagedkv.demo`` and ``pagedkv demo``."""
    ap.add_argument("--requests", type=int, default=48, help="requests to run (default 48)")
    ap.add_argument("--policy", default="lru", help="eviction policy (lru, fifo, lfu, s3fifo)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print the statistics as JSON only")


def run(args: argparse.Namespace) -> int:
    stats = run_demo(num_requests=args.requests, policy=args.policy, seed=args.seed,
                     verbose=not args.json)
    if args.json:
        print(json.dumps(stats))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pagedkv demo", description=__doc__)
    add_arguments(ap)
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
