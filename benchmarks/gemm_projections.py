"""A Llama's projections at a step's row counts: the panel GEMM against oneDNN's packed GEMM.

Each of ``--layers`` layers holds its own weights (SmolLM2-135M's shapes by default: q/k/v
``576 -> 960``, o ``576 -> 576``, gate/up ``576 -> 3072``, down ``1536 -> 576``), so a sweep
over the layers streams them from DRAM as an engine step does. Both sides are
:class:`pagedkv.integrations.packed_linear.PackedLinear` on the same weights:
``compiled=False`` (oneDNN) and ``compiled=True`` (the compiled kernel's panel GEMM, float32 on
AVX-512).

A ``silu_mul`` case times the MLP's gate/up step on panels both ways, on
:class:`~pagedkv.integrations.packed_linear.GateUpLinear`: the gate|up GEMM then the separate
SiLU-and-multiply row pass (``fused_rows.silu_mul``) against the GEMM with the SiLU-and-multiply
as its epilogue (``silu_mul``, one call), at ``--silu-rows``; GFLOP/s count the GEMM's flops.

    python benchmarks/gemm_projections.py
    python benchmarks/gemm_projections.py --rows 1,8,48 --hidden 4096 --inter 14336 \
        --qkv 6144 --layers 4
    python benchmarks/gemm_projections.py --cases silu_mul --repeats 3

Prints per shape and row count the best of ``--repeats`` sweeps (µs a layer), GFLOP/s and the
ratio, and the load average.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
from pagedkv.integrations import fused_rows
from pagedkv.integrations.packed_linear import GateUpLinear, PackedLinear
from pagedkv.integrations.panel_gemm import panel_gemm_usable


def best_sweep(fn, layers: int, repeats: int) -> float:
    """Best seconds a layer over ``repeats`` sweeps of ``fn(i)`` for every layer ``i``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(layers):
            fn(i)
        best = min(best, time.perf_counter() - t0)
    return best / layers


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="1,8,16,32,42,43,48,56,64,128,1194,2048")
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--qkv", type=int, default=960)
    p.add_argument("--inter", type=int, default=1536)
    p.add_argument("--layers", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default="qkv,o,gate_up,down,silu_mul")
    p.add_argument("--silu-rows", default="1,8,48,2048")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not panel_gemm_usable(torch.empty(1, 1)):
        print("the panel GEMM needs an AVX-512 CPU and the compiled kernel", file=sys.stderr)
        return 2
    shapes = {  # name: (K, N)
        "qkv": (a.hidden, a.qkv),
        "o": (a.hidden, a.hidden),
        "gate_up": (a.hidden, 2 * a.inter),
        "down": (a.inter, a.hidden),
    }
    cases = a.cases.split(",")
    gen = torch.Generator().manual_seed(0)
    print(f"{a.threads} threads, {a.layers} layers, load {os.getloadavg()[0]:.2f}")
    for name, (k, n) in shapes.items():
        if name not in cases:
            continue
        linears = []
        for _ in range(a.layers):
            lin = torch.nn.Linear(k, n, bias=False)
            with torch.no_grad():
                lin.weight.copy_(torch.randn(n, k, generator=gen) * 0.05)
            linears.append(lin)
        onednn = [PackedLinear([lin]) for lin in linears]
        panels = [PackedLinear([lin], compiled=True) for lin in linears]
        for m in (int(r) for r in a.rows.split(",")):
            x = torch.randn(m, k, generator=gen)
            t_one = best_sweep(lambda i, x=x, p=onednn: p[i](x), a.layers, a.repeats)
            t_pan = best_sweep(lambda i, x=x, p=panels: p[i](x), a.layers, a.repeats)
            gf = 2 * m * k * n / 1e9
            print(
                f"{name:8s} [{m:5d}, {k:5d}] x [{k:5d}, {n:5d}]: oneDNN {t_one * 1e6:8.1f} µs "
                f"{gf / t_one:6.1f} GFLOP/s | panels {t_pan * 1e6:8.1f} µs {gf / t_pan:6.1f} "
                f"GFLOP/s | {t_one / t_pan:4.2f}x",
                flush=True,
            )
    if "silu_mul" in cases:
        silu_mul_case(a, gen)
    print(f"load {os.getloadavg()[0]:.2f}")
    return 0


def silu_mul_case(a: argparse.Namespace, gen: torch.Generator) -> None:
    """The gate/up GEMM then ``fused_rows.silu_mul`` against the fused call, on panels."""
    k, inter = a.hidden, a.inter
    packs = []
    for _ in range(a.layers):
        gate, up = torch.nn.Linear(k, inter, bias=False), torch.nn.Linear(k, inter, bias=False)
        with torch.no_grad():
            for lin in (gate, up):
                lin.weight.copy_(torch.randn(inter, k, generator=gen) * 0.05)
        packs.append(GateUpLinear(gate, up, compiled=True))
    assert all(p.fused for p in packs)
    for m in (int(r) for r in a.silu_rows.split(",")):
        x = torch.randn(m, k, generator=gen)
        t_two = best_sweep(lambda i, x=x: fused_rows.silu_mul(packs[i](x)), a.layers, a.repeats)
        t_one = best_sweep(lambda i, x=x: packs[i].silu_mul(x), a.layers, a.repeats)
        gf = 2 * m * k * 2 * inter / 1e9
        print(
            f"silu_mul [{m:5d}, {k:5d}] x [{k:5d}, 2 x {inter:5d}]: GEMM + row pass "
            f"{t_two * 1e6:8.1f} µs {gf / t_two:6.1f} GFLOP/s | fused {t_one * 1e6:8.1f} µs "
            f"{gf / t_one:6.1f} GFLOP/s | {t_two / t_one:4.2f}x | load {os.getloadavg()[0]:.2f}",
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
