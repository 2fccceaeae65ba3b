"""Benchmark workload W: the block manager's admit / decode / free cycle.

2,000 requests with 512-token prompts; half share one 256-token prefix (the rest of every prompt
is random, seeded). 64 run at a time: each is admitted (prefix lookup + prompt allocation), the
wave's prefill is committed (``commit``: its KV is written, its full blocks become findable),
then 128 decode steps append one token to every running request and commit it, then the wave is
freed. Each variant runs in two forms: ``batched`` (one ``append_batch`` for the whole wave per
step) and ``per-call`` (``append(seq_id, token)`` once per sequence per step with a Python int,
the way vLLM's scheduler calls ``allocate_slots``); both ``commit`` the wave once per step, as an
engine does after its forward.
block_size 16, 3,937 blocks, prefix caching on. Requests of one wave cannot hit each other's
prompt blocks (not computed when they are admitted); later waves hit the shared prefix.

    python benchmarks/manager_ops.py --json

prints one JSON object per variant (sha256, xxh128, prefix caching off) and form with ``wall_s``,
``ops_per_s`` (request-level manager operations per second, counted as vLLM's KVCacheManager
would see them: one per admission, one per sequence per decode step, one per free),
``calls`` (the Python calls actually made: a decode step is one ``append_batch`` or one
``append`` per sequence, and one ``commit``),
``prefix_hit_rate`` and ``peak_usage``.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import numpy as np

from pagedkv import BlockManager, CacheConfig


def make_prompts(
    num_requests: int, prompt_len: int, shared_len: int, seed: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shared = rng.integers(0, 32000, shared_len, dtype=np.int64)
    prompts = []
    for i in range(num_requests):
        p = rng.integers(0, 32000, prompt_len, dtype=np.int64)
        if i % 2 == 0:
            p[:shared_len] = shared
        prompts.append(p)
    return prompts


FORMS = ("batched", "per-call")


def run(
    prompts: list[np.ndarray],
    *,
    hash_algo: str,
    caching: bool,
    batch: int,
    decode: int,
    block_size: int,
    num_blocks: int,
    form: str = "batched",
) -> dict[str, Any]:
    mgr = BlockManager(
        CacheConfig(
            block_size=block_size,
            num_blocks=num_blocks,
            enable_prefix_caching=caching,
            hash_algo=hash_algo,
        )
    )
    rng = np.random.default_rng(1)
    decode_tokens = rng.integers(0, 32000, (decode, batch), dtype=np.int64)
    decode_lists: list[list[int]] = decode_tokens.tolist()  # per-call: Python ints, as sampled
    per_call = form == "per-call"
    append, append_batch, commit = mgr.append, mgr.append_batch, mgr.commit
    calls = ops = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        ids = list(range(start, min(start + batch, len(prompts))))
        for i in ids:
            mgr.admit(i, prompts[i])
        commit(ids)  # the prefill step ran
        for step in range(decode):
            if per_call:
                for i, t in zip(ids, decode_lists[step]):  # noqa: B905 - last wave is shorter
                    append(i, t)
            else:
                append_batch(ids, decode_tokens[step, : len(ids)])
            commit(ids)  # the decode step ran
        for i in ids:
            mgr.free(i)
        calls += 2 * len(ids) + 1 + decode * (1 + (len(ids) if per_call else 1))
        ops += 2 * len(ids) + decode * len(ids)
    wall = time.perf_counter() - t0
    mgr.check_integrity()
    st = mgr.stats()
    return {
        "variant": f"{hash_algo}{'' if caching else '-nocache'}",
        "form": form,
        "wall_s": round(wall, 4),
        "ops_per_s": round(ops / wall),
        "ops": ops,
        "calls": calls,
        "token_appends_per_s": round(len(prompts) * decode / wall),
        "prefix_hit_rate": round(st.hit_rate, 4),
        "peak_usage": round(st.peak_usage, 4),
        "evictions": st.evictions,
    }


def add_workload_arguments(ap: argparse.ArgumentParser, num_blocks_help: str | None = None) -> None:
    """Workload W's shape and ``--repeat`` (shared with ``vllm_manager_w.py``)."""
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--prompt-len", type=int, default=512)
    ap.add_argument("--shared-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--decode", type=int, default=128)
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--num-blocks", type=int, default=3937, help=num_blocks_help)
    ap.add_argument("--repeat", type=int, default=3, help="report the best of N runs")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_workload_arguments(ap)
    ap.add_argument(
        "--form",
        choices=(*FORMS, "both"),
        default="both",
        help="batched (append_batch), per-call (append per sequence) or both",
    )
    ap.add_argument("--json", action="store_true", help="print JSON lines only")
    args = ap.parse_args()
    prompts = make_prompts(args.requests, args.prompt_len, args.shared_len, seed=0)
    forms = FORMS if args.form == "both" else (args.form,)
    for algo, caching in (("sha256", True), ("xxh128", True), ("sha256", False)):
        for form in forms:
            runs = [
                run(
                    prompts,
                    hash_algo=algo,
                    caching=caching,
                    batch=args.batch,
                    decode=args.decode,
                    block_size=args.block_size,
                    num_blocks=args.num_blocks,
                    form=form,
                )
                for _ in range(args.repeat)
            ]
            best = min(runs, key=lambda r: float(r["wall_s"]))
            print(
                json.dumps(best)
                if args.json
                else f"{best['variant']:>15} {form:>8}: {best['wall_s']:.3f} s  "
                f"{best['ops_per_s']:,} ops/s  hit rate {best['prefix_hit_rate']:.1%}  "
                f"peak usage {best['peak_usage']:.1%}"
            )


if __name__ == "__main__":
    main()
