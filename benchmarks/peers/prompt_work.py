"""Two ways pagedkv does less prompt work, each timed on and off in turn (2 threads, float32).

``--case last-layer``: one step of 15 fresh chat prompts (2,048 tokens, prefix cache off) with
the last decoder layer cut to each sequence's last row (the default with the compiled ``cpu``
backend) and with it run on every row (``LastRows.build`` patched to ``None``).

``--case same-step``: a round of ``run.py``'s 48 chat requests (greedy, at most 64 new tokens)
on an engine whose prefix cache has never seen the system prompts (warmed with unrelated
prompts), with prompts that share a block computed in the same step waiting a step (the
default) and without (``StepBlocks.computes_next_block_of`` patched to ``False``). Prints the
round's wall time, steps and tokens computed.

Each repeat runs both variants, alternating which goes first; the median is printed with the
load average.

    python benchmarks/peers/prompt_work.py --case last-layer --repeats 6
    python benchmarks/peers/prompt_work.py --case same-step --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))  # run from a checkout, uninstalled
import torch  # noqa: E402
from workload import chat_prompts  # noqa: E402

import pagedkv  # noqa: E402, F401  (first: it bounds libgomp's spin count)
from pagedkv.engine import LLMEngine, SamplingParams, step_prefix  # noqa: E402
from pagedkv.integrations import native_llama  # noqa: E402
from pagedkv.models import load_model  # noqa: E402

GREEDY_1 = SamplingParams(temperature=0.0, max_tokens=1)


def last_layer_step(loaded: object, cut: bool, seed: int) -> tuple[float, str]:
    real = native_llama.LastRows.build
    if not cut:
        native_llama.LastRows.build = lambda *a: None  # type: ignore[assignment,method-assign]
    try:
        eng = LLMEngine(
            loaded, max_num_seqs=64, kv_cache_memory=2 << 30, enable_prefix_caching=False
        )
        eng.add_request("w", list(range(300, 400)), GREEDY_1)  # warm-up step
        while eng.has_unfinished_requests():
            eng.step()
        for i, p in enumerate(chat_prompts(eng.loaded.tokenizer, 15, seed)):
            eng.add_request(str(i), p, GREEDY_1)
        t = time.perf_counter()
        eng.step()
        dt = time.perf_counter() - t
        tokens = sum(n for _, n in eng.last_step.shapes) if eng.last_step else 0
        return dt, f"{tokens} tokens"
    finally:
        native_llama.LastRows.build = real  # type: ignore[method-assign]


def same_step_round(loaded: object, wait: bool, seed: int) -> tuple[float, str]:
    real = step_prefix.StepBlocks.computes_next_block_of
    if not wait:
        step_prefix.StepBlocks.computes_next_block_of = lambda *a: False  # type: ignore[method-assign]
    try:
        eng = LLMEngine(loaded, max_num_seqs=64, kv_cache_memory=2 << 30)
        for i in range(4):  # warm, with prompts that share nothing with the round's
            eng.add_request(f"w{i}", list(range(300 + 50 * i, 400 + 50 * i)), GREEDY_1)
        while eng.has_unfinished_requests():
            eng.step()
        params = SamplingParams(temperature=0.0, max_tokens=64)
        for i, p in enumerate(chat_prompts(eng.loaded.tokenizer, 48, seed)):
            eng.add_request(str(i), p, params)
        steps = tokens = 0
        t = time.perf_counter()
        while eng.has_unfinished_requests():
            eng.step()
            steps += 1
            tokens += sum(n for _, n in eng.last_step.shapes) if eng.last_step else 0
        return time.perf_counter() - t, f"{steps} steps, {tokens} tokens computed"
    finally:
        step_prefix.StepBlocks.computes_next_block_of = real  # type: ignore[method-assign]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("last-layer", "same-step"), required=True)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(2)
    loaded = load_model(None)
    run, names = (
        (last_layer_step, ("last layer cut", "last layer on every row"))
        if args.case == "last-layer"
        else (same_step_round, ("same-step prompts wait", "no waiting"))
    )
    times: dict[bool, list[float]] = {True: [], False: []}
    for r in range(args.repeats):
        for on in (True, False) if r % 2 == 0 else (False, True):
            dt, what = run(loaded, on, 100 + r)
            times[on].append(dt)
            name = names[0] if on else names[1]
            load = os.getloadavg()[0]
            print(f"repeat {r}: {name:<24} {dt * 1e3:8.0f} ms  {what}  load {load:.2f}", flush=True)
    for on in (True, False):
        print(
            f"{names[0] if on else names[1]:<24} median {statistics.median(times[on]) * 1e3:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
