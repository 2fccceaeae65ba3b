"""The engine's side of the KV tiers (host, disk, Valkey/Redis): what to load at admission and
what to store after each step.

At admission, after the device prefix hit, the tiers are asked for the longest continuation of
the prompt's block-hash chain; those blocks are allocated with the prompt's first chunk, loaded
(every value validated) and committed, so the step computes only what follows. A load that
comes back short (a block evicted or rejected meanwhile) just leaves more to compute. After
each step, every block that became full and computed is written through to the tiers (copied
out of storage at once; the encoding and the writes run on a background thread). With
``write="evict"`` a block is written only when the device evicts it from its prefix cache (the
pool's eviction listener hands it over before the block is reused): fewer writes, and the tiers
act as a victim cache, but other processes see a block only once this one let it go.

The keys are the manager's chained sha256 block hashes (process-independent, the cache salt in
the root) under a fingerprint of the model and the cache geometry, so two processes serving the
same model share blocks and nothing else does.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch

from pagedkv.integrations.hf_config import model_kv_dims
from pagedkv.integrations.hf_runner import PagedModelRunner

log = logging.getLogger("pagedkv.engine")


def weights_revision(model: Any) -> str:
    """A cheap, process-independent digest of the model's config and a sample of its weights:
    two models that differ in either never share tier keys. ``model``: a transformers model."""
    config = model.config.to_dict()
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for _name, p in sorted(model.state_dict().items())[:8]:
        flat = p.detach().reshape(-1)
        h.update(flat[:4096].to(torch.float32).cpu().numpy().tobytes())
        h.update(flat[-4096:].to(torch.float32).cpu().numpy().tobytes())
    return h.hexdigest()


class EngineTiers:
    """Owns a ``TieredKVCache`` built from the engine's tier options."""

    def __init__(
        self,
        runner: PagedModelRunner,
        model_name: str,
        *,
        host_bytes: int = 0,
        disk_path: str | None = None,
        disk_bytes: int = 64 << 30,
        remote: str | None = None,
        write: str = "through",
    ) -> None:
        from pagedkv.tiers import (
            DiskTier,
            HostTier,
            RemoteTier,
            TieredKVCache,
            embedded_valkey,
            fingerprint_for,
        )

        self.runner = runner
        self.manager = runner.manager
        self.embedded: Any = None
        tiers: list[Any] = []
        if host_bytes:
            tiers.append(HostTier(host_bytes))
        if disk_path:
            tiers.append(DiskTier(disk_path, disk_bytes))
        if remote:
            if remote == "embedded":
                self.embedded = embedded_valkey()
                remote = self.embedded.url
            tiers.append(RemoteTier(remote))
        layers, kv_heads, head_dim = model_kv_dims(runner.model.config)
        storage = runner.storage
        fp = fingerprint_for(
            model_name,
            weights_revision(runner.model),
            storage.dtype,
            storage.block_size,
            layers,
            kv_heads,
            head_dim,
        )
        self.cache = TieredKVCache(tiers, fp, storage, background=True)
        self.block_size = self.manager.config.block_size
        self.write = write
        if write == "evict":
            self.manager.prefix_cache.set_evict_listener(self._on_evict)

    def _on_evict(self, pairs: list[tuple[int, Any]]) -> None:
        """Blocks leaving the device prefix cache, KV still intact: write them down."""
        kept = [(b, h) for b, h in pairs if isinstance(h, bytes)]
        if kept:
            self.cache.store([h for _, h in kept], [b for b, _ in kept])

    def lookup(self, hashes: Sequence[bytes], first: int, last: int) -> int:
        """Blocks ``first, first+1, ...`` (before ``last``) the tiers hold, leading run only."""
        if first >= last:
            return 0
        return self.cache.lookup(hashes[first:last])

    def load(self, seq_id: Hashable, hashes: Sequence[bytes], first: int, count: int) -> int:
        """Load blocks ``[first, first + count)`` of an admitted sequence into its own block
        ids; marks the loaded leading run computed. Returns the blocks loaded."""
        table = self.manager.block_table(seq_id)
        got = self.cache.load(hashes[first : first + count], table[first : first + count])
        if got:
            self.runner.mark_loaded(seq_id, (first + got) * self.block_size)
        return got

    def store_new(self, seq_id: Hashable, old_computed: int, new_computed: int) -> None:
        """Write through the blocks that became full and computed in this step."""
        if self.write != "through":
            return
        bs = self.block_size
        lo, hi = old_computed // bs, new_computed // bs
        if hi <= lo:
            return
        seq = self.manager.seq(seq_id)
        keys = [h for h in seq.block_hashes[lo:hi] if isinstance(h, bytes)]
        if keys and len(keys) == len(seq.block_hashes[lo:hi]):
            self.cache.store(keys, seq.block_table[lo : lo + len(keys)])

    def stats(self) -> dict[str, dict[str, float]]:
        return self.cache.stats()

    def close(self) -> None:
        self.manager.prefix_cache.set_evict_listener(None)
        self.cache.close()
        if self.embedded is not None:
            self.embedded.stop()
