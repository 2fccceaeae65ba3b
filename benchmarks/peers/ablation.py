"""pagedkv's speed steps on the peers workload, each configuration in its own process, in turn.

The rows of ``docs/performance.md``: every configuration runs the same round of ``run.py``'s
requests (48 chat requests, greedy, at most 64 new tokens) after a warm-up, in a fresh
interpreter (libgomp reads its spin count at load time), one after the other, repeated
``--repeats`` times in the same order so background load hits all alike.

    python benchmarks/peers/ablation.py --repeats 2
    python benchmarks/peers/ablation.py --steps 5,6 --before /tmp/old-checkout --repeats 2

``--before PATH``: a checkout of an earlier commit (``git worktree add PATH REV``) whose engine
runs first in each repeat, with its own torch extension cache, so that a change is measured
against the code before it in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

SPIN_20000 = {"GOMP_SPINCOUNT": "20000"}  # pagedkv's default from the fourth row to the ninth round

# name -> (engine options, use the native Llama forward, extra environment)
STEPS: dict[str, tuple[dict[str, Any], bool, dict[str, str]]] = {
    "before: HF modules, torch attention, 256 MiB KV, libgomp default spin": (
        {},
        False,
        {"GOMP_SPINCOUNT": "300000"},
    ),
    "+ 2 GiB KV (all 48 requests in the batch)": (
        {"kv_cache_memory": 2 << 30},
        False,
        {"GOMP_SPINCOUNT": "300000"},
    ),
    "+ native Llama forward": ({"kv_cache_memory": 2 << 30}, True, {"GOMP_SPINCOUNT": "300000"}),
    "+ compiled decode kernel (backend cpu)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"GOMP_SPINCOUNT": "300000"},
    ),
    "+ bounded OpenMP spin (GOMP_SPINCOUNT 20000)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"GOMP_SPINCOUNT": "20000"},
    ),
    # The second round (docs/performance.md): everything below on, projections through
    # F.linear on the fused weights instead of oneDNN's packed layout.
    "+ vectorised decode kernel, unpadded prefix-hit chunks, batched argmax (unpacked)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_UNPACKED": "1", **SPIN_20000},
    ),
    "+ packed oneDNN projections": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {
            **SPIN_20000,
            "PAGEDKV_ABLATION_NO_PREFILL_KERNEL": "1",
            "PAGEDKV_ABLATION_NO_FUSED_ROWS": "1",
            "PAGEDKV_ABLATION_ONEDNN": "1",
        },
    ),
    # The third round: prompt rows through the compiled prefill kernel, then the fused row ops,
    # then the start-up heap frozen (what pagedkv serve and the peers worker do).
    "+ prefill kernel (prompt rows straight over the pool)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_NO_FUSED_ROWS": "1", "PAGEDKV_ABLATION_ONEDNN": "1", **SPIN_20000},
    ),
    "+ fused row ops (RMSNorm, RoPE, SiLU-and-multiply)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_ONEDNN": "1", **SPIN_20000},
    ),
    "+ gc.freeze after start-up (freeze_startup_objects)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_FREEZE": "1", "PAGEDKV_ABLATION_ONEDNN": "1", **SPIN_20000},
    ),
    # The eighth round: float32 projections through the compiled panel GEMM.
    "+ panel GEMM for float32 projections": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu", "enable_partial_block_hits": False},
        True,
        {"PAGEDKV_ABLATION_FREEZE": "1", "PAGEDKV_ABLATION_NO_SILU_EPILOGUE": "1", **SPIN_20000},
    ),
    # The ninth round: SiLU-and-multiply in the gate/up GEMM's epilogue, then partial-block
    # prefix hits (both the default now).
    "+ SiLU-and-multiply in the gate/up panel GEMM's epilogue": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu", "enable_partial_block_hits": False},
        True,
        {"PAGEDKV_ABLATION_FREEZE": "1", **SPIN_20000},
    ),
    "+ partial-block prefix hits": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_FREEZE": "1", **SPIN_20000},
    ),
    # OpenMP threads spin 2,000 times, not 20,000, before they sleep (pagedkv/_omp.py): the
    # rows above keep 20,000. Its gain is under load: run the pair beside busy processes.
    "+ GOMP_SPINCOUNT 2000 (the default now)": (
        {"kv_cache_memory": 2 << 30, "backend": "cpu"},
        True,
        {"PAGEDKV_ABLATION_FREEZE": "1"},
    ),
}

BEFORE = "before: the --before checkout (2 GiB KV, backend cpu)"

CHILD = r"""
import json, os, sys, time
sys.path.insert(0, sys.argv[1])
import pagedkv
import torch
from workload import chat_prompts
from pagedkv.engine import LLMEngine, SamplingParams
from pagedkv.models import load_model
opts, native, threads, dtype = json.loads(sys.argv[2])
torch.set_num_threads(threads)
lm = load_model(None, dtype=dtype)
eng = LLMEngine(lm, max_num_seqs=64, **opts)
if not native:
    eng.runner.native = None
