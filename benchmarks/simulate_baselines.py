"""Paging vs contiguous reservation: how much KV memory holds real token states.

Runs the serving replay of the same workload through the paged BlockManager (no prefix sharing,
so only allocation granularity differs) and the three contiguous baselines of the vLLM paper
(reserve max length / next power of two / exact final length), at equal KV memory, and prints
token states / allocated memory, throughput and latency. Workloads: a seeded ShareGPT-like
synthetic trace (always) and the Azure conversation trace when ../shared/traces/ is present.

    .venv/bin/python benchmarks/simulate_baselines.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from pagedkv.simulator.report import BASELINE_COLUMNS, serving_table
from pagedkv.simulator.runner import SimulationConfig, run_simulation
from pagedkv.simulator.synthetic import SyntheticSpec, generate
from pagedkv.simulator.trace import Trace, load_trace

TRACES = Path(
    os.environ.get("PAGEDKV_TRACES", Path(__file__).resolve().parents[2] / "shared" / "traces")
)


#: the vLLM v0 scheduling the documented numbers were measured with (the simulator's defaults
#: are now the engine's: 64 sequences, 2048-token chunked budget, 1% watermark)
V0_LIMITS: dict[str, Any] = {
    "max_num_seqs": 256,
    "max_num_batched_tokens": 8192,
    "enable_chunked_prefill": False,
}


def run(title: str, trace: Trace, kv_tokens: int, max_model_len: int) -> None:
    common: dict[str, Any] = {
        "block_sizes": (16,),
        "kv_tokens": kv_tokens,
        "max_model_len": max_model_len,
    }
    cfg = SimulationConfig(modes=("baselines",), watermark=0.0, **common, **V0_LIMITS)
    report, _ = run_simulation(trace, cfg)
    # paging with a 5% admission watermark (blocks kept free for decode growth)
    wm = SimulationConfig(modes=("baselines",), watermark=0.05, **common, **V0_LIMITS)
    extra = run_simulation(trace, wm)[0]["baselines"][0]
    extra["backend"] = "paged-bs16 wm=0.05"
    report["baselines"].insert(1, extra)
    w = report["workload"]
    print(
        f"\n{title}: {w['requests']:,} requests, mean in/out {w['mean_input_tokens']:.0f}/"
        f"{w['mean_output_tokens']:.0f}, KV memory {kv_tokens:,} tokens, "
        f"max_model_len {max_model_len}"
    )
    print(serving_table(report["baselines"], BASELINE_COLUMNS))


def main() -> int:
    sharegpt = generate(
        SyntheticSpec(dataset="sharegpt", num_requests=2000, rate=8.0, max_len=2048, seed=0)
    )
    run("ShareGPT-like synthetic (single-turn, 8 req/s)", sharegpt, 16384, 2048)
    azure = TRACES / "AzureLLMInferenceTrace_conv_2023.csv"
    if azure.exists():
        run(
            "Azure LLM inference trace (conversation), first 3000 requests",
            load_trace(azure, limit=3000),
            65536,
            8192,
        )
    else:
        print(f"\n{azure} not found; skipping the Azure workload")
    return 0


if __name__ == "__main__":
    sys.exit(main())
