"""``pagedkv simulate``'s flags for what to measure: the modes and hit-rate sweeps, the serving
replay's cost model, and the :class:`~pagedkv.simulator.runner.SimulationConfig` they make with
the engine's knobs (:mod:`~pagedkv.simulator.engine_flags`) and the workload's arrival scale."""

from __future__ import annotations

import argparse

from pagedkv.simulator.argtypes import cost_model, float_in, int_at_least, int_list, word_list
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.engine_flags import engine_knobs
from pagedkv.simulator.hitrate import PARTIAL_MODES
from pagedkv.simulator.runner import MODES, SimulationConfig


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
        help="worker processes running hit-rate sweep points and baseline replays side "
        "by side (default 1; 0 = one per core). Each replay stays sequential; "
        "results are identical to --jobs 1 except the measured seconds",
    )


def add_cost_flag(p: argparse.ArgumentParser) -> None:
    s = p.add_argument_group("serving replay")
    s.add_argument(
        "--cost",
        type=cost_model,
        default=LinearCostModel(),
        metavar="B,P,D|FILE",
        help="step cost model in ms, three numbers >= 0: base, per prefill token, "
        "per decoding sequence; or a .json file from `pagedkv profile` (its attention "
        "terms are charged by the serve mode, which knows each step's contexts, not by the "
        "baselines, which count tokens)",
    )


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        **engine_knobs(args),
        modes=tuple(args.mode),
        block_sizes=tuple(args.block_size),
        capacities=tuple(args.capacity),
        capacity_tokens=tuple(args.capacity_tokens),
        policies=tuple(args.policy),
        warmup=args.warmup,
        partial=args.partial,
        cost=args.cost,
        jobs=args.jobs,
    )
