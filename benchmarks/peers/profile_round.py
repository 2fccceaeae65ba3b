"""Where one round of the peers workload spends its time in pagedkv's engine (2 threads).

A warm-up round, then one measured round of ``run.py``'s workload (48 chat requests, greedy,
at most 64 new tokens; fresh prompts each round): wall time split into steps that hold prompt
rows and decode-only steps (mean step time by batch size), and with ``--profile`` torch's
profiler table of the round plus the projections' GFLOP/s by shape.

    python benchmarks/peers/profile_round.py
    python benchmarks/peers/profile_round.py --dtype bfloat16 --profile
"""

from __future__ import annotations

import argparse
import collections
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout, uninstalled
import torch  # noqa: E402
from workload import chat_prompts  # noqa: E402

import pagedkv  # noqa: E402, F401  (first: it bounds libgomp's spin count)
from pagedkv.engine import LLMEngine, SamplingParams  # noqa: E402
from pagedkv.models import load_model  # noqa: E402


def run_round(eng: LLMEngine, seed: int) -> tuple[float, list[tuple[float, list[Any]]]]:
    params = SamplingParams(temperature=0.0, max_tokens=64)
    for i, p in enumerate(chat_prompts(eng.loaded.tokenizer, 48, seed)):
        eng.add_request(f"{seed}-{i}", p, params)
    steps, t0 = [], time.perf_counter()
    while eng.has_unfinished_requests():
        ts = time.perf_counter()
        eng.step()
        shapes = list(eng.last_step.shapes) if eng.last_step else []
        steps.append((time.perf_counter() - ts, shapes))
    return time.perf_counter() - t0, steps


def linear_table(prof: Any) -> None:
    agg: dict[tuple[str, str], list[float]] = collections.defaultdict(lambda: [0.0, 0, 0.0])
    for e in prof.events():
        if e.name != "mkldnn::_linear_pointwise":
            continue
        x, w = e.input_shapes[0], e.input_shapes[1]
        row = agg[(str(x), str(w))]
        row[0] += e.cpu_time_total / 1e6
        row[1] += 1
        row[2] += 2 * x[0] * x[1] * w[0]
    for (x, w), (sec, n, flop) in sorted(agg.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {sec:6.3f} s  {n:5d} calls  {flop / sec / 1e9:6.1f} GFLOP/s  x {x} w {w}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--profile", action="store_true", help="torch.profiler tables of the round")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    eng = LLMEngine(
        load_model(None, dtype=args.dtype),
        max_num_seqs=64,
        kv_cache_memory=2 << 30,
        block_size=args.block_size,
    )
    run_round(eng, 0)
    forward0 = eng.totals["forward_time"]
    load = os.getloadavg()[0]
    faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            wall, steps = run_round(eng, 1)
    else:
        wall, steps = run_round(eng, 1)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0
    prompt = [s for s in steps if any(n > 1 for _, n in s[1])]
    decode = [s for s in steps if s[1] and all(n == 1 for _, n in s[1])]
    print(
        f"{args.dtype}, {args.threads} threads, load {load:.2f}: wall {wall:.2f} s, forward "
        f"{eng.totals['forward_time'] - forward0:.2f} s; {len(prompt)} steps with prompt rows "
        f"{sum(t for t, _ in prompt):.2f} s, {len(decode)} decode steps "
        f"{sum(t for t, _ in decode):.2f} s; {faults} minor page faults"
    )
    by_batch: dict[int, list[float]] = collections.defaultdict(list)
    for t, shapes in decode:
        by_batch[len(shapes) // 8 * 8].append(t)
    for b in sorted(by_batch):
        ts = by_batch[b]
        print(f"  decode batch {b}-{b + 7}: {len(ts)} steps, mean {1e3 * sum(ts) / len(ts):.1f} ms")
    for t, shapes in prompt:
        print(f"  prompt step {t:.3f} s: {sum(n for _, n in shapes)} tokens, {len(shapes)} seqs")
    if args.profile:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))
        linear_table(prof)
    return 0


if __name__ == "__main__":
    sys.exit(main())
