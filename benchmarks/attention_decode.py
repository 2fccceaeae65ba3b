"""Paged decode attention (reference torch backend) vs. contiguous SDPA on the same data.

Usage::

    python benchmarks/attention_decode.py            # table
    python benchmarks/attention_decode.py --json     # machine-readable
    python benchmarks/attention_decode.py --batch 8 --context 128 512 --repeats 5

Setup per (batch B, context L): a Llama-3-8B-like layer (32 query heads, 8 KV heads, head_dim
128, fp32), block size 16, every sequence holding L tokens in *randomly permuted* physical blocks
(a fragmented cache). Timed: one decode attention call (one query token per sequence).

* ``sdpa``: ``nnf.scaled_dot_product_attention(q[B,32,1,128], k[B,8,L,128], v, enable_gqa=True)``
  on contiguous K/V (what HF's ``sdpa`` attention does with a contiguous cache).
* ``paged``: ``get_attention_backend("torch").forward(q[B,32,128], kv_layer, metadata)`` with the
  step's metadata built once beforehand (an engine builds it once per step for all layers).

Median of ``--repeats`` timed calls (interleaved) after two warm-ups. ``ratio = paged / sdpa``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as nnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from pagedkv.attention import AttentionMetadata, get_attention_backend
from pagedkv.storage import KVStorage

HQ, HKV, D, BS = 32, 8, 128, 16


def _median_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time (ms) of each function; calls are interleaved so that background load on a
    shared machine hits every contender alike."""
    for fn in fns:
        fn()
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) * 1e3 for ts in times]


def bench_one(batch: int, context: int, repeats: int, seed: int = 0) -> dict[str, float]:
    """Time paged vs. contiguous decode attention for ``batch`` sequences of ``context`` tokens."""
    g = torch.Generator().manual_seed(seed)
    nblk = -(-context // BS)
    num_blocks = 1 + batch * nblk
    store = KVStorage(num_layers=1, num_blocks=num_blocks, block_size=BS, num_kv_heads=HKV,
                      head_dim=D, dtype=torch.float32)
    # Contiguous K/V [B, Hkv, L, D] and the same values scattered into shuffled blocks.
    k = torch.randn(batch, HKV, context, D, generator=g)
    v = torch.randn(batch, HKV, context, D, generator=g)
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(batch, nblk)
    pos = torch.arange(context)
    slots = (tables[:, pos // BS] * BS + pos % BS).reshape(-1)
    store.write(0, k.transpose(1, 2).reshape(-1, HKV, D), v.transpose(1, 2).reshape(-1, HKV, D),
                slots)
    q = torch.randn(batch, HQ, D, generator=g)
    meta = AttentionMetadata.build(block_size=BS, block_tables=tables, seq_lens=[context] * batch,
                                   query_lens=[1] * batch)
    backend = get_attention_backend("torch")
    layer = store.layer(0)

    def paged() -> torch.Tensor:
        return backend.forward(q, layer, meta)

    def sdpa() -> torch.Tensor:
        return nnf.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)

    ref = sdpa()[:, :, 0]
    err = float((paged() - ref).abs().max())
    assert err < 1e-4, f"paged attention disagrees with SDPA: max abs err {err}"
    t_sdpa, t_paged = _median_ms([sdpa, paged], repeats)
    return {"batch": batch, "context": context, "sdpa_ms": round(t_sdpa, 3),
            "paged_ms": round(t_paged, 3), "ratio": round(t_paged / t_sdpa, 3),
            "max_abs_err": err}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every (batch, context) pair, print a table or JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--context", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_one(b, c, args.repeats) for b in args.batch for c in args.context]
    if args.json:
        print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                          "heads": [HQ, HKV, D], "block_size": BS, "rows": rows}, indent=2))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
          f"Hq={HQ} Hkv={HKV} D={D} block_size={BS}")
    print(f"{'batch':>5} {'context':>7} {'sdpa ms':>9} {'paged ms':>9} {'ratio':>6}")
    for r in rows:
        print(f"{r['batch']:>5} {r['context']:>7} {r['sdpa_ms']:>9.3f} {r['paged_ms']:>9.3f} "
              f"{r['ratio']:>6.2f}")
    ratios = [r["ratio"] for r in rows]
    print(f"geomean ratio {statistics.geometric_mean(ratios):.2f} (target <= 1.2)")


if __name__ == "__main__":
    main()
