"""Statistics, snapshots and the whole-manager integrity check, over the manager's roles.

Each role checks its own invariants (``BlockPool.problem`` with the ``PrefixCache``'s,
``PendingCopies.problem``, ``Registrar.problem``, ``HostPool.check_integrity``); this module
checks what ties them together: every reference count equals the references held by block
tables, pins and pending-copy holds, and each sequence's geometry.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pagedkv.core.null_block import NULL_BLOCK_ID
from pagedkv.core.seq_state import SeqState, SeqStatus
from pagedkv.core.stats import ManagerStats
from pagedkv.errors import PagedKVError

if TYPE_CHECKING:  # the manager imports this module
    from pagedkv.core.manager.queries import ManagerQueries


def stats(m: ManagerQueries) -> ManagerStats:
    """Counters plus current usage and internal fragmentation (O(number of sequences))."""
    pool, bs = m.pool, m.block_size
    partial_fill: dict[int, int] = {}
    for seq in m.table.seqs.values():
        off = seq.num_tokens % bs
        if off and seq.status is SeqStatus.RUNNING:
            last = seq.block_table[-1]
            partial_fill[last] = max(partial_fill.get(last, 0), off)
    used = pool.num_used
    stored = (used - len(partial_fill)) * bs + sum(partial_fill.values())
    return ManagerStats(
        **vars(m.counters),
        evictions=m.prefix_cache.num_evictions,
        evict_listener_errors=m.prefix_cache.evict_log.failures,
        pressure_callback_errors=m.pressure.failures,
        num_sequences=len(m.table.seqs),
        num_blocks=m.config.num_blocks,
        num_usable_blocks=m.config.num_usable_blocks,
        blocks_used=used,
        blocks_cached=len(m.prefix_cache.evictor),
        blocks_free=len(pool.free_stack),
        tokens_stored=stored,
        block_size=bs,
        bytes_per_block=m.config.bytes_per_block,
    )


def reset_stats(m: ManagerQueries) -> None:
    for name, value in vars(type(m.counters)()).items():
        setattr(m.counters, name, value)
    m.counters.peak_blocks_used = m.pool.num_used


def snapshot(m: ManagerQueries) -> dict[str, Any]:
    """Every role's state, deep-copied (sequence order included: it is iteration order)."""
    return {
        "seqs": [(sid, seq_snapshot(s)) for sid, s in m.table.seqs.items()],
        "pool": m.pool.snapshot(),
        "copies": m.copies.snapshot(),
        "host_free": list(m.host_pool.free_stack),
        "pins": {k: list(v) for k, v in m.pins.held.items()},
        "pins_made": m.pins.made,
        "registrar": sorted(map(repr, m.registrar.tracked)),
        "clock": m.table.clock,
        "num_swapped": m.table.num_swapped,
        "counters": dict(vars(m.counters)),
        "pressure": m.pressure.level,
    }


def seq_snapshot(s: SeqState) -> dict[str, Any]:
    return {name: _copy(getattr(s, name)) for name in SeqState.__slots__}


def _copy(value: Any) -> Any:
    if isinstance(value, list):
        return list(value)
    if hasattr(value, "tolist"):  # array('q') of tokens
        return value.tolist()
    return value


def check_integrity(m: ManagerQueries) -> None:
    """Raise ``PagedKVError`` naming the first broken invariant: each role's own; ref counts
    equal the references from block tables, pins and pending-copy holds; per-sequence
    geometry; nothing offered to the cache beyond what was committed; the swapped count, the
    pressure level and the peak usage.

    "No cached block is uncommitted" is checked where it is decidable: a sequence never has
    offered more blocks than it committed (``num_hashed * block_size <= num_computed``), and
    blocks are registered nowhere else. (A fork child may hold a block its parent committed
    after the fork, so "cached implies committed by every holder" is not an invariant.)"""

    def fail(msg: str) -> None:
        raise PagedKVError(f"manager integrity: {msg}")

    m.pool.check_integrity()
    refs: Counter[int] = Counter()
    host_used: list[int] = []
    for seq in m.table.seqs.values():
        problem = sequence_problem(m, seq, refs, host_used)
        if problem:
            fail(f"sequence {seq.seq_id!r}: {problem}")
    for blocks in m.pins.held.values():
        refs.update(blocks)
    refs.update(m.copies.held)
    ref_cnt = m.pool.ref_cnt
    for b in range(1, m.pool.num_blocks):
        if ref_cnt[b] != refs[b]:
            fail(f"block {b}: ref_cnt {ref_cnt[b]} but {refs[b]} references")
    m.host_pool.check_integrity(host_used)
    problem = m.registrar.problem(m.table.seqs.values(), m.table.seqs) or m.copies.problem()
    if problem:
        fail(problem)
    swapped = sum(s.status is SeqStatus.SWAPPED for s in m.table.seqs.values())
    if swapped != m.table.num_swapped:
        fail(f"swapped-sequence counter {m.table.num_swapped} but {swapped} swapped")
    used = m.pool.num_used
    if m.pressure.level != m.pressure.level_for(used):
        fail(f"pressure level {m.pressure.level} stale")
    if m.counters.peak_blocks_used < used:
        fail(f"peak usage {m.counters.peak_blocks_used} blocks < {used} used")


def sequence_problem(
    m: ManagerQueries, seq: SeqState, refs: Counter[int], host_used: list[int]
) -> str | None:
    """What is wrong with one sequence, if anything; counts its block references."""
    bs, block_hash = m.block_size, m.prefix_cache.block_hash
    n, table = seq.num_tokens, seq.block_table
    if not seq.num_hashed * bs <= seq.num_computed <= n:
        return (
            f"{seq.num_hashed} blocks offered to the cache, {seq.num_computed} tokens "
            f"computed, {n} tokens"
        )
    if seq.tokens is not None and len(seq.tokens) != n:
        return f"{len(seq.tokens)} token ids for {n} tokens"
    if not seq.num_hashed <= len(seq.block_hashes) <= n // bs:
        return f"hashed {seq.num_hashed}, {len(seq.block_hashes)} hashes, {n // bs} full blocks"
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
        h = block_hash[b]
        if i < seq.num_hashed and h is not None and h != seq.block_hashes[i]:
            return f"block {i} cached under a different hash"
    return None
