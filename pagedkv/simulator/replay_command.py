"""Replay a trace through the real engine (``LLMEngine`` on a model), at the trace's arrival
times on the wall clock, and report what ``pagedkv simulate --mode serve`` reports.

Why: the simulator predicts the engine with a cost model; this measures it. Both take the same
workload flags (the same token prompts and arrival times), the same engine flags (the same
scheduler settings) and print and write the same row (``--json``: ``serving`` rows with the
same field names, and ``config.engine``, the settings in force, as the flags that give a
simulation the same), so the difference between the two is the simulator's error. The model
loads as for ``generate`` and ``serve`` (--model, --dtype, --threads). Arrivals are real time: a
trace with ten minutes of arrivals takes at least ten minutes (--arrival-scale compresses it,
--limit or --num-requests shortens it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from pagedkv.errors import InvalidArgumentError
from pagedkv.simulator.argtypes import NEGATIVE_NUMBER, HelpFormatter
from pagedkv.simulator.engine_flags import add_engine_flags, engine_knobs
from pagedkv.simulator.guards import check_output_file
from pagedkv.simulator.progress import ProgressBar
from pagedkv.simulator.workload_flags import add_workload_flags, workload_from_args

EPILOG = """\
The same run, simulated (the flags the table's "engine:" line prints, and a cost model):
  pagedkv profile --model M --out cost.json
  pagedkv simulate --mode serve --cost cost.json [the same workload and engine flags]
examples:
  pagedkv replay --num-requests 50 --rate 1 --max-num-seqs 8 --json real.json
  pagedkv replay --trace mooncake.jsonl --limit 200 --arrival-scale 4 --model ./my-llama
"""


def add_replay_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from pagedkv.cli_options import add_model_arguments, plain

    p = sub.add_parser(
        "replay",
        help="a trace through the real engine at its arrival times (what simulate predicts)",
        description=plain(__doc__),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    p._negative_number_matcher = NEGATIVE_NUMBER  # '--arrival-scale -1' reaches its check
    add_model_arguments(p)
    add_workload_flags(p)
    add_engine_flags(p, model_len_default="the model's", block_size=True)
    o = p.add_argument_group("output")
    o.add_argument("--json", metavar="PATH", help="write the report as JSON ('-' = stdout)")
    o.add_argument("--csv", metavar="PATH", help="write the result row as CSV ('-' = stdout)")
    o.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress on stderr (default: a bar on a terminal, else a line every few seconds)",
    )
    p.set_defaults(handler=run_replay)


def _check_outputs(args: argparse.Namespace) -> None:
    for flag, path in (("--json", args.json), ("--csv", args.csv)):
        if path:
            check_output_file(flag, path)
    if args.json == "-" and args.csv == "-":
        raise InvalidArgumentError(
            "--json - and --csv - would both write to stdout; send one of them to a file"
        )
    if args.json and args.json == args.csv and args.json != "-":
        raise InvalidArgumentError(f"--json and --csv both write {args.json}")


def run_replay(args: argparse.Namespace) -> int:
    from pagedkv.cli_setup import load_cli_model, say, torch_threads
    from pagedkv.simulator.runner import SimulationConfig, usable_blocks

    _check_outputs(args)  # everything that can be wrong is found before the model loads
    cfg = SimulationConfig(modes=("serve",), block_sizes=(args.block_size,), **engine_knobs(args))
    cfg.validate()
    trace = workload_from_args(args)
    config = cfg.engine_config(usable_blocks(trace, cfg))
    with torch_threads(args.threads):
        import torch

        from pagedkv.engine import LLMEngine

        threads = torch.get_num_threads()
        engine = LLMEngine(load_cli_model(args.model, args.dtype), config)
        try:
            report = _replay(args, trace, engine, threads, say)
        finally:
            engine.close()
    _emit(args, report)
    return 0


def _replay(
    args: argparse.Namespace, trace: Any, engine: Any, threads: int, say: Any
) -> dict[str, Any]:
    from pagedkv.simulator.advice import rejected_warnings
    from pagedkv.simulator.engine_serve import backend_name, engine_settings, run_engine
    from pagedkv.simulator.trace_prompts import trace_requests

    requests = trace_requests(
        trace,
        block_size=engine.config.block_size,
        vocab_size=engine.vocab_size,
        arrival_scale=args.arrival_scale,
    )
    span = requests[-1].arrival_s if requests else 0.0
    name = engine.loaded.name
    say(f"replaying {len(requests):,} requests over {span:,.1f} s of arrivals on {name}")
    bar = ProgressBar(enabled=False if args.no_progress else None)
    bar.task("replay")
    row, _ = run_engine(engine, requests, progress=bar.update)
    bar.close()
    # overload is judged against the cost model's lone-prompt time, which a replay lacks
    row = {"backend": backend_name(engine.config, "real"), **row, "overloaded": None}
    return {
        "workload": trace.summary(),
        "config": {
            "model": engine.loaded.name,
            "dtype": args.dtype,
            "threads": threads,
            "arrival_scale": args.arrival_scale,
            "engine": engine_settings(engine),
        },
        "serving_title": f"replay on the real engine: {engine.loaded.name} ({args.dtype}, "
        f"{threads} thread{'' if threads == 1 else 's'}, wall clock)",
        "serving": [row],
        "warnings": rejected_warnings([row], trace),
    }


def _emit(args: argparse.Namespace, report: dict[str, Any]) -> None:
    from pagedkv.simulator.command import write_output
    from pagedkv.simulator.report import render_csv, render_json, render_text

    if "-" not in (args.json, args.csv):
        print(render_text(report))
    else:
        for warning in report["warnings"]:
            print(f"pagedkv replay: warning: {warning}", file=sys.stderr)
    if args.json:
        write_output(args.json, render_json(report))
    if args.csv:
        write_output(args.csv, render_csv(report))
