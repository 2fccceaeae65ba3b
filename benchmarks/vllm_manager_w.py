"""Workload W (``manager_ops.py``) run through vLLM v1's own block manager, for a side-by-side.

What is timed: vLLM's real ``KVCacheManager`` (its coordinator, ``FullAttentionManager``,
``BlockPool`` with prefix caching, ``kv_cache_utils`` block hashing), driven the way vLLM's
``Scheduler`` drives it. Same workload as ``benchmarks/manager_ops.py``: 2,000 requests with
512-token prompts, half sharing one 256-token prefix (same seeded prompts, same decode tokens),
64 at a time, block_size 16, 3,937 blocks, prefix caching on:

* admit: build the ``Request`` (its ``block_hasher`` hashes the prompt's full blocks, as
  ``EngineCore.add_request`` does), ``get_computed_blocks``, ``allocate_slots`` for the rest of
  the prompt, ``record_prefix_cache_stats``, status RUNNING, ``num_computed_tokens`` set as the
  scheduler sets it; then the wave's prefill "runs": ``num_computed_tokens`` += scheduled tokens
  and the sampled token is appended (``append_output_token_ids``, which hashes newly full blocks);
* 128 decode steps: per running request ``allocate_slots(request, 1)`` (which caches any newly
  full block), ``num_computed_tokens += 1`` (``_update_after_schedule``), then the step's sampled
  token is appended (``update_from_output``); the tokens are ``manager_ops.py``'s decode tokens,
  so each request ends with the same 640 KV tokens (40 blocks) as in pagedkv;
* free: ``KVCacheManager.free`` per request.

``ops`` are counted exactly as ``manager_ops.py`` counts them (one per admission, one per
sequence per decode step, one per free). ``prefix_hit_rate`` is vLLM's own ``PrefixCacheStats``
(hit tokens / queried prompt tokens), ``peak_usage`` is ``BlockPool.get_usage()`` at its maximum
(used blocks / (num_gpu_blocks - 1), like pagedkv's). ``wall_s`` includes building each
``Request`` (that is where vLLM hashes the prompt); ``request_init_s``, timed separately after
the run, is what building the 2,000 ``Request`` objects costs without a block hasher: the part
of ``wall_s`` that is vLLM request bookkeeping rather than block management or hashing.

Block counts: pagedkv's ``CacheConfig.num_blocks`` counts its null block 0, so manager_ops's
3,937 blocks are 3,936 usable; vLLM's ``num_gpu_blocks`` also counts its null block, so vLLM
gets ``num_blocks=3937`` too (3,936 usable).

Semantic difference from pagedkv: vLLM caches (makes findable) a request's full prompt blocks in
``allocate_slots``, before their KV is computed, so a later request of the *same* wave already
hits the shared prefix of an earlier one; in pagedkv blocks become findable only at ``commit``,
so the first wave cannot hit itself. Expected hit rates: vLLM 999*256/(2000*512) = 24.97%,
pagedkv 968*256/(2000*512) = 24.2%. It also moves the peak: pagedkv's first wave holds
64 * 40 = 2,560 blocks (65.0%), every vLLM wave 2,560 - 31 * 16 = 2,064 (52.4%).

Setup (vLLM has no CPU-only wheel for this torch; only its pure-Python files are used):

    pip download --no-deps -d /tmp/vllm_dl vllm==0.33.0
    mkdir -p /tmp/vllm_pkg && unzip -q -o /tmp/vllm_dl/vllm-0.33.0-*.whl 'vllm/*' -x '*.so' \\
        -d /tmp/vllm_pkg
    .venv/bin/pip install --no-deps --target /tmp/vllm_deps pyzmq msgspec cbor2 aiohttp \\
        multidict attrs yarl propcache aiohappyeyeballs aiosignal frozenlist openai_harmony \\
        pybase64 cachetools cloudpickle uvloop py-cpuinfo xgrammar apache-tvm-ffi==0.1.11 \\
        partial_json_parser llguidance

(``--target`` keeps them out of the project's venv; the venv's own torch is used.) Run:

    PYTHONPATH=/tmp/vllm_pkg:/tmp/vllm_deps .venv/bin/python benchmarks/vllm_manager_w.py

prints one JSON line (``--requests`` etc. as in ``manager_ops.py``; ``--repeat`` = best of N).
Exits 2 with a one-line message if vLLM cannot be imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import numpy as np
from manager_ops import (  # the same seeded workload as pagedkv's run
    add_workload_arguments,
    make_prompts,
)


def _import_vllm() -> dict[str, Any]:
    # vLLM logs to stdout by default; keep stdout for the JSON line.
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import torch
        import vllm
        from vllm.sampling_params import SamplingParams
        from vllm.utils.hashing import get_hash_fn_by_name
        from vllm.v1.core.kv_cache_manager import KVCacheManager
        from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash
        from vllm.v1.kv_cache_interface import FullAttentionSpec, KVCacheConfig, KVCacheGroupSpec
        from vllm.v1.request import Request, RequestStatus
    except Exception as exc:  # any failure means "no usable vLLM"
        print(
            f"vllm_manager_w: vLLM is not importable ({type(exc).__name__}: {exc}); "
            "set PYTHONPATH=/tmp/vllm_pkg:/tmp/vllm_deps as the docstring describes",
            file=sys.stderr,
        )
        sys.exit(2)
    return {
        "torch": torch,
        "version": getattr(vllm, "__version__", "unknown"),
        "SamplingParams": SamplingParams,
        "get_hash_fn_by_name": get_hash_fn_by_name,
        "KVCacheManager": KVCacheManager,
        "get_request_block_hasher": get_request_block_hasher,
        "init_none_hash": init_none_hash,
        "FullAttentionSpec": FullAttentionSpec,
        "KVCacheConfig": KVCacheConfig,
        "KVCacheGroupSpec": KVCacheGroupSpec,
        "Request": Request,
        "RequestStatus": RequestStatus,
    }


def _default_hash_algo() -> str:
    """vLLM's default ``CacheConfig.prefix_caching_hash_algo`` (read from its dataclass)."""
    from vllm.config.cache import CacheConfig

    return str(CacheConfig.__dataclass_fields__["prefix_caching_hash_algo"].default)


