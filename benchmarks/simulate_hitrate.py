"""Hit-rate replay benchmark: accuracy against kvcache-simulator and replay speed.

Prints (1) LRU/FIFO/Belady hit rates on the Mooncake conversation trace at 512-token blocks next
to the kvcache-simulator reference numbers from ../shared/traces/README.md, and (2) block
references per second of the hit-rate replay (BlockManager + simulator loop) at block sizes 512
and 16, and (3) every policy's replay speed (best of 3). Reads the trace from ../shared/traces/
(or $PAGEDKV_TRACES); says so and exits 0 when it is absent.

    .venv/bin/python benchmarks/simulate_hitrate.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from pagedkv.simulator.blocks import build_block_stream
from pagedkv.simulator.hitrate import run_policy
from pagedkv.simulator.oracle import infinite_cache
from pagedkv.simulator.trace import load_trace

TRACES = Path(
    os.environ.get("PAGEDKV_TRACES", Path(__file__).resolve().parents[2] / "shared" / "traces")
)
# kvcache-simulator, conversation trace, 512-token blocks, last 50% (traces README)
REFERENCE = {
    128: (3.9, 4.5, 8.0),
    512: (4.4, 4.5, 14.2),
    1024: (4.6, 4.7, 19.9),
    4096: (8.5, 8.7, 34.5),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the block-size-16 speed runs")
    args = ap.parse_args()
    path = TRACES / "mooncake_conversation_trace.jsonl"
    if not path.exists():
        print(f"trace not found at {path}; set PAGEDKV_TRACES to the traces folder. Skipping.")
        return 0
    trace = load_trace(path)
    print(f"{path.name}: {len(trace):,} requests")
    t = time.perf_counter()
    s512 = build_block_stream(trace, 512)
    print(f"block stream at 512: {s512.num_refs:,} refs in {time.perf_counter() - t:.2f}s")
    print(
        f"infinite cache: {100 * infinite_cache(s512, 0.0).hit_rate:.1f}% of all prompt "
        f"tokens, {100 * infinite_cache(s512).hit_rate:.1f}% over the last 50%"
    )
    print(
        "\ncache blocks | FIFO ours / ref | LRU ours / ref (delta) | Belady ours / ref | LRU refs/s"
    )
    for cap, (r_fifo, r_lru, r_opt) in REFERENCE.items():
        fifo = run_policy(s512, "fifo", cap)
        lru = run_policy(s512, "lru", cap)
        opt = run_policy(s512, "belady", cap)
        d = 100 * lru.hit_rate - r_lru
        print(
            f"{cap:12d} | {100 * fifo.hit_rate:5.2f}% / {r_fifo}% | "
            f"{100 * lru.hit_rate:5.2f}% / {r_lru}% ({d:+.2f}) | "
            f"{100 * opt.hit_rate:5.2f}% / {r_opt}% | {lru.refs_per_second / 1e6:.2f}M"
        )
    if args.quick:
        return 0
    print("\nreplay speed per policy at 512-token blocks, best of 3 runs (M refs/s):")
    print("policy  | " + " | ".join(f"{c:>5d}" for c in REFERENCE))
    for policy in ("lru", "fifo", "lfu", "s3fifo", "belady"):
        speeds = [
            max(run_policy(s512, policy, cap).refs_per_second for _ in range(3)) / 1e6
            for cap in REFERENCE
        ]
        print(f"{policy:7s} | " + " | ".join(f"{v:5.2f}" for v in speeds))
    t = time.perf_counter()
    s16 = build_block_stream(trace, 16)
    print(f"\nblock stream at 16: {s16.num_refs:,} refs in {time.perf_counter() - t:.2f}s")
    for cap512 in (128, 4096):
        cap = cap512 * 32  # same memory as cap512 blocks of 512 tokens
        lru = run_policy(s16, "lru", cap)
        print(
            f"bs 16, {cap:,} blocks: LRU {100 * lru.hit_rate:.2f}%, "
            f"{lru.refs_per_second / 1e6:.2f}M refs/s ({lru.seconds:.1f}s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
