"""TTFT of a long shared prompt served from each KV tier vs recomputed, through the engine.

For each tier: one engine computes the prompt (its blocks are written through to the tier),
then a *fresh* engine (empty device cache; for the host tier, the same engine with its device
prefix cache reset, since host memory is per process) serves the same prompt again and loads
the prefix from the tier. The baseline is a fresh engine with no tier, recomputing everything.
Each TTFT is the median of ``--repeats`` runs, one request of ``max_tokens=1`` at a time.

    python benchmarks/tiers_ttft.py                      # default model, 2,048-token prompt
    python benchmarks/tiers_ttft.py --tokens 1024 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from pagedkv.engine import LLMEngine, SamplingParams
from pagedkv.models import load_model
from pagedkv.tiers import embedded_valkey


def ttft(engine: LLMEngine, prompt: list[int], rid: str) -> tuple[float, int]:
    """Seconds from submission to the first token, and the prompt tokens served cached."""
    t0 = time.perf_counter()
    engine.add_request(rid, prompt, SamplingParams(temperature=0, max_tokens=1))
    out = None
    while engine.has_unfinished_requests():
        for o in engine.step():
            out = o
    assert out is not None
    assert out.finished
    return time.perf_counter() - t0, out.num_cached_tokens


def run_tier(
    model: Any, prompt: list[int], repeats: int, name: str, options: dict[str, Any]
) -> tuple[float, int]:
    times, cached = [], 0
    for r in range(repeats):
        writer = LLMEngine(model, **options)
        ttft(writer, prompt, f"w{r}")  # computes and writes through
        if writer.tiers is not None:
            writer.tiers.cache.flush()
        if name == "host":  # host memory is per process: same engine, device cache emptied
            writer.manager.reset_prefix_cache()
            reader = writer
        else:
            writer.close()
            reader = LLMEngine(model, **options)
        t, cached = ttft(reader, prompt, f"r{r}")
        times.append(t)
        reader.close()
    return statistics.median(times), cached


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=2048, help="prompt length")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--block-size", type=int, default=16)
    args = p.parse_args()
    model = load_model()
    prompt = [(i * 7919 + 13) % 40000 + 100 for i in range(args.tokens)]
    base = {
        "block_size": args.block_size,
        "max_num_batched_tokens": args.tokens,
        "kv_cache_memory": 512 << 20,
    }
    rows = []
    recompute, _ = run_tier(model, prompt, args.repeats, "none", base)
    rows.append(("recompute (no tier)", recompute, 0))
    with tempfile.TemporaryDirectory() as folder, embedded_valkey(maxmemory="1gb") as valkey:
        for name, extra in (
            ("host", {"kv_host_bytes": 1 << 30}),
            ("disk", {"kv_disk_path": folder}),
            ("remote", {"kv_remote": valkey.url}),
        ):
            t, cached = run_tier(model, prompt, args.repeats, name, {**base, **extra})
            rows.append((f"{name} tier", t, cached))
    print(
        f"model {model.name}, prompt {args.tokens} tokens, block size {args.block_size}, "
        f"median of {args.repeats}"
    )
    print(f"{'served from':<22}{'TTFT s':>9}{'cached tok':>12}{'speed-up':>10}")
    for label, t, cached in rows:
        print(f"{label:<22}{t:>9.3f}{cached:>12}{recompute / t:>9.1f}x")


if __name__ == "__main__":
    main()
