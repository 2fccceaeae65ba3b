"""The ``pagedkv simulate`` subcommand: help text, the parser, and running it (output writing).

Every flag maps one to one onto :class:`~pagedkv.simulator.runner.SimulationConfig` or the
workload; ``--help`` is the reference documentation (docs/simulator.md expands on it). The flags
live beside what they make: :mod:`~pagedkv.simulator.workload_flags` (the trace),
:mod:`~pagedkv.simulator.engine_flags` (the engine's knobs, shared with ``pagedkv replay``),
:mod:`~pagedkv.simulator.simulation_flags` (the SimulationConfig), and the output flags here,
beside the code that writes the outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.argtypes import NEGATIVE_NUMBER, HelpFormatter
from pagedkv.simulator.engine_flags import add_engine_flags
from pagedkv.simulator.guards import check_outputs
from pagedkv.simulator.progress import ProgressBar
from pagedkv.simulator.report import render_csv, render_json, render_text
from pagedkv.simulator.runner import run_simulation
from pagedkv.simulator.simulation_flags import add_cost_flag, add_sweep_flags, config_from_args
from pagedkv.simulator.workload_flags import add_workload_flags, workload_from_args

DESCRIPTION = """\
Replay LLM traffic through pagedkv's block manager and scheduler (the code that serves) to size
KV memory and predict latencies.

modes (--mode, comma-separated; default all three):
  hitrate    prefix hit rate vs cache capacity per eviction policy, in file order, with the
             infinite-cache ceiling and Belady's offline optimum as upper bounds. Token-weighted,
             longest cached prefix only, measured after a warm-up (default: last 50% of
             requests, comparable with kvcache-simulator).
  serve      serving replay by arrival time through the engine's own scheduler and block
             manager (EngineCore with a simulated executor): admission, chunked prefill,
             preemption, prefix caching as the engine does them, step times from the cost
             model. Reports the fields `pagedkv replay` reports for the real engine
             (throughput, TTFT/TPOT/E2E p50/p99, preemptions, prefix hit rate, ...).
  baselines  a memory study: contiguous per-request reservation (max length, next power of
             two, exact final length) next to paging without prefix sharing. It stays on a
             simplified scheduler of its own (a contiguous reservation cannot run through the
             engine's BlockManager), fed the same engine flags, preempting by recompute only.

workload: --trace FILE (Mooncake .jsonl or Azure .csv), else a seeded synthetic workload.
"""

EPILOG = """\
cost model: step_ms = BASE + PREFILL*prefill_tokens + DECODE*decoding_sequences (--cost);
  `pagedkv profile` fits them to this machine's engine (--cost pagedkv-costmodel.json).
capacities: --capacity counts blocks; --capacity-tokens counts tokens (divided by each block
  size, so sweeps over block sizes compare equal memory). Default: 1/64 .. 1/4 of the distinct
  blocks in the trace. A '*' in the table marks a cache that never filled before measurement.
overload: a serving backend whose median TTFT is >= 10x a lone median prompt's (and >= 1 s)
  while its queue outlasts the arrivals is reported as overloaded, with a request rate (and,
  when memory limits the batch, a --kv-tokens) that would fit.
engine flags: the serve mode's EngineConfig (and the baselines' limits); `pagedkv replay
  --trace T --model M` takes the same flags and runs the real engine on the same arrivals.
examples:
  pagedkv simulate                                   # synthetic multi-turn workload, all modes
  pagedkv simulate --mode serve --num-blocks 2048 --max-num-seqs 32 --cost profile.json
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
    add_workload_flags(p)
    add_sweep_flags(p)
    add_engine_flags(
        p, model_len_default="max(2048, next power of two of the longest prompt + output)"
    )
    add_cost_flag(p)
    add_output_flags(p)
    p.set_defaults(handler=run_simulate)


def add_output_flags(p: argparse.ArgumentParser) -> None:
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


def write_output(path: str, text: str) -> None:
    """``text`` to ``path`` (``-``: stdout)."""
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
        write_output(args.json, render_json(report))
    if args.csv:
        write_output(args.csv, render_csv(report))
    if args.plot:
        from pagedkv.simulator.plot import save_plot

        kv = report["config"].get("kv_tokens_used", 1)
        out = save_plot(args.plot, report.get("hitrate", []), timelines, kv)
        if not args.quiet:
            print(f"plot written to {out}", file=sys.stderr)
    return 0
