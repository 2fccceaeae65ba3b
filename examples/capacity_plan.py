"""Capacity planning with the simulator: the KV blocks and replicas a workload needs for a target
p99 time to first token.

    pagedkv profile --out cost.json          # once per model, dtype, thread count and machine
    python examples/capacity_plan.py --cost cost.json --target-ttft-ms 2000 --need-rate 5
    python examples/capacity_plan.py --cost cost.json --trace mooncake.jsonl --limit 300

Every figure is a simulation of the engine's own scheduler and block manager (``pagedkv simulate
--mode serve``) with the profiled step costs, so it carries the simulator's error against the
real engine (``benchmarks/sim_vs_real.py``; docs/simulator.md gives the measured errors):

1. rate per replica: the highest multiple of the workload's arrival rate whose simulated p99
   TTFT stays within the target with ``--num-blocks`` (bisection on the arrival scale);
2. replicas for ``--need-rate`` requests/s: ceil(need / rate per replica) (the traffic is
   assumed to split evenly);
3. blocks: the fewest usable KV blocks (halving from ``--num-blocks``) that still meet the
   target at each replica's share of the rate (or at the rate of step 1 without
   ``--need-rate``): more only buys prefix-cache hits and headroom.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace

from pagedkv.engine import EngineConfig
from pagedkv.errors import PagedKVError
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_replay import serve_trace, summarize
from pagedkv.simulator.sim_executor import SIM_VOCAB_SIZE, SimClock, simulated_engine
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import Trace, load_trace
from pagedkv.simulator.trace_prompts import trace_requests


def p99_ttft_ms(trace: Trace, cfg: EngineConfig, cost: LinearCostModel, scale: float) -> float:
    """Simulated p99 TTFT (ms) of ``trace`` at ``scale`` times its arrival rate."""
    clock = SimClock()
    engine = simulated_engine(cfg, cost, max_model_len=cfg.max_model_len or 4096, clock=clock)
    reqs = trace_requests(
        trace,
        block_size=cfg.block_size,
        vocab_size=SIM_VOCAB_SIZE,
        arrival_scale=scale,
        max_model_len=engine.max_model_len,
    )
    return float(summarize(serve_trace(engine, reqs, wait_until=clock.wait_until))["ttft_ms_p99"])


def max_scale(trace: Trace, cfg: EngineConfig, cost: LinearCostModel, target: float) -> float:
    """The highest arrival scale (within 5%) whose p99 TTFT meets ``target``; 0 if not even
    1/64 of the workload's rate does (the longest prompts alone take longer)."""

    def meets(scale: float) -> bool:
        return p99_ttft_ms(trace, cfg, cost, scale) <= target

    lo, hi = 1.0, 1.0
    if meets(1.0):
        while meets(hi * 2):  # grow until the target is missed
            hi *= 2
            if hi >= 1024:
                return hi
        lo, hi = hi, hi * 2
    else:
        while not meets(lo / 2):  # shrink until it is met
            lo /= 2
            if lo <= 1 / 64:
                return 0.0
        lo, hi = lo / 2, lo
    while hi - lo > 0.05 * hi:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if meets(mid) else (lo, mid)
    return lo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cost", required=True, help="a cost model from `pagedkv profile`")
    ap.add_argument("--trace", help="a Mooncake/Azure trace (default: a synthetic chat workload)")
    ap.add_argument("--limit", type=int, default=300, help="requests of the trace (default 300)")
    ap.add_argument("--target-ttft-ms", type=float, default=2000.0)
    ap.add_argument("--need-rate", type=float, default=0.0, help="requests/s to serve in all")
    ap.add_argument("--num-blocks", type=int, default=4096, help="usable KV blocks per replica")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--max-num-seqs", type=int, default=64)
    ap.add_argument("--max-num-batched-tokens", type=int, default=2048)
    args = ap.parse_args()
    cost = LinearCostModel.parse(args.cost)
    if args.trace:
        trace = load_trace(args.trace, limit=args.limit)
    else:
        spec = SyntheticSpec(num_requests=args.limit, rate=1.0, mean_turns=2, max_len=2048)
        trace = generate(spec)
    span_s = (trace.requests[-1].arrival_ms - trace.requests[0].arrival_ms) / 1e3
    base_rate = (len(trace.requests) - 1) / span_s if span_s > 0 else float("inf")
    cfg = EngineConfig(
        block_size=args.block_size,
        num_blocks=args.num_blocks,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=4096,
    )
    target = args.target_ttft_ms
    scale = max_scale(trace, cfg, cost, target)
    if scale == 0.0:
        print(f"no arrival rate meets p99 TTFT <= {target:g} ms with {args.num_blocks} blocks")
        return 1
    rate = scale * base_rate
    print(f"{len(trace.requests)} requests; p99 TTFT <= {target:g} ms up to {rate:.3g} req/s")
    replicas = math.ceil(args.need_rate / rate) if args.need_rate > 0 else 1
    load = scale * (args.need_rate / replicas / rate if args.need_rate > 0 else 1.0)
    blocks = args.num_blocks
    while blocks // 2 >= 1:
        try:
            if p99_ttft_ms(trace, replace(cfg, num_blocks=blocks // 2), cost, load) > target:
                break
        except PagedKVError:  # the pool no longer holds the longest request
            break
        blocks //= 2
    kv_tokens = blocks * args.block_size
    at = f"{load * base_rate:.3g} req/s"
    print(f"fewest blocks meeting it at {at}: {blocks} ({kv_tokens} KV tokens per replica)")
    if args.need_rate > 0:
        print(f"{args.need_rate:g} req/s needs {replicas} replica(s) of {blocks} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
