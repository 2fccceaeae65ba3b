"""The compiled decode kernel over a model's worth of pools: K/V read from DRAM, as in an engine.

``attention_decode.py`` times one layer whose pool stays in cache between calls; an engine's
decode step walks every layer's pool once, so its K/V come from DRAM. Here each of ``--layers``
pools ``[N, 2, BS, Hkv, D]`` holds ``--batch`` sequences of ``--min-len``..``--max-len`` tokens
in randomly permuted blocks, and one timed sweep calls the kernel once per layer (SmolLM2-135M's
geometry by default: 30 layers, 9 query heads, 3 kv heads, head_dim 64, float32).

    python benchmarks/attention_decode_pools.py
    python benchmarks/attention_decode_pools.py --dtype bfloat16 --hq 32 --hkv 8 --d 128

Prints the median and minimum of ``--repeats`` sweeps per layer, the K/V bytes the visible keys
hold divided by the median (GB/s), and the load average.
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
from pagedkv.attention import cpu_kernel


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--batch", type=int, default=48)
    p.add_argument("--min-len", type=int, default=150)
    p.add_argument("--max-len", type=int, default=250)
    p.add_argument("--hq", type=int, default=9)
    p.add_argument("--hkv", type=int, default=3)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    dtype = getattr(torch, a.dtype)
    gen = torch.Generator().manual_seed(0)
    lens = torch.randint(a.min_len, a.max_len + 1, (a.batch,), generator=gen, dtype=torch.int32)
    per_seq = -(-a.max_len // a.block_size)
    blocks = a.batch * per_seq + 1
    tables = (torch.randperm(blocks - 1, generator=gen) + 1).view(a.batch, per_seq).contiguous()
    shape = (blocks, 2, a.block_size, a.hkv, a.d)
    pools = [torch.randn(shape, generator=gen).to(dtype) for _ in range(a.layers)]
    q = torch.randn(a.batch, a.hq, a.d, generator=gen).to(dtype)
    cpu_kernel.load_kernel()
    for pool in pools[:2]:
        cpu_kernel.paged_decode(q, pool, tables, lens)
    sweeps = []
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        for pool in pools:
            cpu_kernel.paged_decode(q, pool, tables, lens)
        sweeps.append((time.perf_counter() - t0) / a.layers)
    med = statistics.median(sweeps)
    kv_bytes = int(lens.sum()) * 2 * a.hkv * a.d * pools[0].element_size()
    print(
        f"{a.dtype}, {a.layers} layers, batch {a.batch}, {a.min_len}-{a.max_len} tokens, "
        f"Hq {a.hq} Hkv {a.hkv} D {a.d}, block {a.block_size}, {a.threads} threads: "
        f"median {med * 1e6:.0f} us a layer (min {min(sweeps) * 1e6:.0f}), "
        f"{kv_bytes / med / 1e9:.1f} GB/s of K/V, load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
