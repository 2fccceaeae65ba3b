"""Decode steps in the thread that loaded the model, in a second thread, and in a second thread
after the first one's OpenMP workers were released (what ``AsyncLLMEngine`` and so
``pagedkv serve`` do, ``pagedkv._omp.release_thread_pool``).

Usage::

    python benchmarks/engine_thread.py            # SmolLM2, 2 threads, ~1 min

libgomp keeps a pool of workers per thread that ran a parallel region and stops spinning
between regions once more threads are pooled than there are CPUs, so a second thread's steps
pay a futex wake-up per op. Printed per placement and batch size: the median decode step (ms),
and the CPU seconds of the stepping thread and of its busiest other thread (its OpenMP worker:
idle while it sleeps between ops).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import threading
from collections.abc import Callable

import torch

from pagedkv._omp import release_thread_pool
from pagedkv.engine import LLMEngine, SamplingParams
from pagedkv.models import load_model

BATCHES = (1, 2, 4)


def thread_cpu() -> dict[str, float]:
    """CPU seconds per live thread id (Linux ``/proc``; empty elsewhere)."""
    out: dict[str, float] = {}
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat", encoding="ascii") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def decode_medians(engine: LLMEngine, rng: random.Random, tag: str) -> dict[int, float]:
    """Median decode-step milliseconds at each batch size (300-token prompts, 40 tokens)."""
    medians = {}
    for batch in BATCHES:
        for i in range(batch):
            ids = [rng.randrange(engine.vocab_size) for _ in range(300)]
            params = SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.0)
            engine.add_request(f"{tag}-{batch}-{i}", {"prompt_token_ids": ids}, params)
        times = []
        while engine.has_unfinished_requests():
            engine.step()
            step = engine.last_step
            decodes = step is not None and all(n == 1 for _, n in step.shapes)
            if step is not None and decodes and len(step.shapes) == batch:
                times.append(step.seconds * 1e3)
        medians[batch] = statistics.median(times)
    return medians


def measure(label: str, body: Callable[[], dict[int, float]], in_thread: bool) -> None:
    result: dict[int, float] = {}
    before = thread_cpu()

    def run() -> None:
        result.update(body())
        after = thread_cpu()  # read in the stepping thread: its worker is still alive
        used = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
        result[-1], result[-2] = used[0], used[1] if len(used) > 1 else 0.0

    if in_thread:
        t = threading.Thread(target=run)
        t.start()
        t.join()
    else:
        run()
    steps = "  ".join(f"B={b}: {result[b]:5.1f}" for b in BATCHES)
    print(f"{label:<38} {steps}   CPU s {result[-1]:.1f} / {result[-2]:.1f}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine = LLMEngine(load_model(None), kv_cache_memory=2 << 30)
    rng = random.Random(0)
    print(f"load average {os.getloadavg()[0]:.2f}; median decode step (ms) per batch size")
    for _ in range(args.rounds):
        measure("the loading thread", lambda: decode_medians(engine, rng, "main"), False)
        measure("a second thread", lambda: decode_medians(engine, rng, "second"), True)
        released = release_thread_pool()
        measure(
            f"a second thread, pool released ({released})",
            lambda: decode_medians(engine, rng, "released"),
            True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
