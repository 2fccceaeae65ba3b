"""The ``pagedkv simulate`` subcommand: flags, help text, and output writing.

Every flag maps one to one onto :class:`~pagedkv.simulator.runner.SimulationConfig` or the
workload; ``--help`` is the reference documentation (docs/simulator.md expands on it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagedkv.simulator.costmodel import LinearCostModel
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
examples:
  pagedkv simulate                                   # synthetic multi-turn workload, all modes
  pagedkv simulate --trace mooncake.jsonl --mode hitrate --block-size 512 \\
      --capacity 128,512,1024,4096 --policy lru,fifo,belady
  pagedkv simulate --trace azure_conv.csv --mode baselines --kv-tokens 32768 --plot mem.png
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(float(x)) for x in text.split(",") if x.strip())
    except ValueError:
        msg = f"expected comma-separated integers, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None


def _words(text: str) -> tuple[str, ...]:
    return tuple(x.strip().lower() for x in text.split(",") if x.strip())


def _cost(text: str) -> LinearCostModel:
    return LinearCostModel.parse(text)


def add_simulate_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("simulate", help="trace-driven simulator and capacity planner",
                       description=DESCRIPTION, epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w = p.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE", help="Mooncake JSONL or Azure CSV trace")
    w.add_argument("--format", choices=["auto", "mooncake", "azure"], default="auto",
                   help="trace format (default: by extension; .csv = azure)")
    w.add_argument("--limit", type=int, default=0, metavar="N",
                   help="use only the first N requests (0 = all)")
    w.add_argument("--dataset", choices=sorted(DATASETS), default="sharegpt",
                   help="synthetic length distribution (sharegpt: mean 161 in / 338 out; "
                        "alpaca: 19 / 58)")
    w.add_argument("--num-requests", type=int, default=1000, help="synthetic requests")
    w.add_argument("--rate", type=float, default=2.0, help="synthetic Poisson rate, requests/s")
    w.add_argument("--turns", type=float, default=3.0,
                   help="synthetic mean turns per conversation (1 = single-turn); each turn's "
                        "prompt extends the previous prompt and answer")
    w.add_argument("--think-time", type=float, default=5.0,
                   help="synthetic mean seconds between a conversation's turns")
    w.add_argument("--system-prompt", type=int, default=256, metavar="TOKENS",
                   help="synthetic shared system prompt length (0 = none)")
    w.add_argument("--max-len", type=int, default=4096,
                   help="synthetic cap on prompt + output tokens")
    w.add_argument("--granularity", type=int, default=16,
                   help="tokens per synthetic hash id (prefix identity resolution)")
    w.add_argument("--seed", type=int, default=0, help="synthetic RNG seed")

    m = p.add_argument_group("modes and sweeps")
    m.add_argument("--mode", type=_words, default=MODES, metavar="LIST",
                   help=f"comma-separated subset of {','.join(MODES)} (default: all)")
    m.add_argument("--block-size", type=_ints, default=(16,), metavar="LIST",
                   help="block size(s) in tokens; hit-rate sweeps all, serving uses the first")
    m.add_argument("--capacity", type=_ints, default=(), metavar="LIST",
                   help="hit-rate cache capacities in blocks")
    m.add_argument("--capacity-tokens", type=_ints, default=(), metavar="LIST",
                   help="hit-rate cache capacities in tokens (per block size)")
    m.add_argument("--policy", type=_words, default=(), metavar="LIST",
                   help="eviction policies to compare: the manager's (lru, fifo, lfu, s3fifo) "
                        "and the offline oracle belady (default: all)")
    m.add_argument("--warmup", type=float, default=0.5,
                   help="fraction of requests replayed before measuring hit rate (default 0.5)")
    m.add_argument("--partial", choices=PARTIAL_MODES, default="cache",
                   help="partial last prompt block: 'cache' counts it as a cacheable block "
                        "(kvcache-simulator's rule), 'drop' never caches it (a real engine)")
    m.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="worker processes running sweep points and serving replays side by "
                        "side (default 1; 0 = one per core). Each replay stays sequential; "
                        "results are identical to --jobs 1 except the measured seconds")

    s = p.add_argument_group("serving replay")
    s.add_argument("--kv-tokens", type=int, default=None,
                   help="KV memory in tokens for serve/baselines (default: 4x the longest "
                        "request, >= 16384)")
    s.add_argument("--serve-policy", default="lru", help="eviction policy while serving")
    s.add_argument("--prefix-caching", choices=["auto", "on", "off"], default="auto",
                   help="prefix caching while serving (auto: on iff the trace has hash ids)")
    s.add_argument("--watermark", type=float, default=0.0,
                   help="fraction of blocks admission keeps free for decode growth")
    s.add_argument("--cost", type=_cost, default=LinearCostModel(), metavar="B,P,D",
                   help="step cost model in ms: base, per prefill token, per decoding sequence "
                        "(default 5,0.1,0.2)")
    s.add_argument("--max-num-seqs", type=int, default=256, help="max running sequences")
    s.add_argument("--max-batched-tokens", type=int, default=8192,
                   help="max prefill tokens per step (a longer prompt runs alone); with "
                        "--chunked-prefill, the whole step's token budget")
    s.add_argument("--chunked-prefill", action="store_true",
                   help="split prompts into chunks that share each step's token budget with "
                        "decode (vLLM v1 / SGLang scheduling); default: whole-prompt prefill "
                        "(vLLM v0)")
    s.add_argument("--max-model-len", type=int, default=None,
                   help="reservation of the 'max' baseline (default: max(2048, next power of "
                        "two of the longest request))")
    s.add_argument("--arrival-scale", type=float, default=1.0,
                   help="divide arrival times by this (2 = twice the traffic rate)")

    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' = stdout)")
    o.add_argument("--csv", metavar="PATH", help="write one CSV row per result ('-' = stdout)")
    o.add_argument("--plot", metavar="PNG",
                   help="hit rate vs capacity and memory over time (needs pagedkv[plot])")
    o.add_argument("--quiet", action="store_true", help="no terminal table")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=run_simulate)


def workload_from_args(args: argparse.Namespace) -> Trace:
    if args.trace:
        return load_trace(args.trace, args.format, limit=args.limit)
    return generate(SyntheticSpec(
        dataset=args.dataset, num_requests=args.limit or args.num_requests, rate=args.rate,
        mean_turns=args.turns, think_time_s=args.think_time,
        system_prompt_tokens=args.system_prompt, max_len=args.max_len,
        granularity=args.granularity, seed=args.seed,
    ))


def config_from_args(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig(
        modes=tuple(args.mode), block_sizes=tuple(args.block_size),
        capacities=tuple(args.capacity), capacity_tokens=tuple(args.capacity_tokens),
        policies=tuple(args.policy), warmup=args.warmup, partial=args.partial,
        kv_tokens=args.kv_tokens, serve_policy=args.serve_policy,
        prefix_caching={"auto": None, "on": True, "off": False}[args.prefix_caching],
        watermark=args.watermark, max_model_len=args.max_model_len,
        arrival_scale=args.arrival_scale, cost=args.cost,
        limits=SchedulerLimits(args.max_num_seqs, args.max_batched_tokens, args.chunked_prefill),
        jobs=args.jobs,
    )


def _write(path: str, text: str) -> None:
    if path == "-":
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    else:
        Path(path).write_text(text, encoding="utf-8")


def run_simulate(args: argparse.Namespace) -> int:
    trace = workload_from_args(args)
    cfg = config_from_args(args)
    bar = ProgressBar(enabled=False if args.no_progress else None)
    report, timelines = run_simulation(trace, cfg, bar)
    if not args.quiet and "-" not in (args.json, args.csv):
        print(render_text(report))
    if args.json:
        _write(args.json, render_json(report))
    if args.csv:
        _write(args.csv, render_csv(report))
    if args.plot:
        from pagedkv.simulator.plot import save_plot

        kv = report["config"].get("kv_tokens_used", 1)
        out = save_plot(args.plot, report.get("hitrate", []), timelines, kv)
        print(f"plot written to {out}", file=sys.stderr)
    return 0
