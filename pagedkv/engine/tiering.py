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
same model share blocks and nothing else does. The model part is a digest of its config and of
every byte of every weight (``weights_revision``), taken from the weights in memory when the
engine starts: two checkpoints under one name (a merged LoRA, a fine-tune) never share keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Hashable, Sequence
from typing import Any

import torch
import xxhash

from pagedkv.integrations.hf_runner import PagedModelRunner

log = logging.getLogger("pagedkv.engine")


def weights_revision(model: Any) -> str:
    """A process-independent digest of the model's config and of every byte of every tensor
    in its state dict (name, dtype, shape, bytes): two models that differ in any weight never
    share tier keys. ``model``: a transformers model (any dtype, any device).

    Why every byte, and why each time the engine starts rather than once per file: a sample
    missed weights (two Llamas differing only in ``q_proj`` shared keys), and a digest stored
    beside a checkpoint describes the file, not what is served (a LoRA merged after loading).
    xxh3-128 runs at memory speed: 0.05 s for the default model's 651 MB (sha256: 0.8 s)."""
    config = json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode()
    h = xxhash.xxh3_128(hashlib.sha256(config).digest())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach()
        h.update(f"|{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.to("cpu").contiguous().reshape(-1)  # no copy for a contiguous CPU tensor
        h.update(flat.view(torch.uint8).numpy())
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
        from pagedkv.tiers.embedded import embedded_port, is_embedded

        self.runner = runner
        self.manager = runner.manager
        layers, kv_heads, head_dim = runner.attention_spec.kv_dims  # the support check's
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
        port = embedded_port(remote) if remote and is_embedded(remote) else None
        tiers: list[Any] = []
        if host_bytes:
            tiers.append(HostTier(host_bytes))
        if disk_path:
            tiers.append(DiskTier(disk_path, disk_bytes))
        # "embedded" or "embedded:PORT": a Valkey of our own, started last (nothing after it
        # can fail but the cache's own checks, which stop it again)
        self.embedded: Any = None
        if remote and is_embedded(remote):
            self.embedded = embedded_valkey(port=port)
            remote = self.embedded.url
        try:
            if remote:
                tiers.append(RemoteTier(remote))
            self.cache = TieredKVCache(tiers, fp, storage, background=True)
        except BaseException:
            if self.embedded is not None:
                self.embedded.stop()
            raise
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
        ids; registers the loaded leading run as computed (findable by other prompts). Returns
        the blocks loaded."""
        table = self.manager.block_table(seq_id)
        got = self.cache.load(hashes[first : first + count], table[first : first + count])
        if got:
            self.manager.register_prefix(seq_id, (first + got) * self.block_size)
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
