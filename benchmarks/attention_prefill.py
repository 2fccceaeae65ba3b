"""Prompt attention: the compiled prefill kernel (``paged_prefill``) against PyTorch's SDPA.

SmolLM2's attention shape (9 query heads, 3 KV heads, head_dim 64), 16-token blocks, 2 threads;
per case the kernel reads K/V from the paged pool, SDPA gets contiguous K/V (no gather: its
best case) with ``is_causal`` for fresh prompts and an additive mask for prompts after cached
KV. Cases: one 825-token prompt, one 809-token prompt after 16 cached tokens, 15 prompts of
60-260 tokens (2,555 in all) fresh and after 64 cached tokens each. Median of 20 calls after 3
warm-ups; GFLOP/s counts the causal pairs only (4 flops per pair, head and dimension).

    python benchmarks/attention_prefill.py [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
import torch
from torch.nn import functional as nnf

from pagedkv.attention.cpu_kernel import load_kernel, paged_prefill

HQ, HKV, D, BS = 9, 3, 64, 16


def median_ms(fn: Callable[[], None]) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(20):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1e3 * statistics.median(times)


def case(qlens: list[int], past: list[int], dtype: torch.dtype) -> tuple[float, float, float]:
    lens = [n + p for n, p in zip(qlens, past, strict=True)]
    nblocks = sum(-(-n // BS) for n in lens) + 1
    kv = torch.randn(nblocks, 2, BS, HKV, D).to(dtype)
    q = torch.randn(sum(qlens), HQ, D).to(dtype)
    width = max(-(-n // BS) for n in lens)
    tables = torch.zeros(len(lens), width, dtype=torch.int64)
    nxt = 1
    for s, n in enumerate(lens):
        nb = -(-n // BS)
        tables[s, :nb] = torch.arange(nxt, nxt + nb)
        nxt += nb
    starts = torch.tensor([sum(qlens[:s]) for s in range(len(qlens))])
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    query_lens = torch.tensor(qlens, dtype=torch.int32)
    out = torch.empty_like(q)
    keys = [torch.randn(1, HKV, n, D).to(dtype) for n in lens]
    masks = [
        None
        if p == 0
        else torch.zeros(n, n + p)
        .masked_fill_(torch.arange(n + p)[None] > torch.arange(p, n + p)[:, None], float("-inf"))
        .to(dtype)
        for n, p in zip(qlens, past, strict=True)
    ]

    def kernel() -> None:
        paged_prefill(q, kv, tables, seq_lens, starts, query_lens, out)

    def sdpa() -> None:
        for s, n in enumerate(qlens):
            qs = q[int(starts[s]) : int(starts[s]) + n].transpose(0, 1)[None]
            k = keys[s]
            nnf.scaled_dot_product_attention(
                qs, k, k, attn_mask=masks[s], is_causal=masks[s] is None, enable_gqa=True
            )

    flops = sum(n * (p + (n + 1) / 2) for n, p in zip(qlens, past, strict=True)) * HQ * D * 4
    k_ms, s_ms = median_ms(kernel), median_ms(sdpa)
    return k_ms, s_ms, flops


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    load_kernel()
    rng = random.Random(0)
    many = [rng.randint(60, 260) for _ in range(15)]
    cases = {
        "one 825-token prompt": ([825], [0]),
        "one 809-token prompt after 16 cached": ([809], [16]),
        f"15 prompts ({sum(many)} tokens)": (many, [0] * 15),
        "the 15 after 64 cached tokens each": (many, [64] * 15),
    }
    print(f"{args.dtype}, {args.threads} threads")
    print(f"{'case':38} {'kernel ms':>10} {'GFLOP/s':>8} {'SDPA ms':>9} {'GFLOP/s':>8}")
    for name, (qlens, past) in cases.items():
        k_ms, s_ms, flops = case(qlens, past, dtype)
        k_rate, s_rate = flops / k_ms / 1e6, flops / s_ms / 1e6
        print(f"{name:38} {k_ms:10.2f} {k_rate:8.1f} {s_ms:9.2f} {s_rate:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