def run(
    v: dict[str, Any],
    prompts: list[list[int]],
    *,
    hash_algo: str,
    batch: int,
    decode: int,
    block_size: int,
    num_blocks: int,
) -> dict[str, Any]:
    hash_fn = v["get_hash_fn_by_name"](hash_algo)
    v["init_none_hash"](hash_fn)  # as EngineCore.__init__ does
    block_hasher = v["get_request_block_hasher"](block_size, hash_fn)
    kv_cache_config = v["KVCacheConfig"](
        num_blocks=num_blocks,  # vLLM's num_gpu_blocks: the null block included
        kv_cache_tensors=[],
        kv_cache_groups=[
            v["KVCacheGroupSpec"](
                ["layer"],
                v["FullAttentionSpec"](
                    block_size=block_size, num_kv_heads=1, head_size=1, dtype=v["torch"].float32
                ),
            )
        ],
    )
    max_model_len = len(prompts[0]) + decode + block_size
    mgr = v["KVCacheManager"](
        kv_cache_config,
        max_model_len=max_model_len,
        scheduler_block_size=block_size,
        hash_block_size=block_size,
        enable_caching=True,
        log_stats=True,  # PrefixCacheStats, as with vLLM's default (stats logging on)
    )
    usable = mgr.block_pool.num_gpu_blocks - 1
    rng = np.random.default_rng(1)
    decode_tokens = rng.integers(0, 32000, (decode, batch), dtype=np.int64)  # manager_ops's
    decode_lists: list[list[int]] = decode_tokens.tolist()
    last_token = 0  # sampled at the last step of a wave: appended, never given a slot
    sp = v["SamplingParams"](max_tokens=decode + 1)
    make_request, running = v["Request"], v["RequestStatus"].RUNNING
    get_computed_blocks, allocate_slots = mgr.get_computed_blocks, mgr.allocate_slots
    record, free = mgr.record_prefix_cache_stats, mgr.free
    ops = 0
    peak_used = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), batch):
        ids = range(start, min(start + batch, len(prompts)))
        reqs = []
        for i in ids:  # schedule(): admit the waiting requests
            req = make_request(str(i), prompts[i], sp, None, block_hasher=block_hasher)
            blocks, num_hit, _ = get_computed_blocks(req)
            num_new = req.num_tokens - num_hit
            if allocate_slots(req, num_new, num_hit, blocks) is None:
                raise RuntimeError(f"out of blocks admitting request {i}")
            record(req, num_hit)
            req.status = running
            req.num_computed_tokens = num_hit + num_new  # + _update_after_schedule
            reqs.append(req)
        first = decode_lists[0]  # update_from_output: the prefill's sampled tokens
        for req, t in zip(reqs, first):  # noqa: B905 - last wave is shorter
            req.append_output_token_ids(t)
        for step in range(decode):
            for req in reqs:  # schedule(): the running requests, one new token each
                if allocate_slots(req, 1) is None:
                    raise RuntimeError(f"out of blocks in decode for request {req.request_id}")
                req.num_computed_tokens += 1
            nxt = decode_lists[step + 1] if step + 1 < decode else [last_token] * len(reqs)
            for req, t in zip(reqs, nxt):  # noqa: B905 - last wave is shorter
                req.append_output_token_ids(t)  # hashes a block when it fills
        used = usable - mgr.block_pool.get_num_free_blocks()  # monotonic within a wave
        peak_used = max(peak_used, used)
        for req in reqs:
            free(req)
        ops += 2 * len(reqs) + decode * len(reqs)
    wall = time.perf_counter() - t0
    stats = mgr.prefix_cache_stats
    assert stats is not None
    assert mgr.block_pool.get_num_free_blocks() == usable, "blocks leaked"

    # Untimed: what building the Request objects alone costs (no block hashing).
    t1 = time.perf_counter()
    for i, p in enumerate(prompts):
        make_request(str(i), p, sp, None)
    request_init = time.perf_counter() - t1
    return {
        "wall_s": round(wall, 4),
        "ops_per_s": round(ops / wall),
        "ops": ops,
        "token_appends_per_s": round(len(prompts) * decode / wall),
        "prefix_hit_rate": round(stats.hits / stats.queries, 4) if stats.queries else 0.0,
        "prefix_hits": stats.hits,
        "prefix_queries": stats.queries,
        "peak_usage": round(peak_used / usable, 4),
        "request_init_s": round(request_init, 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_workload_arguments(ap, "vLLM num_gpu_blocks (null block included)")
    ap.add_argument(
        "--hash-algo",
        default=None,
        help="vLLM prefix_caching_hash_algo (default: vLLM's own default, sha256)",
    )
    args = ap.parse_args()
    v = _import_vllm()
    algo = args.hash_algo or _default_hash_algo()
    # Prompts arrive at vLLM's engine core as lists of Python ints.
    prompts = [p.tolist() for p in make_prompts(args.requests, args.prompt_len, args.shared_len, 0)]
    runs = [
        run(
            v,
            prompts,
            hash_algo=algo,
            batch=args.batch,
            decode=args.decode,
            block_size=args.block_size,
            num_blocks=args.num_blocks,
        )
        for _ in range(args.repeat)
    ]
    best = min(runs, key=lambda r: float(r["wall_s"]))
    out = {
        "variant": f"vllm-{algo}",
        "form": "per-call",
        **best,
        "vllm_version": v["version"],
        "hash_algo": algo,
        "requests": args.requests,
        "repeat": args.repeat,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
