"""The sequences and their block tables: growth, windows, truncate, fork, free and swap.

Like vLLM's per-request block lists (``SingleTypeKVCacheManager``): this role owns the
``SeqState`` of every sequence and moves blocks in and out of their tables, over the block pool,
the copy-on-write queue, the registrar and the host pool. It trusts its arguments: the
``BlockManager`` validated them at the public boundary.

Full blocks are immutable: writing into a partial last block that is shared or cached first
gives the sequence a private copy (``PendingCopies``). Appended tokens are not computed yet: a
block they fill is hashed here (``Registrar.seal``) but becomes findable only once committed.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Sequence

import numpy as np

from pagedkv.core import export
from pagedkv.core import validate as check
from pagedkv.core.blocks.block_pool import BlockPool
from pagedkv.core.blocks.copy_on_write import PendingCopies
from pagedkv.core.blocks.host_pool import HostPool
from pagedkv.core.export import PAD_SLOT_ID
from pagedkv.core.manager.registrar import Registrar
from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.pressure import PressureMonitor
from pagedkv.core.seq_state import SeqState, SeqStatus
from pagedkv.core.stats import Counters
from pagedkv.errors import (
    InvalidArgumentError,
    OutOfBlocksError,
    SequenceStateError,
    UnknownSequenceError,
)

_RUNNING = SeqStatus.RUNNING
_ONE_SLOT = np.zeros(1, dtype=np.int64)
FEW_TOKENS = 8  # appends of up to this many tokens compute their slots without numpy


class SequenceTable:
    """Every admitted sequence's ``SeqState``, keyed by sequence id."""

    def __init__(
        self,
        pool: BlockPool,
        copies: PendingCopies,
        registrar: Registrar,
        host_pool: HostPool,
        counters: Counters,
        pressure: PressureMonitor,
    ) -> None:
        self.block_size = pool.cache.block_size
        self.pool, self.copies, self.registrar, self.host_pool = pool, copies, registrar, host_pool
        self.counters, self.pressure = counters, pressure
        self.seqs: dict[Hashable, SeqState] = {}
        self.num_swapped = 0  # sequences swapped out to the host pool
        self.clock = 0  # logical time: arrival and last use of each sequence

    def get(self, seq_id: Hashable) -> SeqState:
        try:
            return self.seqs[seq_id]
        except KeyError:
            raise UnknownSequenceError(seq_id) from None
        except TypeError:
            check.seq_id(seq_id)  # names the unhashable id
            raise

    def get_many(self, seq_ids: Iterable[Hashable]) -> list[SeqState]:
        """The sequences of a batch call, looked up in C; names an unknown or unhashable id.
        A list is the hot path; any other iterable is materialised and checked first (a
        ``str`` is refused, not read as one-character ids; a generator is read once)."""
        ids = seq_ids if type(seq_ids) is list else check.seq_ids(seq_ids)
        try:
            return list(map(self.seqs.__getitem__, ids))
        except KeyError as exc:
            raise UnknownSequenceError(exc.args[0]) from None
        except TypeError:
            check.seq_ids(ids)  # names the unhashable id
            raise

    def running(self, seq_id: Hashable) -> SeqState:
        seq = self.get(seq_id)
        if seq.status is not _RUNNING:
            raise SequenceStateError(f"sequence {seq_id!r} is {seq.status.value}, not running")
        return seq

    def after_alloc(self) -> None:
        """Usage changed: update the peak and the pressure level."""
        used = self.pool.num_used
        if used > self.counters.peak_blocks_used:
            self.counters.peak_blocks_used = used
        self.pressure.update(used)

    def commit(self, seqs: list[SeqState]) -> None:
        """Every token of ``seqs`` has its KV written: offer their newly full blocks to the
        cache (``Registrar``). All or nothing: a swapped-out sequence raises first."""
        if self.num_swapped:  # the decode hot path skips this loop: nothing swapped
            for seq in seqs:
                if seq.status is not _RUNNING:
                    raise SequenceStateError(
                        f"sequence {seq.seq_id!r} is {seq.status.value}, not running: its KV "
                        f"is on the host, nothing was computed"
                    )
        for seq in seqs:
            seq.num_computed = seq.num_tokens
        if self.registrar.tracked:
            self.registrar.register_computed()

    # ----------------------------------------------------------------- growth
    def append(self, seq: SeqState, tokens: Sequence[int] | None, one: int) -> np.ndarray:
        """Append ``tokens`` (or the single token ``one`` when ``tokens`` is None) to a running
        sequence; returns their int64 ``[k]`` slots. Atomic: raises before any change."""
        k = 1 if tokens is None else len(tokens)
        bs, n, table, pool = self.block_size, seq.num_tokens, seq.block_table, self.pool
        new_blocks = -(-(n + k) // bs) - len(table)
        cow = n % bs != 0 and self.copies.needs_copy(table[-1])
        need = new_blocks + cow
        if need and need > pool.num_available:
            raise OutOfBlocksError(need, pool.num_available)
        if cow:
            self.copies.copy_last(table)
        if new_blocks:
            table.extend(pool.allocate(new_blocks))
            self.counters.allocations += new_blocks
        if seq.tokens is not None:
            if tokens is None:
                seq.tokens.append(one)
            else:
                seq.tokens.extend(tokens)
        seq.num_tokens = n + k
        self.clock += 1
        seq.last_used = self.clock
        if seq.caching and (n + k) // bs > n // bs:
            self.registrar.seal(seq)
        if seq.window is not None:
            self.slide(seq, n + 1)
        if need or seq.window is not None:
            self.after_alloc()  # else the used-block count did not change, and the peak and
            # pressure level already match it (check_integrity verifies both after every call)
        if k == 1:  # export.slot_mapping's result without building its intermediate arrays
            b = table[n // bs]
            out = _ONE_SLOT.copy()  # ~2x faster than np.array([slot], dtype=np.int64)
            out[0] = b * bs + n % bs if b != NULL_BLOCK_ID else PAD_SLOT_ID
            return out
        if k > FEW_TOKENS:
            return export.slot_mapping(table, bs, n, n + k)
        return np.array(
            [
                table[p // bs] * bs + p % bs if table[p // bs] != NULL_BLOCK_ID else PAD_SLOT_ID
                for p in range(n, n + k)
            ],
            dtype=np.int64,
        )

    def append_batch(self, seqs: list[SeqState], toks: list[int]) -> np.ndarray:
        """Append one token to each running sequence: O(1) per sequence, a block allocated only
        at a boundary. Returns int64 ``[B]`` slots. Atomic: raises before any change."""
        bs, pool, copies = self.block_size, self.pool, self.copies
        if self.num_swapped:  # else every sequence is running
            for s in seqs:
                if s.status is not _RUNNING:
                    self.running(s.seq_id)  # raises the state error
        if len(seqs) > pool.num_available:  # each sequence needs at most one block: count
            need = sum(s.num_tokens % bs == 0 or copies.needs_copy(s.block_table[-1]) for s in seqs)
            if need > pool.num_available:
                raise OutOfBlocksError(need, pool.num_available)
        self.clock += 1
        clock, allocate_one, seal = self.clock, pool.allocate_one, self.registrar.seal
        ref_cnt, block_hash = pool.ref_cnt, pool.cache.block_hash
        new_blocks = 0
        slots: list[int] = []
        append_slot, last = slots.append, bs - 1
        for s, t in zip(seqs, toks):  # noqa: B905 - lengths checked by the caller
            n = s.num_tokens
            s.num_tokens = n + 1
            s.last_used = clock
            table = s.block_table
            off = n % bs
            if off:
                b = table[-1]
                # copies.needs_copy(b), inlined: the decode hot path, once per sequence a step
                if block_hash[b] is not None or (ref_cnt[b] > 1 and copies.shared(b)):
                    b = copies.copy_last(table)
            else:
                b = allocate_one()
                table.append(b)
                new_blocks += 1
            append_slot(b * bs + off)
            tokens = s.tokens
            if tokens is not None:
                tokens.append(t)
            if off == last and s.caching:
                seal(s)
            if s.window is not None:
                self.slide(s, n + 1)
        self.counters.allocations += new_blocks
        self.after_alloc()
        return np.array(slots, dtype=np.int64)

    def slide(self, seq: SeqState, first_new: int) -> None:
        """Release blocks wholly behind the window of the step's first new token (the one at
        position ``first_new - 1``): every token computed in this step may still read back to
        its own window, so only blocks before the earliest of those windows may go."""
        assert seq.window is not None
        end = seq.window.droppable_end(first_new, self.block_size)
        table = seq.block_table
        while seq.window_next < end:
            b = table[seq.window_next]
            table[seq.window_next] = NULL_BLOCK_ID
            self.copies.release((b,))
            seq.window_next += 1

    # -------------------------------------------------------------- reshaping
    def check_window_cut(self, seq: SeqState, end: int, what: str) -> None:
        """Refuse to cut a windowed sequence to ``end`` tokens if a token it keeps, or the next
        token it computes (at position ``end``), would read positions already released: paged
        attention would silently read the null block's zeros as KV."""
        gone = seq.released_needed(end, self.block_size)
        if gone is None:
            return
        if seq.block_table[(end - 1) // self.block_size] == NULL_BLOCK_ID:
            raise InvalidArgumentError(
                f"{what}: token {end - 1} lies in a block the sliding window already released"
            )
        assert seq.window is not None
        raise InvalidArgumentError(
            f"{what}: the next token (position {end}) attends to positions "
            f"{seq.window.first_needed(end)}..{end}, but the sliding window already released "
            f"positions {gone[0]}..{gone[1]}"
        )

    def truncate(self, seq: SeqState, num_tokens: int) -> None:
        """Cut ``seq`` to its first ``num_tokens`` tokens (checked by the caller)."""
        bs = self.block_size
        keep = -(-num_tokens // bs)
        tail = seq.block_table[keep:]
        del seq.block_table[keep:]
        self.copies.release(reversed(tail))
        if seq.tokens is not None:
            del seq.tokens[num_tokens:]
        full = num_tokens // bs
        del seq.block_hashes[full:]
        seq.num_hashed = min(seq.num_hashed, full)
        seq.num_tokens = num_tokens
        seq.num_computed = min(seq.num_computed, num_tokens)
        seq.window_next = seq.clamp_window_next(keep, bs)
        self.pressure.update(self.pool.num_used)

    def fork(self, parent: SeqState, child_id: Hashable, num_tokens: int) -> None:
        """Add ``child_id`` sharing the parent's blocks for its first ``num_tokens`` tokens."""
        self.clock += 1
        child = parent.clone(child_id, num_tokens, self.block_size, self.clock)
        self.pool.share(child.block_table)
        self.seqs[child_id] = child
        self.registrar.track(child)
        self.counters.forks += 1

    def free(self, seq: SeqState) -> None:
        """Drop ``seq``; its device (or host) blocks go back to their pool."""
        del self.seqs[seq.seq_id]
        self.registrar.forget(seq.seq_id)
        if seq.status is SeqStatus.SWAPPED:
            self.num_swapped -= 1
            self.host_pool.release(b for b in reversed(seq.host_table) if b >= 0)
        else:
            self.copies.release(reversed(seq.block_table))
        self.pressure.update(self.pool.num_used)

    # ------------------------------------------------------------------- swap
    def swap_out(self, seq: SeqState) -> list[tuple[int, int]]:
        """Move a running sequence's blocks to the host pool; returns ``(device, host)``
        copies. A block awaiting its copy-on-write copy is read from that copy's source."""
        live = [b for b in seq.block_table if b != NULL_BLOCK_ID]
        host = iter(self.host_pool.allocate(len(live)))
        pending = self.copies.copies
        host_table = [-1 if b == NULL_BLOCK_ID else next(host) for b in seq.block_table]
        copies = [
            (pending.get(b, b), h)
            for b, h in zip(seq.block_table, host_table, strict=True)
            if b != NULL_BLOCK_ID
        ]
        self.copies.release(reversed(seq.block_table))
        seq.block_table = []
        seq.host_table = host_table
        seq.status = SeqStatus.SWAPPED
        self.num_swapped += 1
        seq.caching = False  # its device blocks may be reused; re-caching would need re-hashing
        self.registrar.forget(seq.seq_id)
        self.counters.swapped_out_blocks += len(copies)
        self.pressure.update(self.pool.num_used)
        return copies

    def swap_in(self, seq: SeqState) -> list[tuple[int, int]]:
        """Bring a swapped sequence back into fresh device blocks; returns ``(host, device)``
        copies."""
        live = [h for h in seq.host_table if h >= 0]
        if len(live) > self.pool.num_available:
            raise OutOfBlocksError(len(live), self.pool.num_available)
        fresh = iter(self.pool.allocate(len(live)))
        seq.block_table = [NULL_BLOCK_ID if h < 0 else next(fresh) for h in seq.host_table]
        copies = [(h, b) for h, b in zip(seq.host_table, seq.block_table, strict=True) if h >= 0]
        self.host_pool.release(reversed(live))
        seq.host_table = []
        seq.status = SeqStatus.RUNNING
        self.num_swapped -= 1
        self.counters.swapped_in_blocks += len(copies)
        self.counters.allocations += len(copies)
        self.after_alloc()
        return copies
