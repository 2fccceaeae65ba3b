"""Statistics snapshots and the whole-manager integrity check."""

from __future__ import annotations

from collections import Counter

from pagedkv.core.block_pool import NULL_BLOCK_ID
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.sequence import SeqStatus, Sequence
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
        references from block tables, pins and pending-copy holds; pool invariants (free +
        cached + used = total, no free block referenced, hash map consistent, no orphaned cached
        suffix); per-sequence geometry; nothing offered to the cache beyond what was committed;
        every pending copy reads a held block and writes a referenced one; host
        pool accounting, the pressure level and the peak usage.

        "No cached block is uncommitted" is checked where it is decidable: a sequence never
        has offered more blocks than it committed (``num_hashed * block_size <=
        num_computed``), and blocks are registered nowhere else. (A fork child may hold a block
        its parent committed after the fork, so "cached implies committed by every holder" is
        not an invariant.)"""

        def fail(msg: str) -> None:
            raise PagedKVError(f"manager integrity: {msg}")

        self.pool.check_integrity()
        refs: Counter[int] = Counter()
        host_used: list[int] = []
        for seq in self._seqs.values():
            problem = self._sequence_problem(seq, refs, host_used)
            if problem:
                fail(f"sequence {seq.seq_id!r}: {problem}")
        for blocks in self._pins.values():
            refs.update(blocks)
        refs.update(self._held)
        pool = self.pool
        for b in range(1, pool.num_blocks):
            if pool.ref_cnt[b] != refs[b]:
                fail(f"block {b}: ref_cnt {pool.ref_cnt[b]} but {refs[b]} references")
        host = host_used + self._host_free
        if len(host) != len(set(host)) or len(host) != self.config.num_host_blocks:
            fail(f"host pool: {len(host_used)} used + {len(self._host_free)} free != "
                 f"{self.config.num_host_blocks}")
        for seq in self._seqs.values():
            if (seq.caching and len(seq.block_hashes) > seq.num_hashed
                    and self._unregistered.get(seq.seq_id) is not seq):
                fail(f"sequence {seq.seq_id!r} has unoffered hashed blocks but is not tracked")
        if any(self._seqs.get(sid) is not s for sid, s in self._unregistered.items()):
            fail("a sequence no longer known is tracked for registration")
        swapped = sum(s.status is SeqStatus.SWAPPED for s in self._seqs.values())
        if swapped != self._num_swapped:
            fail(f"swapped-sequence counter {self._num_swapped} but {swapped} swapped")
        problem = self._copies_problem()
        if problem:
            fail(problem)
        if self.pressure.level != self.pressure.level_for(pool.num_used):
            fail(f"pressure level {self.pressure.level} stale")
        if self.counters.peak_blocks_used < pool.num_used:
            fail(f"peak usage {self.counters.peak_blocks_used} blocks < {pool.num_used} used")

    def _sequence_problem(self, seq: Sequence, refs: Counter[int], host_used: list[int]
                          ) -> str | None:
        """What is wrong with one sequence, if anything; counts its block references."""
        bs, pool = self.block_size, self.pool
        n, table = seq.num_tokens, seq.block_table
        if not seq.num_hashed * bs <= seq.num_computed <= n:
            return (f"{seq.num_hashed} blocks offered to the cache, {seq.num_computed} tokens "
                    f"computed, {n} tokens")
        if seq.tokens is not None and len(seq.tokens) != n:
            return f"{len(seq.tokens)} token ids for {n} tokens"
        if not seq.num_hashed <= len(seq.block_hashes) <= n // bs:
            return (f"hashed {seq.num_hashed}, {len(seq.block_hashes)} hashes, {n // bs} full "
                    f"blocks")
        if seq.status is SeqStatus.SWAPPED:
            if table or len(seq.host_table) != -(-n // bs):
                return "swapped but its tables are inconsistent"
            host_used += [h for h in seq.host_table if h >= 0]
            return None
        if len(table) != -(-n // bs):
            return f"{len(table)} blocks for {n} tokens"
        if n and table[-1] == NULL_BLOCK_ID:
            return "the block of its last token was released"
        first_droppable = 0 if seq.window is None else seq.window.first_droppable_block(bs)
        for i, b in enumerate(table):
            released = seq.window is not None and first_droppable <= i < seq.window_next
            if (b == NULL_BLOCK_ID) != released:
                return f"block {i} is {b}, released={released}"
            if b != NULL_BLOCK_ID:
                refs[b] += 1
            h = pool.block_hash[b]
            if i < seq.num_hashed and h is not None and h != seq.block_hashes[i]:
                return f"block {i} cached under a different hash"
        return None

    def _copies_problem(self) -> str | None:
        ref_cnt, held = self.pool.ref_cnt, Counter(self._held)
        for dst, src in self._copies.items():
            if ref_cnt[dst] == 0:
                return f"pending copy {src}->{dst} targets an unreferenced block"
            if held[src] == 0 or ref_cnt[src] == 0:
                return f"pending copy {src}->{dst} reads a block it does not hold"
            if src in self._copies:
                return f"pending copy {src}->{dst} reads another copy's unfilled target"
            if self.pool.block_hash[dst] is not None:
                return f"pending copy {src}->{dst} targets a cached block"
        return None
