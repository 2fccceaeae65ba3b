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
* ``cpu``: the same call on ``get_attention_backend("cpu")``, the compiled decode kernel that
  reads the blocks in place (built on first use, ~30 s; the column is left out, with a note, if
  it cannot be built).

Median of ``--repeats`` timed calls (all contenders interleaved, so background load hits them
alike) after two warm-ups. ``ratio = paged / sdpa``, ``cpu ratio = cpu / sdpa``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as nnf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians

from pagedkv.attention import AttentionMetadata, CpuKernelUnavailableError, get_attention_backend
from pagedkv.storage import KVStorage

HQ, HKV, D, BS = 32, 8, 128, 16


def bench_one(
    batch: int, context: int, repeats: int, seed: int = 0, with_cpu: bool = True
) -> dict[str, float]:
    """Time paged (reference and, if ``with_cpu``, compiled) vs. contiguous decode attention for
    ``batch`` sequences of ``context`` tokens."""
    g = torch.Generator().manual_seed(seed)
    nblk = -(-context // BS)
    num_blocks = 1 + batch * nblk
    store = KVStorage(
        num_layers=1,
        num_blocks=num_blocks,
        block_size=BS,
        num_kv_heads=HKV,
        head_dim=D,
        dtype=torch.float32,
    )
    # Contiguous K/V [B, Hkv, L, D] and the same values scattered into shuffled blocks.
    k = torch.randn(batch, HKV, context, D, generator=g)
    v = torch.randn(batch, HKV, context, D, generator=g)
    tables = (torch.randperm(num_blocks - 1, generator=g) + 1).view(batch, nblk)
    pos = torch.arange(context)
    slots = (tables[:, pos // BS] * BS + pos % BS).reshape(-1)
    store.write(
        0, k.transpose(1, 2).reshape(-1, HKV, D), v.transpose(1, 2).reshape(-1, HKV, D), slots
    )
    q = torch.randn(batch, HQ, D, generator=g)
    meta = AttentionMetadata.build(
        block_size=BS, block_tables=tables, seq_lens=[context] * batch, query_lens=[1] * batch
    )
    backend = get_attention_backend("torch")
    layer = store.layer(0)

    def paged() -> torch.Tensor:
        return backend.forward(q, layer, meta)

    def sdpa() -> torch.Tensor:
        return nnf.scaled_dot_product_attention(q[:, :, None], k, v, enable_gqa=True)

    fns: list[Callable[[], object]] = [sdpa, paged]
    ref = sdpa()[:, :, 0]
    err = float((paged() - ref).abs().max())
    assert err < 1e-4, f"paged attention disagrees with SDPA: max abs err {err}"
    if with_cpu:
        cpu_backend = get_attention_backend("cpu")

        def cpu() -> torch.Tensor:
            return cpu_backend.forward(q, layer, meta)

        cpu_err = float((cpu() - ref).abs().max())
        assert cpu_err < 1e-4, f"cpu kernel disagrees with SDPA: max abs err {cpu_err}"
        fns.append(cpu)
    times = [t * 1e3 for t in interleaved_medians(fns, repeats, warmup=2)]
    t_sdpa, t_paged = times[0], times[1]
    row = {
        "batch": batch,
        "context": context,
        "sdpa_ms": round(t_sdpa, 3),
        "paged_ms": round(t_paged, 3),
        "ratio": round(t_paged / t_sdpa, 3),
        "max_abs_err": err,
    }
    if with_cpu:
        row.update(
            cpu_ms=round(times[2], 3),
            cpu_ratio=round(times[2] / t_sdpa, 3),
            cpu_max_abs_err=cpu_err,
        )
    return row


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run every (batch, context) pair, print a table or JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, nargs="+", default=[8, 32])
    p.add_argument("--context", type=int, nargs="+", default=[128, 256, 512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-cpu", action="store_true", help="skip the compiled cpu kernel column")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with_cpu = not args.no_cpu
    if with_cpu:
        try:
            get_attention_backend("cpu")  # build (or load) before timing anything
        except CpuKernelUnavailableError as exc:
            print(f"note: cpu kernel column left out: {exc}", file=sys.stderr)
            with_cpu = False
    rows = [
        bench_one(b, c, args.repeats, with_cpu=with_cpu) for b in args.batch for c in args.context
    ]
    if args.json:
        print(
            json.dumps(
                {
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                    "heads": [HQ, HKV, D],
                    "block_size": BS,
                    "rows": rows,
                },
                indent=2,
            )
        )
        return
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, "
        f"Hq={HQ} Hkv={HKV} D={D} block_size={BS}"
    )
    cpu_hdr = f" {'cpu ms':>9} {'cpu ratio':>9}" if with_cpu else ""
    print(f"{'batch':>5} {'context':>7} {'sdpa ms':>9} {'paged ms':>9} {'ratio':>6}{cpu_hdr}")
    for r in rows:
        cpu_col = f" {r['cpu_ms']:>9.3f} {r['cpu_ratio']:>9.2f}" if with_cpu else ""
        print(
            f"{r['batch']:>5} {r['context']:>7} {r['sdpa_ms']:>9.3f} {r['paged_ms']:>9.3f} "
            f"{r['ratio']:>6.2f}{cpu_col}"
        )
    gm = statistics.geometric_mean([r["ratio"] for r in rows])
    line = f"geomean ratio: torch {gm:.2f}"
    if with_cpu:
        line += f", cpu {statistics.geometric_mean([r['cpu_ratio'] for r in rows]):.2f}"
    print(line + " (target <= 1.2)")


if __name__ == "__main__":
    main()
