"""A lone prompt's step time by its length: the engine's cost curve in prompt tokens.

What a request arriving at an idle engine costs (its TTFT), and the token curve a cost model
(``pagedkv profile``) has to follow. Each length runs as one prompt of that many tokens (one
output token, prefix caching off) on one engine, the lengths in turn and every other repeat in
reverse order so that the machine's drift hits all alike; the first repeat is a warm-up.

    python benchmarks/prompt_step_times.py
    python benchmarks/prompt_step_times.py --lengths 64,65,128,129 --repeats 9

Prints per length the median step time (ms), every timed repeat, and the load average. A
staircase at multiples of 64 rows (the panel GEMM's row chunk) is what the tenth round of
docs/performance.md removed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from pagedkv.engine import EngineConfig, LLMEngine, SamplingParams
from pagedkv.models import load_model

LENGTHS = "32,48,56,63,64,65,66,72,80,96,112,128,129,136,160,192,193,256"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lengths", default=LENGTHS, help="prompt lengths in tokens, comma-separated")
    ap.add_argument("--repeats", type=int, default=6, help="runs of each length, the first untimed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [int(x) for x in args.lengths.split(",")]
    engine = LLMEngine(
        load_model(None, dtype=args.dtype),
        EngineConfig(max_num_batched_tokens=max(512, max(lengths)), enable_prefix_caching=False),
    )
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    times: dict[int, list[float]] = {n: [] for n in lengths}
    load0, made = os.getloadavg()[0], 0
    for rep in range(args.repeats):
        for n in lengths if rep % 2 == 0 else lengths[::-1]:
            ids = [(13 * k + made) % 5000 + 10 for k in range(n)]  # no two prompts alike
            engine.add_request(f"p{made}", {"prompt_token_ids": ids}, params)
            made += 1
            t0 = time.perf_counter()
            while engine.has_unfinished_requests():
                engine.step()
            if rep:
                times[n].append(1e3 * (time.perf_counter() - t0))
    print(
        f"{args.threads} threads, {args.dtype}, load average {load0:.2f} -> "
        f"{os.getloadavg()[0]:.2f}"
    )
    for n in lengths:
        runs = " ".join(f"{t:.0f}" for t in times[n])
        print(f"{n:>6} tokens {statistics.median(times[n]):>8.1f} ms   ({runs})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
