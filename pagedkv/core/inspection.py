"""Statistics snapshots and the whole-manager integrity check."""

from __future__ import annotations

from collections import Counter

from pagedkv.core.block_pool import NULL_BLOCK_ID
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.sequence import SeqStatus
from pagedkv.core.stats import ManagerStats
from pagedkv.errors import PagedKVError


class InspectionAPI(ManagerState):
    """Mixin of ``BlockManager``."""

    def stats(self) -> ManagerStats:
        """Counters plus current usage and internal fragmentation (O(number of sequences))."""
        pool, bs = self.pool, self.block_size
        partial_fill: dict[int, int] = {}
        for seq in self._seqs.values():
            off = seq.num_tokens % bs
            if off and seq.status is SeqStatus.RUNNING:
                last = seq.block_table[-1]
                partial_fill[last] = max(partial_fill.get(last, 0), off)
        used = pool.num_used
        stored = (used - len(partial_fill)) * bs + sum(partial_fill.values())
        return ManagerStats(
            **vars(self.counters), evictions=pool.num_evictions, num_sequences=len(self._seqs),
            num_blocks=self.config.num_usable_blocks, blocks_used=used,
            blocks_cached=len(pool.evictor), blocks_free=len(pool.free), tokens_stored=stored,
            block_size=bs, bytes_per_block=self.config.bytes_per_block)

    def reset_stats(self) -> None:
        """Zero the counters (peak usage restarts from the current usage)."""
        for name, value in vars(type(self.counters)()).items():
            setattr(self.counters, name, value)
        self.counters.peak_blocks_used = self.pool.num_used

    def check_integrity(self) -> None:
        """Raise ``PagedKVError`` naming the first broken invariant: ref counts equal the
        references from block tables and pins, pool invariants (free + cached + used = total, no
        free block referenced, hash map consistent, no orphaned cached suffix), per-sequence
        geometry, host pool accounting and the pressure level."""

        def fail(msg: str) -> None:
            raise PagedKVError(f"manager integrity: {msg}")

        self.pool.check_integrity()
        bs, pool = self.block_size, self.pool
        refs: Counter[int] = Counter()
        host_used: list[int] = []
        for seq in self._seqs.values():
            n, table = seq.num_tokens, seq.block_table
            if seq.status is SeqStatus.SWAPPED:
                if table or len(seq.host_table) != -(-n // bs):
                    fail(f"swapped sequence {seq.seq_id!r} tables inconsistent")
                host_used += [h for h in seq.host_table if h >= 0]
                continue
            if len(table) != -(-n // bs):
                fail(f"sequence {seq.seq_id!r}: {len(table)} blocks for {n} tokens")
            if seq.tokens is not None and len(seq.tokens) != n:
                fail(f"sequence {seq.seq_id!r}: {len(seq.tokens)} token ids for {n} tokens")
            if not seq.num_hashed <= len(seq.block_hashes) <= n // bs:
                fail(f"sequence {seq.seq_id!r}: hashed {seq.num_hashed}, "
                     f"{len(seq.block_hashes)} hashes, {n // bs} full blocks")
            first_droppable = 0 if seq.window is None else seq.window.first_droppable_block(bs)
            for i, b in enumerate(table):
                released = seq.window is not None and first_droppable <= i < seq.window_next
                if (b == NULL_BLOCK_ID) != released:
                    fail(f"sequence {seq.seq_id!r}: block {i} is {b}, released={released}")
                if b != NULL_BLOCK_ID:
                    refs[b] += 1
                h = pool.block_hash[b]
                if i < seq.num_hashed and h is not None and h != seq.block_hashes[i]:
                    fail(f"sequence {seq.seq_id!r}: block {i} cached under a different hash")
        for blocks in self._pins.values():
            refs.update(blocks)
        for b in range(1, pool.num_blocks):
            if pool.ref_cnt[b] != refs[b]:
                fail(f"block {b}: ref_cnt {pool.ref_cnt[b]} but {refs[b]} references")
        host = host_used + self._host_free
        if len(host) != len(set(host)) or len(host) != self.config.num_host_blocks:
            fail(f"host pool: {len(host_used)} used + {len(self._host_free)} free != "
                 f"{self.config.num_host_blocks}")
        for src, dst in self._copies:
            if pool.ref_cnt[dst] == 0:
                fail(f"pending copy {src}->{dst} targets an unreferenced block")
        if self.pressure.level != self.pressure.level_for(pool.num_used):
            fail(f"pressure level {self.pressure.level} stale")
