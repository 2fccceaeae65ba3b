"""The workload flags of ``pagedkv simulate`` and ``pagedkv replay`` and the
:class:`~pagedkv.simulator.trace.Trace` they select: a Mooncake or Azure trace file
(``--trace``), else a seeded synthetic workload; ``--arrival-scale`` speeds its arrivals up."""

from __future__ import annotations

import argparse

from pagedkv.simulator.argtypes import float_in, int_at_least
from pagedkv.simulator.guards import check_workload_size
from pagedkv.simulator.synthetic import DATASETS, SyntheticSpec, generate
from pagedkv.simulator.trace import Trace, load_trace


def add_workload_flags(p: argparse.ArgumentParser) -> None:
    w = p.add_argument_group("workload")
    w.add_argument(
        "--trace",
        metavar="FILE",
        help="Mooncake JSONL or Azure CSV trace, sorted by arrival time, gzipped or "
        "not (default: a synthetic workload, below)",
    )
    w.add_argument(
        "--format",
        choices=["auto", "mooncake", "azure"],
        default="auto",
        help="trace format (default: by extension; .csv = azure)",
    )
    w.add_argument(
        "--limit",
        type=int_at_least(0),
        default=0,
        metavar="N",
        help="use only the first N requests (default 0 = all)",
    )
    w.add_argument(
        "--dataset",
        choices=sorted(DATASETS),
        default="sharegpt",
        help="synthetic length distribution (sharegpt: mean 161 in / 338 out; alpaca: 19 / 58)",
    )
    w.add_argument(
        "--num-requests",
        metavar="N",
        type=int_at_least(1),
        default=1000,
        help="synthetic requests (refused above what this machine's memory holds)",
    )
    w.add_argument(
        "--rate",
        metavar="REQ_PER_S",
        type=float_in(0, open_low=True),
        default=2.0,
        help="synthetic Poisson rate, requests/s",
    )
    w.add_argument(
        "--turns",
        metavar="N",
        type=float_in(1),
        default=3.0,
        help="synthetic mean turns per conversation (1 = single-turn); each turn's "
        "prompt extends the previous prompt and answer",
    )
    w.add_argument(
        "--think-time",
        metavar="SECONDS",
        type=float_in(0),
        default=5.0,
        help="synthetic mean seconds between a conversation's turns",
    )
    w.add_argument(
        "--system-prompt",
        type=int_at_least(0),
        default=256,
        metavar="TOKENS",
        help="synthetic shared system prompt length (0 = none)",
    )
    w.add_argument(
        "--max-len",
        metavar="TOKENS",
        type=int_at_least(2),
        default=4096,
        help="synthetic cap on prompt + output tokens",
    )
    w.add_argument(
        "--granularity",
        metavar="TOKENS",
        type=int_at_least(1),
        default=16,
        help="tokens per synthetic hash id (prefix identity resolution)",
    )
    w.add_argument(
        "--seed", metavar="N", type=int_at_least(0), default=0, help="synthetic RNG seed"
    )
    w.add_argument(
        "--arrival-scale",
        metavar="FACTOR",
        type=float_in(0, open_low=True),
        default=1.0,
        help="divide arrival times by this (2 = twice the traffic rate)",
    )


def workload_from_args(args: argparse.Namespace) -> Trace:
    if args.trace:
        return load_trace(args.trace, args.format, limit=args.limit)
    spec = SyntheticSpec(
        dataset=args.dataset,
        num_requests=args.limit or args.num_requests,
        rate=args.rate,
        mean_turns=args.turns,
        think_time_s=args.think_time,
        system_prompt_tokens=args.system_prompt,
        max_len=args.max_len,
        granularity=args.granularity,
        seed=args.seed,
    )
    spec.validate()
    check_workload_size(spec)
    return generate(spec)
