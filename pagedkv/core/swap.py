"""Preemption and swapping: pick victims under memory pressure, free them or move their blocks
to the host pool. The manager tracks where each block lives; storage executes the copies."""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from pagedkv.core import validate as check
from pagedkv.core.block_pool import NULL_BLOCK_ID
from pagedkv.core.manager_state import ManagerState
from pagedkv.core.preemption import PREEMPTION_POLICIES
from pagedkv.core.sequence import SeqStatus
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError


class SwapAPI(ManagerState):
    """Mixin of ``BlockManager``."""

    def blocks_freed_by(self, seq_id: Hashable) -> int:
        """Blocks that would return to the pool if the sequence were freed now."""
        ref_cnt = self.pool.ref_cnt
        return sum(1 for b in self._running(seq_id).block_table
                   if b != NULL_BLOCK_ID and ref_cnt[b] == 1)

    def select_victims(self, num_blocks: int, policy: str = "priority",
                       exclude: Iterable[Hashable] = ()) -> list[Hashable]:
        """Running sequences to preempt, in order, until freeing them would return at least
        ``num_blocks`` blocks (all candidates if that is impossible). Changes nothing."""
        num_blocks = check.count("num_blocks", num_blocks)
        if not isinstance(policy, str) or policy not in PREEMPTION_POLICIES:
            raise InvalidArgumentError(
                f"unknown preemption policy {policy!r}; known: {sorted(PREEMPTION_POLICIES)}")
        skip = set(check.seq_ids(exclude))
        candidates = [s for s in self._seqs.values()
                      if s.status is SeqStatus.RUNNING and s.seq_id not in skip]
        victims: list[Hashable] = []
        freed = 0
        for seq in PREEMPTION_POLICIES[policy](candidates):
            if freed >= num_blocks:
                break
            victims.append(seq.seq_id)
            freed += self.blocks_freed_by(seq.seq_id)
        return victims

    def preempt(self, seq_id: Hashable, mode: str = "recompute") -> list[tuple[int, int]]:
        """Preempt a running sequence: ``recompute`` frees it (its cached prefix may survive to
        speed up the recompute); ``swap`` moves it to host memory and returns the
        ``(device_block, host_block)`` copies to execute."""
        if not isinstance(mode, str) or mode not in ("recompute", "swap"):
            raise InvalidArgumentError(f"mode must be 'recompute' or 'swap', got {mode!r}")
        self._running(seq_id)
        copies = self.swap_out(seq_id) if mode == "swap" else []
        if mode == "recompute":
            self.free(seq_id)
        self.counters.preemptions += 1
        return copies

    def swap_out(self, seq_id: Hashable) -> list[tuple[int, int]]:
        """Move a running sequence's blocks to the host pool. Returns ``(device_block,
        host_block)`` copies; execute them before this step writes any KV.

        A block still waiting for its copy-on-write copy is read from that copy's source
        (held until ``take_copies``), so the copies may run in either order; the pending copy
        itself is dropped once the block has no other user. Uncommitted blocks never entered
        the prefix cache, so the released device blocks leave nothing unwritten behind."""
        seq = self._running(seq_id)
        live = [b for b in seq.block_table if b != NULL_BLOCK_ID]
        if len(live) > len(self._host_free):
            raise OutOfBlocksError(len(live), len(self._host_free), what="host blocks")
        copies = []
        host_table = []
        pending = self._copies
        for b in seq.block_table:
            if b == NULL_BLOCK_ID:
                host_table.append(-1)
            else:
                h = self._host_free.pop()
                host_table.append(h)
                copies.append((pending.get(b, b), h))
        self._release(reversed(seq.block_table))
        seq.block_table = []
        seq.host_table = host_table
        seq.status = SeqStatus.SWAPPED
        self._num_swapped += 1
        seq.caching = False  # its device blocks may be reused; re-caching would need re-hashing
        self._unregistered.pop(seq_id, None)
        self.counters.swapped_out_blocks += len(copies)
        self.pressure.update(self.pool.num_used)
        return copies

    def swap_in(self, seq_id: Hashable) -> list[tuple[int, int]]:
        """Bring a swapped sequence back into fresh device blocks. Returns ``(host_block,
        device_block)`` copies; execute them before the sequence's next KV write."""
        seq = self.seq(seq_id)
        if seq.status is not SeqStatus.SWAPPED:
            raise InvalidArgumentError(f"sequence {seq_id!r} is not swapped out")
        live = [h for h in seq.host_table if h >= 0]
        if len(live) > self.pool.num_available:
            raise OutOfBlocksError(len(live), self.pool.num_available)
        fresh = iter(self.pool.allocate(len(live)))
        table, copies = [], []
        for h in seq.host_table:
            if h < 0:
                table.append(NULL_BLOCK_ID)
            else:
                b = next(fresh)
                table.append(b)
                copies.append((h, b))
        self._host_free.extend(reversed(live))
        seq.block_table = table
        seq.host_table = []
        seq.status = SeqStatus.RUNNING
        self._num_swapped -= 1
        self.counters.swapped_in_blocks += len(copies)
        self.counters.allocations += len(copies)
        self._after_alloc()
        return copies
