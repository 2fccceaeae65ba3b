"""What sampling costs the engine: a seeded temperature-1 row against a greedy one.

Usage::

    python benchmarks/sampling_cost.py                 # SmolLM2, 2 threads, ~1 min
    python benchmarks/sampling_cost.py --seqs 8 --tokens 32 --repeats 5

Prints (1) ``sampler.sample`` on one row of SmolLM2's 49,152 logits, greedy and seeded
temperature 1 (microseconds, the median of ``--calls``); (2) an offline batch of ``--seqs``
prompts decoding ``--tokens`` tokens each through ``LLM.generate``, greedy and sampled in turn
(``--repeats`` rounds, the first untimed), as output tokens per second, and the load average.
OpenAI's default temperature is 1, so the sampled figure is what a server's default request
costs.
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
from pagedkv.engine import LLM, SamplingParams
from pagedkv.engine.sampler import SampleRow, sample


def row_us(logits: torch.Tensor, params: SamplingParams, calls: int) -> float:
    """Median microseconds of ``sample`` on one row (a fresh output position each call)."""
    times = []
    for k in range(calls + 1):
        row = SampleRow(params, 7, 0, [1, 2, 3], [5] * k, [])
        t0 = time.perf_counter()
        sample(logits, [row])
        times.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(times[1:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seqs", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=4, help="rounds, the first untimed")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    llm = LLM()
    vocab = llm.engine.vocab_size
    logits = torch.randn(1, vocab)
    greedy = SamplingParams(temperature=0.0, max_tokens=args.tokens, ignore_eos=True)
    sampled = SamplingParams(temperature=1.0, seed=3, max_tokens=args.tokens, ignore_eos=True)
    print(f"sample() on one row of {vocab} logits, median of {args.calls} calls:")
    for name, params in (("greedy", greedy), ("temperature 1, seeded", sampled)):
        print(f"  {name:<24}{row_us(logits, params, args.calls):>9.0f} us")
    prompts = [f"Question {k}: name a colour and say why you like it." for k in range(args.seqs)]
    rates: dict[str, list[float]] = {"greedy": [], "sampled": []}
    load0 = os.getloadavg()[0]
    for rep in range(args.repeats):
        for name, params in (("greedy", greedy), ("sampled", sampled)):
            t0 = time.perf_counter()
            outs = llm.generate(prompts, params)
            wall = time.perf_counter() - t0
            if rep:
                rates[name].append(sum(len(o.outputs[0].token_ids) for o in outs) / wall)
    print(
        f"{args.seqs} prompts x {args.tokens} tokens, {args.threads} threads, load average "
        f"{load0:.2f} -> {os.getloadavg()[0]:.2f}; output tok/s, median of {args.repeats - 1}:"
    )
    for name, r in rates.items():
        print(f"  {name:<10}{statistics.median(r):>8.1f}   ({' '.join(f'{x:.1f}' for x in r)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
