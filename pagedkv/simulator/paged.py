"""The paged memory backend of the serving replay: a thin adapter over the real BlockManager.

Nothing here decides placement or eviction; it only translates the scheduler's requests into
manager calls (``admit`` with the trace's chained block keys, ``append_batch`` for decode,
``select_victims``/``preempt`` when decode runs out of blocks, ``commit`` after each step), so
serving numbers reflect the code that serves. Like an engine, the replay reports KV written only
after the step that computes it, so a request cannot hit blocks another request is still
computing (two identical prompts admitted in the same step do not share). Only full prompt
blocks carry keys (a real engine hashes only full blocks); blocks holding generated tokens get
keys unique to their request, so a recomputed request can reuse its own still-cached blocks but
nobody else's.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from pagedkv.errors import InvalidArgumentError, OutOfBlocksError
from pagedkv.simulator.blocks import BlockStream


class PagedBackend:
    """Paged KV memory of ``capacity_blocks`` usable blocks managed by ``BlockManager``."""

    def __init__(
        self,
        stream: BlockStream,
        capacity_blocks: int,
        *,
        policy: str = "lru",
        prefix_caching: bool = True,
        watermark: float = 0.0,
        preemption_policy: str = "newest",
    ) -> None:
        from pagedkv.core import BlockManager, CacheConfig

        if capacity_blocks <= 0:
            raise InvalidArgumentError(f"capacity must be positive, got {capacity_blocks} blocks")
        bs = stream.block_size
        self.block_size = bs
        self.mgr = BlockManager(
            CacheConfig(
                block_size=bs,
                num_blocks=capacity_blocks + 1,
                enable_prefix_caching=prefix_caching,
                eviction_policy=policy,
                watermark=watermark,
            )
        )
        self.name = f"paged-bs{bs}" + ("+prefix" if prefix_caching else "")
        self.capacity_tokens = capacity_blocks * bs
        self._usable = capacity_blocks - int(watermark * capacity_blocks)
        self._stream = stream
        self._preemption = preemption_policy

    def _hashes(self, rid: int, num_tokens: int) -> list[Hashable]:
        bs = self.block_size
        lo = int(self._stream.starts[rid])
        prompt_full = int(self._stream.input_lens[rid]) // bs
        full = num_tokens // bs
        keys: list[Hashable] = self._stream.keys[lo : lo + min(full, prompt_full)].tolist()
        keys += [("gen", rid, i) for i in range(len(keys), full)]
        return keys

    def fits_ever(self, rid: int, num_tokens: int) -> bool:
        return -(-num_tokens // self.block_size) <= self._usable

    def admit(self, rid: int, num_tokens: int) -> int | None:
        try:
            return self.mgr.admit(
                rid,
                num_tokens=num_tokens,
                block_hashes=self._hashes(rid, num_tokens),
                compute_last_token=True,
            )
        except OutOfBlocksError:
            return None

    def grow(self, running: list[int], idle: Sequence[int] = ()) -> list[int]:
        victims: list[int] = []  # ids are the trace's request indices
        live = list(running)
        candidates = {*live, *idle}
        while live:
            try:
                self.mgr.append_batch(live, np.zeros(len(live), dtype=np.int64))
                return victims
            except OutOfBlocksError as exc:
                pick = self.mgr.select_victims(
                    max(1, exc.requested - exc.available), self._preemption
                )
                victim = pick[0] if pick and pick[0] in candidates else live[-1]
                self.mgr.preempt(victim)
                victims.append(victim)
                candidates.discard(victim)
                if victim in live:
                    live.remove(victim)
        return victims

    def commit(self, computed: Sequence[tuple[int, int]]) -> None:
        """Report the step's KV written, as an engine does after its forward: whole sequences
        in one ``commit``, partly prefilled prompts (chunked prefill) by ``register_prefix``."""
        mgr = self.mgr
        whole = []
        for rid, n in computed:
            if n == mgr.num_tokens(rid):
                whole.append(rid)
            else:
                mgr.register_prefix(rid, n)
        mgr.commit(whole)

    def free(self, rid: int) -> None:
        self.mgr.free(rid)

    def allocated_tokens(self) -> int:
        return self.mgr.num_used_blocks * self.block_size

    def shared_tokens(self) -> int:
        # tokens the sequences see minus slots holding KV (shared prefix blocks count once)
        mgr = self.mgr
        return sum(mgr.num_tokens(s) for s in mgr.seq_ids) - mgr.stats().tokens_stored
