"""``TieredKVCache``: moves KV blocks between a ``KVStorage`` and a list of tiers.

The engine asks three things: how many leading blocks of a prompt the tiers hold (``lookup``),
to put those blocks into storage blocks it allocated (``load``), and to keep blocks it computed
(``store``). Every value read is validated (``format.decode_block``) before a byte of it reaches
storage; a miss, a rejected value or a tier fault ends the loaded run there, and the caller
recomputes the rest. No method raises because of a tier.

Tiers are consulted in order (fastest first). ``lookup``/``load`` continue a chain across tiers:
tier 0 is asked for the whole chain, tier 1 for what follows tier 0's leading run, and so on, so
a prefix may come partly from host memory and partly from the remote store, and still never
with a hole. Blocks loaded from a slower tier are copied into the faster ones (``promote``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch

from pagedkv.errors import InvalidArgumentError
from pagedkv.storage.kv_storage import KVStorage
from pagedkv.tiers._writer import BackgroundWriter
from pagedkv.tiers.base import KVTier, Value
from pagedkv.tiers.format import (
    FINGERPRINT_BYTES,
    Rejection,
    block_key,
    decode_block,
    dtype_code,
    new_value,
    seal,
    value_size,
)

log = logging.getLogger("pagedkv.tiers")


class TieredKVCache:
    """Lookup, load and store of full KV blocks through ``tiers`` (fastest first).

    Args:
        tiers: e.g. ``[HostTier(), RemoteTier(url)]``.
        fingerprint: ``fingerprint_for(...)`` of the model and cache geometry (16 bytes).
        storage: the engine's ``KVStorage``; blocks are ``storage.kv_cache[:, block_id]``.
        block_size: must equal ``storage.block_size`` (checked).
        background: run encoding and tier writes on a writer thread (bounded queue of
            ``max_queue`` store calls; when full a store is dropped, not waited for).
        promote: copy blocks loaded from a slower tier into the faster ones.
    """

    def __init__(
        self,
        tiers: Sequence[KVTier],
        fingerprint: bytes,
        storage: KVStorage,
        block_size: int | None = None,
        *,
        background: bool = False,
        max_queue: int = 64,
        promote: bool = True,
    ) -> None:
        if len(fingerprint) != FINGERPRINT_BYTES:
            raise InvalidArgumentError(
                f"fingerprint: expected {FINGERPRINT_BYTES} bytes, got {len(fingerprint)}"
            )
        if block_size is not None and block_size != storage.block_size:
            raise InvalidArgumentError(
                f"block_size: expected storage.block_size={storage.block_size}, got {block_size}"
            )
        self.tiers = list(tiers)
        self.fingerprint = bytes(fingerprint)
        self.storage = storage
        self.block_size = storage.block_size
        self.promote = promote
        self._dtype = dtype_code(storage.dtype)
        self._payload_len = storage.bytes_per_block
        kv = storage.kv_cache
        # [num_layers, num_blocks, 2, block_size, num_kv_heads, head_dim * element_size] uint8
        self._kv_np = kv.view(torch.uint8).numpy() if kv.device.type == "cpu" else None
        self._writer = BackgroundWriter(max_queue) if background else None
        self._logged: set[str] = set()
        self.counters = {
            "lookups": 0,
            "lookup_blocks": 0,
            "loads": 0,
            "loaded_blocks": 0,
            "stores": 0,
            "stored_blocks": 0,
            "dropped_stores": 0,
        }

    # ------------------------------------------------------------------ API
    def keys(self, chain_hashes: Sequence[bytes]) -> list[bytes]:
        """Tier keys of the blocks named by ``chain_hashes``."""
        return [block_key(self.fingerprint, h) for h in chain_hashes]

    def lookup(self, chain_hashes: Sequence[bytes]) -> int:
        """How many leading blocks of the chain the tiers hold together (a hint: ``load`` may
        still return fewer if a value is evicted or rejected meanwhile)."""
        keys, held = self.keys(chain_hashes), 0
        for tier in self.tiers:
            if held == len(keys):
                break
            held += tier.contains_prefix(keys[held:])
        self.counters["lookups"] += 1
        self.counters["lookup_blocks"] += held
        return held

    def load(self, chain_hashes: Sequence[bytes], block_ids: Sequence[int]) -> int:
        """Fill ``block_ids[i]`` with block ``chain_hashes[i]`` for the longest valid leading run.

        Returns how many leading blocks were loaded; storage blocks past that are untouched
        and must be computed by the caller.
        """
        self._check_ids("load", chain_hashes, block_ids)
        keys, done = self.keys(chain_hashes), 0
        # every value this cache can use has this size or less: tiers never read longer ones
        longest = value_size(max((len(h) for h in chain_hashes), default=0), self._payload_len)
        for ti, tier in enumerate(self.tiers):
            if done == len(keys):
                break
            run = tier.contains_prefix(keys[done:])
            if not run:
                continue
            values = tier.get_many(keys[done : done + run], max_bytes=longest)
            payloads, tokens, end = self._validate(tier, chain_hashes[done:], values)
            if payloads:
                self._write_blocks(block_ids[done : done + len(payloads)], payloads)
                tier.record_hits(len(payloads), tokens)
                if self.promote and ti:
                    self._promote(ti, keys[done : done + len(payloads)], values[: len(payloads)])
                done += len(payloads)
            if end:
                break
        self.counters["loads"] += 1
        self.counters["loaded_blocks"] += done
        return done

    def store(
        self, chain_hashes: Sequence[bytes], block_ids: Sequence[int], num_tokens: int | None = None
    ) -> int:
        """Write blocks to every tier (write-through). ``num_tokens``: valid tokens of the last
        block (default: full). The bytes are copied out of storage before this returns, so the
        caller may overwrite the blocks at once; encoding and writing may run in the background.
        Returns the number of blocks accepted (0 if dropped because the queue is full).
        """
        self._check_ids("store", chain_hashes, block_ids)
        last = self.block_size if num_tokens is None else int(num_tokens)
        if not 0 < last <= self.block_size:
            raise InvalidArgumentError(f"num_tokens: expected 1..{self.block_size}, got {last}")
        if not chain_hashes:
            return 0
        tokens = [self.block_size] * (len(block_ids) - 1) + [last]
        values = self._copy_out(chain_hashes, block_ids, tokens)
        job = partial(self._write_tiers, self.keys(chain_hashes), values)
        if self._writer is None:
            job()
        elif not self._writer.submit(job):
            self.counters["dropped_stores"] += 1
            return 0
        self.counters["stores"] += 1
        self.counters["stored_blocks"] += len(block_ids)
        return len(block_ids)

    def flush(self) -> None:
        """Wait until queued stores reached the tiers."""
        if self._writer is not None:
            self._writer.flush()

    def stats(self) -> dict[str, dict[str, float]]:
        """``{"connector": counters, "<tier name>": TierStats.as_dict(), ...}``."""
        out: dict[str, dict[str, float]] = {"connector": dict(self.counters)}
        if self._writer is not None:
            out["connector"]["writer_failed"] = self._writer.failed
        for i, tier in enumerate(self.tiers):
            name = tier.name if tier.name not in out else f"{tier.name}{i}"
            out[name] = tier.stats.as_dict()
        return out

    def close(self) -> None:
        """Finish queued stores, stop the writer, close the tiers."""
        if self._writer is not None:
            self._writer.close()
        for tier in self.tiers:
            tier.close()

    # ---------------------------------------------------------------- helpers
    def _check_ids(self, op: str, hashes: Sequence[bytes], block_ids: Sequence[int]) -> None:
        if len(hashes) != len(block_ids):
            raise InvalidArgumentError(f"{op}: {len(hashes)} hashes but {len(block_ids)} ids")
        n = self.storage.num_blocks
        if any(not 0 <= int(b) < n for b in block_ids):
            raise InvalidArgumentError(f"{op}: block ids must be in [0, {n}), got {block_ids}")

    def _validate(
        self, tier: KVTier, hashes: Sequence[bytes], values: Sequence[Value | None]
    ) -> tuple[list[memoryview], int, bool]:
        """Leading valid payloads, their token count, and whether the chain ends here (a
        partial block can only be the last one)."""
        payloads: list[memoryview] = []
        tokens = 0
        for chain_hash, value in zip(hashes, values, strict=False):  # hashes may be longer
            if value is None:
                return payloads, tokens, False
            got = decode_block(
                value,
                fingerprint=self.fingerprint,
                chain_hash=chain_hash,
                dtype=self._dtype,
                payload_len=self._payload_len,
                max_tokens=self.block_size,
            )
            if isinstance(got, Rejection):
                tier.record_rejected()
                self._log_once(
                    f"{tier.name}:{got.reason.name}",
                    f"kv tier {tier.name}: rejected a value ({got.reason.value})",
                )
                return payloads, tokens, False
            payloads.append(got.payload)
            tokens += got.num_tokens
            if got.num_tokens < self.block_size:
                return payloads, tokens, True
        return payloads, tokens, False

    def _write_blocks(self, block_ids: Sequence[int], payloads: Sequence[memoryview]) -> None:
        """Copy validated payloads into storage blocks.

        CPU storage: one copy per block, straight from the received value into the block's
        strided slot ``kv_cache[:, b]`` (a staging batch would copy every byte twice). Other
        devices: payloads are packed into one (pinned) host tensor ``[n, L, 2, T, H, D]``, moved
        with one transfer and scattered with one ``index_copy_`` over dim 1.
        """
        s = self.storage
        if self._kv_np is not None:
            for b, payload in zip(block_ids, payloads, strict=True):
                dst = self._kv_np[:, b]
                np.copyto(dst, np.frombuffer(payload, dtype=np.uint8).reshape(dst.shape))
            return
        n = len(payloads)
        stage = torch.empty(
            (n, self._payload_len), dtype=torch.uint8, pin_memory=s.device.type == "cuda"
        )
        stage_np = stage.numpy()
        for i, payload in enumerate(payloads):
            stage_np[i] = np.frombuffer(payload, dtype=np.uint8)
        shape = (n, s.num_layers, 2, s.block_size, s.num_kv_heads, s.head_dim)
        blocks = stage.to(s.device, non_blocking=True).view(s.dtype).view(shape)
        ids = torch.as_tensor(list(block_ids), dtype=torch.int64, device=s.device)
        s.kv_cache.index_copy_(1, ids, blocks.transpose(0, 1))

    def _copy_out(
        self, hashes: Sequence[bytes], block_ids: Sequence[int], tokens: Sequence[int]
    ) -> list[bytearray]:
        """Synchronously copy each block out of storage into a new, unsealed value (header +
        payload; ``seal`` adds the checksum later). The payload is the block's C-order
        ``[L, 2, T, H, D]`` bytes. CPU: one copy per block, storage -> value; other devices:
        one gather + one device->host transfer, then one host copy per block."""
        values, regions = [], []
        for h, t in zip(hashes, tokens, strict=True):
            value, region = new_value(self.fingerprint, h, t, self._payload_len, self._dtype)
            values.append(value)
            regions.append(np.frombuffer(region, dtype=np.uint8))
        if self._kv_np is not None:
            for b, dst in zip(block_ids, regions, strict=True):
                src = self._kv_np[:, b]
                np.copyto(dst.reshape(src.shape), src)
            return values
        ids = torch.as_tensor(list(block_ids), dtype=torch.int64, device=self.storage.device)
        blocks = self.storage.kv_cache.index_select(1, ids).transpose(0, 1).contiguous()
        host = blocks.view(torch.uint8).reshape(len(values), -1).cpu().numpy()
        for i, dst in enumerate(regions):
            dst[:] = host[i]
        return values

    def _write_tiers(self, keys: list[bytes], values: list[bytearray]) -> None:
        items: list[tuple[bytes, Value]] = [(k, seal(v)) for k, v in zip(keys, values, strict=True)]
        for tier in self.tiers:
            tier.put_many(items)

    def _promote(self, ti: int, keys: Sequence[bytes], values: Sequence[Value | None]) -> None:
        items = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]

        def job() -> None:
            for tier in self.tiers[:ti]:
                tier.put_many(items)

        if self._writer is None:
            job()
        else:
            self._writer.submit(job)

    def _log_once(self, tag: str, message: str) -> None:
        if tag not in self._logged:
            self._logged.add(tag)
            log.warning(message)
