"""The ``pagedkv simulate`` subcommand: flags, help text, and output writing.

Every flag maps one to one onto :class:`~pagedkv.simulator.runner.SimulationConfig` or the
workload; ``--help`` is the reference documentation (docs/simulator.md expands on it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.argtypes import (
    NEGATIVE_NUMBER,
    HelpFormatter,
    cost_model,
    float_in,
    int_at_least,
    int_list,
    word_list,
)
from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.guards import check_outputs, check_workload_size
from pagedkv.simulator.hitrate import PARTIAL_MODES
from pagedkv.simulator.progress import ProgressBar
from pagedkv.simulator.report import render_csv, render_json, render_text
from pagedkv.simulator.runner import MODES, SimulationConfig, run_simulation
from pagedkv.simulator.serving import SchedulerLimits
from pagedkv.simulator.synthetic import DATASETS, SyntheticSpec, generate
from pagedkv.simulator.trace import Trace, load_trace

DESCRIPTION = """\
Replay LLM traffic through pagedkv's block manager (the same code that serves) to size KV memory.

modes (--mode, comma-separated; default all three):
  hitrate    prefix hit rate vs cache capacity per eviction policy, in file order, with the
             infinite-cache ceiling and Belady's offline optimum as upper bounds. Token-weighted,
             longest cached prefix only, measured after a warm-up (default: last 50% of
             requests, comparable with kvcache-simulator).
  serve      serving replay by arrival time: continuous batching admitted by free blocks,
             recompute preemption, step times from a linear cost model. Reports KV utilisation,
             token states / allocated memory, preemptions, queueing, TTFT/TPOT, throughput.
  baselines  the same serving replay with contiguous per-request reservation (max length, next
             power of two, exact final length) next to paging without prefix sharing.

workload: --trace FILE (Mooncake .jsonl or Azure .csv), else a seeded synthetic workload.
"""

EPILOG = """\
cost model: step_ms = BASE + PREFILL*prefill_tokens + DECODE*decoding_sequences (--cost).
capacities: --capacity counts blocks; --capacity-tokens counts tokens (divided by each block
  size, so sweeps over block sizes compare equal memory). Default: 1/64 .. 1/4 of the distinct
  blocks in the trace. A '*' in the table marks a cache that never filled before measurement.
overload: a serving backend whose median TTFT is >= 10x a lone median prompt's (and >= 1 s)
  while its queue outlasts the arrivals is reported as overloaded, with a request rate (and,
  when memory limits the batch, a --kv-tokens) that would fit.
examples:
  pagedkv simulate                                   # synthetic multi-turn workload, all modes
  pagedkv simulate --trace mooncake.jsonl --mode hitrate --block-size 512 \\
      --capacity 128,512,1024,4096 --policy lru,fifo,belady
  pagedkv simulate --trace azure_conv.csv --mode baselines --kv-tokens 32768 --plot mem.png
"""


def add_simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "simulate",
        help="trace-driven simulator and capacity planner",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p._negative_number_matcher = NEGATIVE_NUMBER  # '--cost -5,..' reaches the value's check
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

    o = p.add_argument_group("output")
    o.add_argument(
        "--json", metavar="PATH", help="write the report as JSON ('-' = stdout; default: none)"
    )
    o.add_argument(
        "--csv", metavar="PATH", help="write one CSV row per result ('-' = stdout; default: none)"
    )
    o.add_argument(
        "--plot",
        metavar="PNG",
        help="image (.png, .pdf, .svg) of hit rate vs capacity and KV memory over "
        "time (needs pagedkv[plot]; default: none)",
    )
    o.add_argument(
        "--quiet",
        action="store_true",
        help="print neither the table nor progress, only warnings and errors; for "
        "use with --json, --csv or --plot (alone it is refused: nothing would "
        "be shown)",
    )
    o.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, else a line every few seconds)",
    )
    p.set_defaults(handler=run_simulate)


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


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        try:
            Path(path).write_text(text, encoding="utf-8")
        except OSError as exc:  # checked before the run; the disk can still fill up
            raise InvalidArgumentError(f"cannot write {path}: {exc.strerror or exc}") from exc


def run_simulate(args: argparse.Namespace) -> int:
    check_outputs(args)  # before the run: a bad path must not cost a finished replay
    cfg = config_from_args(args)
    cfg.validate()
    trace = workload_from_args(args)
    quiet = args.quiet or args.no_progress
    report, timelines = run_simulation(trace, cfg, ProgressBar(enabled=False if quiet else None))
    table = not args.quiet and "-" not in (args.json, args.csv)
    if table:
        print(render_text(report))
    else:
        for warning in report.get("warnings", []):
            print(f"pagedkv simulate: warning: {warning}", file=sys.stderr)
    if args.json:
        _write(args.json, render_json(report))
    if args.csv:
        _write(args.csv, render_csv(report))
    if args.plot:
        from pagedkv.simulator.plot import save_plot

        kv = report["config"].get("kv_tokens_used", 1)
        out = save_plot(args.plot, report.get("hitrate", []), timelines, kv)
        if not args.quiet:
            print(f"plot written to {out}", file=sys.stderr)
    return 0