elif os.environ.get("PAGEDKV_ABLATION_UNPACKED"):
    eng.runner.native.pack = False
    eng.runner.native._bind()
elif os.environ.get("PAGEDKV_ABLATION_ONEDNN"):  # oneDNN's packed GEMM, not the panel GEMM
    eng.runner.native.compiled = False
    eng.runner.native._bind()
if os.environ.get("PAGEDKV_ABLATION_NO_PREFILL_KERNEL"):  # prompts by SDPA, as before it
    import pagedkv.integrations.native_llama as native_llama
    native_llama.prefill_supported = lambda kv: False
if native and os.environ.get("PAGEDKV_ABLATION_NO_FUSED_ROWS"):  # torch's row ops
    eng.runner.native.silu = False
if os.environ.get("PAGEDKV_ABLATION_NO_SILU_EPILOGUE"):  # the gate/up GEMM, then the row pass
    from pagedkv.integrations import fused_rows, packed_linear
    packed_linear.GateUpLinear.silu_mul = lambda self, x: fused_rows.silu_mul(self(x))
if os.environ.get("PAGEDKV_ABLATION_FREEZE"):
    from pagedkv.engine.llm_engine import freeze_startup_objects
    freeze_startup_objects()
def run(prompts, max_tokens, tag):
    sp = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    for i, p in enumerate(prompts):
        eng.add_request(f"{tag}{i}", p, sp)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    while eng.has_unfinished_requests():
        for o in eng.step():
            if o.finished:
                n += len(o.outputs[0].token_ids)
    return n, time.perf_counter() - t0, time.process_time() - c0
run(chat_prompts(lm.tokenizer, 8, 1000), 16, "w")
load = os.getloadavg()[0]
n, wall, cpu = run(chat_prompts(lm.tokenizer, 48, 1), 64, "r")
print(json.dumps({"tokens": n, "wall": wall, "cpu": cpu, "load": load,
                  "load_after": os.getloadavg()[0]}))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", default="", help="comma-separated row numbers (default: all)")
    ap.add_argument("--before", type=Path, help="a checkout of an earlier commit, run first")
    args = ap.parse_args()
    names = list(STEPS)
    if args.steps:
        names = [names[int(i)] for i in args.steps.split(",")]
    if args.before is not None:
        names = [BEFORE, *names]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:
            base = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT",)}
            if name == BEFORE:
                opts, native, env = STEPS[list(STEPS)[4]]  # its defaults, the peers' settings
                repo = args.before.resolve()
                env = {**env, "TORCH_EXTENSIONS_DIR": str(repo / ".torch_extensions")}
            else:
                opts, native, env = STEPS[name]
                repo = REPO
            child_env = {**base, **env, "PYTHONPATH": str(repo)}
            payload = json.dumps([opts, native, args.threads, args.dtype])
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(repo / "benchmarks/peers"), payload],
                env=child_env,
                cwd=repo,  # `python -c` puts the working directory first on sys.path
                capture_output=True,
                text=True,
                check=True,
            )
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[name].append(res)
            print(
                f"{name:82s} {res['tokens'] / res['wall']:6.1f} tok/s  wall {res['wall']:5.1f} s"
                f"  cpu {res['cpu']:5.1f} s  load {res['load']:.2f}->{res['load_after']:.2f}"
                f"  ({time.perf_counter() - t0:.0f} s with load)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
