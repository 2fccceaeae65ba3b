"""``pagedkv simulate``'s flags for what to measure and how to replay: the modes and hit-rate
sweeps, the serving replay, and the :class:`~pagedkv.simulator.runner.SimulationConfig` they
make."""

from __future__ import annotations

import argparse

from pagedkv.simulator.argtypes import cost_model, float_in, int_at_least, int_list, word_list
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.hitrate import PARTIAL_MODES
from pagedkv.simulator.runner import MODES, SimulationConfig
from pagedkv.simulator.serving import SchedulerLimits


def add_sweep_flags(p: argparse.ArgumentParser) -> None:
    m = p.add_argument_group("modes and sweeps")
    m.add_argument(
        "--mode",
        type=word_list(MODES, "mode"),
        default=MODES,
        metavar="LIST",
        help=f"comma-separated subset of {','.join(MODES)}",
    )
    m.add_argument(
        "--block-size",
        type=int_list,
        default=(16,),
        metavar="LIST",
        help="block size(s) in tokens; hit-rate sweeps all, serving uses the first",
    )
    m.add_argument(
        "--capacity",
        type=int_list,
        default=(),
        metavar="LIST",
        help="hit-rate cache capacities in blocks (default: 1/64 .. 1/4 of the "
        "trace's distinct blocks)",
    )
    m.add_argument(
        "--capacity-tokens",
        type=int_list,
        default=(),
        metavar="LIST",
        help="hit-rate cache capacities in tokens, per block size (default: none)",
    )
    m.add_argument(
        "--policy",
        type=word_list(None, "policy"),
        default=(),
        metavar="LIST",
        help="eviction policies to compare: the manager's (lru, fifo, lfu, s3fifo) "
        "and the offline oracle belady (default: all)",
    )
    m.add_argument(
        "--warmup",
        metavar="FRACTION",
        type=float_in(0, 1, open_high=True),
        default=0.5,
        help="fraction of requests replayed before measuring hit rate",
    )
    m.add_argument(
        "--partial",
        choices=PARTIAL_MODES,
        default="cache",
        help="partial last prompt block: 'cache' counts it as a cacheable block "
        "(kvcache-simulator's rule), 'drop' never caches it (a real engine)",
    )
    m.add_argument(
        "--jobs",
        type=int_at_least(0),
        default=1,
        metavar="N",
        help="worker processes running sweep points and serving replays side by "
        "side (default 1; 0 = one per core). Each replay stays sequential; "
        "results are identical to --jobs 1 except the measured seconds",
    )


def add_serving_flags(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("serving replay")
    s.add_argument(
        "--kv-tokens",
        metavar="TOKENS",
        type=int_at_least(1),
        default=None,
        help="KV memory in tokens for serve/baselines (default: 4x the longest request, >= 16384)",
    )
    s.add_argument(
        "--serve-policy",
        metavar="NAME",
        default="lru",
        help="eviction policy while serving (lru, fifo, lfu, s3fifo)",
    )
    s.add_argument(
        "--prefix-caching",
        choices=["auto", "on", "off"],
        default="auto",
        help="prefix caching while serving (auto: on iff the trace has hash ids)",
    )
    s.add_argument(
        "--watermark",
        metavar="FRACTION",
        type=float_in(0, 1, open_high=True),
        default=0.0,
        help="fraction of blocks admission keeps free for decode growth",
    )
    s.add_argument(
        "--cost",
        type=cost_model,
        default=LinearCostModel(),
        metavar="B,P,D",
        help="step cost model in ms, three numbers >= 0: base, per prefill token, "
        "per decoding sequence",
    )
    s.add_argument(
        "--max-num-seqs",
        metavar="N",
        type=int_at_least(1),
        default=256,
        help="max running sequences",
    )
    s.add_argument(
        "--max-batched-tokens",
        metavar="TOKENS",
        type=int_at_least(1),
        default=8192,
        help="max prefill tokens per step (a longer prompt runs alone); with "
        "--chunked-prefill, the whole step's token budget",
    )
    s.add_argument(
        "--chunked-prefill",
        action="store_true",
        help="split prompts into chunks that share each step's token budget with "
        "decode (vLLM v1 / SGLang scheduling); default: off, whole-prompt "
        "prefill (vLLM v0)",
    )
    s.add_argument(
        "--max-model-len",
        metavar="TOKENS",
        type=int_at_least(1),
        default=None,
        help="reservation of the 'max' baseline (default: max(2048, next power of "
        "two of the longest request))",
    )
    s.add_argument(
        "--arrival-scale",
        metavar="FACTOR",
        type=float_in(0, open_low=True),
        default=1.0,
        help="divide arrival times by this (2 = twice the traffic rate)",
    )


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        modes=tuple(args.mode),
        block_sizes=tuple(args.block_size),
        capacities=tuple(args.capacity),
        capacity_tokens=tuple(args.capacity_tokens),
        policies=tuple(args.policy),
        warmup=args.warmup,
        partial=args.partial,
        kv_tokens=args.kv_tokens,
        serve_policy=args.serve_policy,
        prefix_caching={"auto": None, "on": True, "off": False}[args.prefix_caching],
        watermark=args.watermark,
        max_model_len=args.max_model_len,
        arrival_scale=args.arrival_scale,
        cost=args.cost,
        limits=SchedulerLimits(args.max_num_seqs, args.max_batched_tokens, args.chunked_prefill),
        jobs=args.jobs,
    )
