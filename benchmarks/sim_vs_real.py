"""How well does the simulator predict the engine? Simulated vs real replays of the same traces.

Usage::

    python benchmarks/sim_vs_real.py                       # SmolLM2, 2 threads, ~22 min
    python benchmarks/sim_vs_real.py --quick --real-runs 2 # small grid, fewer requests, ~2 min
    python benchmarks/sim_vs_real.py --cost prof.json      # skip the profile, use this model

1. ``profile``: an engine runs the default profile grid (``pagedkv.simulator.profile``) and a
   cost model is fitted to its steps; no trace below is seen by the profile. Its passes run
   one at a time, one before the first real run and one after each round of real runs
   (``--no-interleave``: the whole grid first), and are fitted together once every real run
   is done: the profile then samples the machine's speed over the same minutes as the real
   runs.
2. Each workload is replayed with the same engine configuration and arrival times:
   ``pagedkv replay`` (``LLMEngine`` on the model, wall clock; ``--real-runs`` times, default
   6, in rounds: each round replays every workload once, so a slow quarter of an hour slows
   every workload's mean alike instead of one workload's) and ``pagedkv simulate`` serving
   (``EngineCore`` with the cost model's executor, simulated clock); both are
   ``serve_trace`` + ``summarize``.
3. Printed per workload: the summaries (each real run's, and the simulation's), the
   simulation's relative error against the mean of the real runs on throughput, E2E p50, TTFT
   p50/p99 and TPOT p50 and whether it meets issue 18's goal (``GOALS``), how far the real
   runs differ from each other and the standard error of their mean (the noise floor no cost
   model gets under), the preemptions and prefix hit rates, the cost model's total error on
   the real runs' own steps and on each run's (the machine's speed run by run: a run whose
   steps took 10% longer than the same steps did in another minute has a 10% longer E2E), and
   the load average (a busy machine slows the real runs, not the simulation). Last, how many
   of the goal's figures were met.

Workloads: synthetic chat (shared system prompt, multi-turn) at two rates, and scaled-down
real traces from ``../shared/traces`` when present (Azure conversation and Mooncake
conversation, lengths divided so that a 135M model on 2 CPU cores serves them in seconds;
Mooncake's 512-token hash blocks are divided the same way so prefixes stay shared).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from pagedkv.engine import EngineConfig, LLMEngine
from pagedkv.models import load_model
from pagedkv.simulator.costmodel import TERMS, LinearCostModel
from pagedkv.simulator.engine_replay import serve_trace, summarize
from pagedkv.simulator.profile import DEFAULT_GRID, QUICK_GRID, collect_steps, fit_profile
from pagedkv.simulator.sim_executor import SimClock, simulated_engine
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import Request, Trace, load_trace
from pagedkv.simulator.trace_prompts import trace_requests

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces"
COMPARED = ("throughput_tok_s", "e2e_ms_p50", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50")
# issue 18's goal: |simulated - real| / real at most this, on traces the profile did not see
GOALS = {"throughput_tok_s": 0.05, "e2e_ms_p50": 0.05, "ttft_ms_p50": 0.10, "ttft_ms_p99": 0.10}


def scaled(trace: Trace, divide: int, limit: int, cap: int, name: str) -> Trace:
    """The first ``limit`` requests with lengths divided by ``divide`` (at most ``cap``
    tokens in all); hash blocks shrink by the same factor so shared prefixes stay shared."""
    reqs = []
    for r in trace.requests[:limit]:
        inp = max(1, r.input_len // divide)
        out = max(1, min(r.output_len // divide or 1, cap - inp))
        if inp + out > cap:
            continue
        hashes = r.hash_ids
        if hashes is not None and trace.hash_block_size:
            blk = trace.hash_block_size // divide
            hashes = hashes[: -(-inp // blk)]
        reqs.append(Request(r.arrival_ms, inp, out, hashes))
    block = trace.hash_block_size // divide if trace.hash_block_size else None
    return Trace(reqs, block, name=name)


def workloads(quick: bool) -> list[tuple[str, Trace, float]]:
    """(name, trace, arrival scale)."""
    n = 24 if quick else 48
    chat = generate(
        SyntheticSpec(
            dataset="alpaca",
            num_requests=n,
            rate=1.0,
            mean_turns=2,
            think_time_s=2.0,
            system_prompt_tokens=96,
            max_len=400,
            seed=7,
        )
    )
    out = [("synthetic chat, 1 req/s", chat, 1.0), ("synthetic chat, 3 req/s", chat, 3.0)]
    if quick:
        return out
    azure = TRACES / "AzureLLMInferenceTrace_conv_2023.csv"
    if azure.exists():
        t = scaled(load_trace(azure, limit=400), 8, n, 512, "azure-conv/8")
        span = (t.requests[-1].arrival_ms - t.requests[0].arrival_ms) / 1e3
        out.append(("Azure conv, lengths/8, ~1.5 req/s", t, span * 1.5 / len(t)))
    mooncake = TRACES / "mooncake_conversation_trace.jsonl"
    if mooncake.exists():
        t = scaled(load_trace(mooncake, limit=400), 32, n, 700, "mooncake-conv/32")
        span = (t.requests[-1].arrival_ms - t.requests[0].arrival_ms) / 1e3
        out.append(("Mooncake conv, lengths/32, ~1 req/s", t, span * 1.0 / len(t)))
    if not azure.exists() or not mooncake.exists():
        print(f"(../shared/traces not found at {TRACES}: synthetic workloads only)")
    return out


def _step(record: Any) -> list[Any]:
    """A step record as JSON: [[start, num_tokens], ...], seconds."""
    return [[list(s) for s in record.shapes], record.seconds]


def rel(sim: float, real: float) -> float:
    return (sim - real) / real if real else float("nan")


def scaled_model(model: LinearCostModel, factor: float) -> LinearCostModel:
    """``model`` with every term and the token curve multiplied by ``factor``."""
    terms = {name: getattr(model, name) * factor for name in TERMS}
    return dataclasses.replace(model, **terms, token_ms=tuple(v * factor for v in model.token_ms))


def simulate(cfg: EngineConfig, cost: LinearCostModel, reqs: Any, max_len: int) -> dict[str, Any]:
    clock = SimClock()
    sim = simulated_engine(cfg, cost, max_model_len=max_len, clock=clock)
    return summarize(serve_trace(sim, reqs, wait_until=clock.wait_until))


class Profiler:
    """The profile grid's passes, run one at a time on an engine of its own (``interleave``:
    one before the first round of real runs and one after each, so it samples the machine over
    the same minutes as the real runs: on this shared 2-core machine its speed drifts by 10-25%
    over tens of seconds, and a profile taken only first measured a slower or faster machine
    than the runs after it), or the whole grid at once; ``fit`` pools the passes."""

    def __init__(self, lm: Any, cfg: EngineConfig, grid: Any, interleave: bool) -> None:
        self.engine = LLMEngine(lm, cfg)
        self.grid, self.interleave = grid, interleave
        self.records: list[Any] = []
        self.skipped: list[str] = []
        self.passes = 0
        self.seconds = 0.0

    def run(self, repeats: int) -> None:
        t0 = time.perf_counter()
        grid = dataclasses.replace(self.grid, repeats=repeats)
        recs, skipped = collect_steps(self.engine, grid, seed=self.passes, first_pass=self.passes)
        self.records += recs
        self.skipped += skipped
        self.passes += repeats
        self.seconds += time.perf_counter() - t0

    def before(self) -> None:
        self.run(1 if self.interleave else self.grid.repeats)

    def after_round(self) -> None:
        if self.interleave:
            self.run(1)

    def fit(self) -> Any:
        return fit_profile(self.engine, self.records, self.skipped)


def real_run(lm: Any, cfg: EngineConfig, trace: Trace, scale: float, into: dict[str, Any]) -> None:
    """One wall-clock replay of ``trace`` on a fresh engine, added to ``into`` (its summaries,
    steps, seconds and the load averages around it)."""
    real = LLMEngine(lm, cfg)
    reqs = trace_requests(
        trace,
        block_size=cfg.block_size,
        vocab_size=real.vocab_size,
        arrival_scale=scale,
        max_model_len=real.max_model_len,
    )
    load0 = os.getloadavg()[0]
    t1 = time.perf_counter()
    run = serve_trace(real, reqs)
    into.setdefault("walls", []).append(time.perf_counter() - t1)
    into.setdefault("reals", []).append(summarize(run))
    into.setdefault("records", []).extend(run.step_records)
    into.setdefault("load", []).extend([load0, os.getloadavg()[0]])
    into["reqs"], into["max_len"] = reqs, real.max_model_len


def model_bias(cost: LinearCostModel, records: list[Any]) -> float:
    """(the cost model's total over ``records`` - their measured total) / the measured total:
    negative when the steps took longer than the model says (a slow minute of the machine, or
    shapes the model under-predicts)."""
    return rel(
        sum(cost.step_ms_for(r.shapes) for r in records), 1e3 * sum(r.seconds for r in records)
    )


def compare(
    name: str, m: dict[str, Any], cfg: EngineConfig, cost: LinearCostModel
) -> dict[str, Any]:
    """One workload's row: the simulation against the mean of its real runs."""
    reals, records = m["reals"], m["records"]
    counts = [r["steps"] for r in reals]  # each run's records, in order
    ends = itertools.accumulate(counts)
    per_run = [model_bias(cost, records[e - n : e]) for n, e in zip(counts, ends, strict=True)]
    bias = model_bias(cost, records)  # apart from any scheduling drift
    sim_sum = simulate(cfg, cost, m["reqs"], m["max_len"])
    fixed = simulate(cfg, scaled_model(cost, 1 / (1 + bias)), m["reqs"], m["max_len"])
    mean = {k: statistics.fmean(r[k] for r in reals) for k in reals[0]}
    # how far the real runs are from each other: the floor no cost model can get under
    spread = {k: (max(r[k] for r in reals) - min(r[k] for r in reals)) / mean[k] for k in COMPARED}
    std_err = {
        k: statistics.stdev(r[k] for r in reals) / math.sqrt(len(reals)) / mean[k]
        if len(reals) > 1
        else math.nan
        for k in COMPARED
    }
    errs = {k: rel(sim_sum[k], mean[k]) for k in COMPARED}
    return {
        "workload": name,
        "requests": len(m["reqs"]),
        "real_runs": reals,
        "real": mean,
        "sim": sim_sum,
        "error": errs,
        "goal_met": {k: abs(errs[k]) <= g for k, g in GOALS.items()},
        "drift_corrected_error": {k: rel(fixed[k], mean[k]) for k in COMPARED},
        "real_spread": spread,
        "real_std_err": std_err,
        "load_avg": [min(m["load"]), max(m["load"])],
        "real_wall_s": m["walls"],
        "step_time_bias": bias,
        "step_time_bias_by_run": per_run,
        "real_steps": [_step(r) for r in records],
    }


def print_row(row: dict[str, Any]) -> None:
    reals, sim_sum, errs = row["real_runs"], row["sim"], row["error"]
    load0, load1 = row["load_avg"]
    print(
        f"\n{row['workload']}: {row['requests']} requests, real runs "
        f"{', '.join(f'{w:.0f}' for w in row['real_wall_s'])} s, load average "
        f"{load0:.2f}-{load1:.2f}; the cost model on the real runs' {len(row['real_steps'])} "
        f"steps: {row['step_time_bias']:+.1%} in total"
    )
    head = "".join(f"{f'real {i + 1}':>11}" for i in range(len(reals)))
    print(
        f"  {'field':<18}{head}{'simulated':>11}{'error':>9}{'goal':>6}{'real spread':>13}"
        f"{'std err':>9}{'drift-corrected':>17}"
    )
    for k in (*COMPARED, "preemptions", "prefix_hit_rate", "steps", "mean_batch"):
        e = f"{errs[k]:+.1%}" if k in errs else ""
        goal = ("met" if row["goal_met"][k] else "MISS") if k in GOALS else ""
        sp = f"{row['real_spread'][k]:.1%}" if k in COMPARED else ""
        se = f"{row['real_std_err'][k]:.1%}" if k in COMPARED else ""
        fx = f"{row['drift_corrected_error'][k]:+.1%}" if k in COMPARED else ""
        cells = "".join(f"{r[k]:>11.4g}" for r in reals)
        print(f"  {k:<18}{cells}{sim_sum[k]:>11.4g}{e:>9}{goal:>6}{sp:>13}{se:>9}{fx:>17}")
    # the machine's speed run by run: the same model on each run's own steps
    cells = "".join(f"{b:>+11.1%}" for b in row["step_time_bias_by_run"])
    print(f"  {'model on steps':<18}{cells}")
    sys.stdout.flush()


def print_summary(rows: list[dict[str, Any]]) -> None:
    print(
        "\nover the workloads, mean / max: |simulated - real| / real, the real runs' spread, "
        "and the drift-corrected error"
    )
    for k in COMPARED:
        vals = [abs(r["error"][k]) for r in rows]
        spr = [r["real_spread"][k] for r in rows]
        fix = [abs(r["drift_corrected_error"][k]) for r in rows]
        print(
            f"  {k:<18}{sum(vals) / len(vals):>8.1%}{max(vals):>8.1%}"
            f"{sum(spr) / len(spr):>10.1%}{max(spr):>8.1%}"
            f"{sum(fix) / len(fix):>10.1%}{max(fix):>8.1%}"
        )
    met = [(r["workload"], k) for r in rows for k, ok in r["goal_met"].items() if ok]
    missed = [f"{r['workload']} {k}" for r in rows for k, ok in r["goal_met"].items() if not ok]
    goals = ", ".join(f"{k} {g:.0%}" for k, g in GOALS.items())
    print(f"goal ({goals}): met {len(met)} of {len(met) + len(missed)}", end="")
    print(f"; missed: {'; '.join(missed)}" if missed else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--cost", help="a profile JSON to use instead of profiling first")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--real-runs",
        type=int,
        default=6,
        help="real runs per workload, in rounds (their spread: noise)",
    )
    ap.add_argument(
        "--no-interleave",
        dest="interleave",
        action="store_false",
        help="profile the whole grid first (default: one pass before the first round of real "
        "runs and one after each, fitted together)",
    )
    ap.add_argument("--save-cost", help="write the profiled cost model here (for --cost)")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(None)
    cfg = EngineConfig(block_size=16, num_blocks=160, max_num_seqs=16, max_num_batched_tokens=512)
    grid = QUICK_GRID if args.quick else DEFAULT_GRID
    prof = None if args.cost else Profiler(lm, cfg, grid, args.interleave)
    if prof is not None:
        prof.before()
    # round robin: every workload's n-th real run, then a profile pass, n times; so each
    # workload's runs and the profile are spread over the same minutes of the machine
    loads = workloads(args.quick)
    measured: list[tuple[str, dict[str, Any]]] = [(name, {}) for name, _, _ in loads]
    for i in range(args.real_runs):
        for (name, trace, scale), (_, into) in zip(loads, measured, strict=True):
            real_run(lm, cfg, trace, scale, into)
            print(f"measured {name}: real run {i + 1}, {into['walls'][-1]:.0f} s", flush=True)
        if prof is not None:
            prof.after_round()
    report: dict[str, Any] = {"config": dataclasses.asdict(cfg)}
    if prof is None:
        cost = LinearCostModel.parse(args.cost)
    else:
        fitted = prof.fit()
        cost = fitted.model
        held = fitted.held_out_error
        print(
            f"profile: {len(fitted.fitted)} steps fitted, {prof.passes} passes "
            f"({'interleaved with the real runs' if args.interleave else 'first'}) in "
            f"{prof.seconds:.0f} s; {cost.describe()}; held-out median error "
            f"{'n/a' if held is None else f'{held.median:.1%}'}"
        )
        if args.save_cost:
            cost.save(args.save_cost)
        # the profile's steps, to refit other cost models on the same data
        report["profile_fitted"] = [_step(r) for r in fitted.fitted]
        report["profile_held_out"] = [_step(r) for r in fitted.held_out]
        report["profile_interleaved"] = args.interleave
    report["cost_model"] = cost.to_json()
    rows = [compare(name, m, cfg, cost) for name, m in measured]
    for row in rows:
        print_row(row)
    report["workloads"] = rows
    print_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
