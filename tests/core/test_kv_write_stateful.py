"""Stateful test with the KV write deferred to an explicit step, as an engine does it.

``test_stateful`` writes each call's KV at once. Here the KV of appended and admitted tokens is
written only by the ``step`` rule (the forward pass: run the pending copy-on-write copies, write
every uncomputed position of the chosen sequences, then ``commit`` them), so hypothesis can put
frees (aborts), truncations, preemptions, swaps, forks and evictions between an allocation, its
copy-on-write and its KV write. The model keeps a payload per physical slot, ``mem[block][offset]``
= the identity of the KV written there (a hash of the salt and every token up to that position).

After every rule: ``check_integrity()``; every cached block holds the KV of the tokens its hash
stands for; every sequence still reads its computed KV through its block table (a pending copy's
target reads as its source); and every prefix hit returns blocks whose payload is the KV of the
tokens it claims. Admissions may take partial-block hits, whose rows arrive by a pending copy
(the invariant reads a copy's target as its source, so they are checked like any computed row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from core_helpers import identities
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from pagedkv.core import EVICTION_POLICIES, BlockManager, CacheConfig, SlidingWindow
from pagedkv.core.prefix_cache.hashing import chain_hashes, root_hash, token_bytes
from pagedkv.core.tokens import as_token_array
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError

PREFIXES = (
    (1, 2, 3, 4, 5, 6, 7, 8),
    (1, 2, 3, 4, 5, 6, 7, 0),  # agrees with the first on 7 tokens: partial-block hits
    (1, 2, 3, 4, 9, 9),
    (5, 5, 5, 5, 5, 5),
)
SALTS = (None, None, "tenant-b")
TOKENS = st.lists(st.integers(0, 2), max_size=5)


@dataclass
class Seq:
    tokens: list[int]
    salt: str | None
    computed: int  # leading positions whose KV the model wrote (or got from a prefix hit)
    swapped: bool = False
    rest: list[int] = field(default_factory=list)  # a hashed prompt's tokens not yet appended


class KVWriteMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.mgr: BlockManager | None = None
        self.seqs: dict[int, Seq] = {}
        self.mem: dict[int, list[Any]] = {}
        self.host: dict[int, list[Any]] = {}
        self.known: dict[object, list[int]] = {}
        self.next_id = 0

    @initialize(
        bs=st.sampled_from([1, 2, 2, 3, 4]),
        blocks=st.integers(6, 16),
        host=st.sampled_from([0, 6, 12, 12]),
        policy=st.sampled_from(sorted(EVICTION_POLICIES)),
        first=st.lists(st.tuples(st.sampled_from(PREFIXES), TOKENS), max_size=3),
    )
    def setup(
        self,
        bs: int,
        blocks: int,
        host: int,
        policy: str,
        first: list[tuple[tuple[int, ...], list[int]]],
    ) -> None:
        """A pool, and a few sequences already computed (so most runs start with state)."""
        self.bs = bs
        self.mgr = BlockManager(
            CacheConfig(
                block_size=bs, num_blocks=blocks, num_host_blocks=host, eviction_policy=policy
            )
        )
        self.mem = {b: [None] * bs for b in range(blocks)}
        self.host = {h: [None] * bs for h in range(host)}
        for prefix, tail in first:
            self.admit(prefix, len(prefix), tail, None, True, None)
        self.run_copies()
        for sid in self.ids():
            self.write(sid, len(self.seqs[sid].tokens))
        self.m.commit(self.ids())

    @property
    def m(self) -> BlockManager:
        assert self.mgr is not None
        return self.mgr

    def ids(self, swapped: bool = False) -> list[int]:
        return sorted(s for s, q in self.seqs.items() if q.swapped == swapped)

    def ready(self) -> bool:
        return self.mgr is not None

    def has(self, swapped: bool = False) -> bool:
        return self.mgr is not None and bool(self.ids(swapped))

    def read(self, block: int, store: dict[int, list[Any]]) -> list[Any]:
        """What a block holds once the pending copies have run (a target reads its source)."""
        if store is self.mem:
            block = self.m.copies.copies.get(block, block)
        return store[block]

    def check_hit(self, tokens: list[int], salt: str | None, blocks: list[int]) -> None:
        ids = identities(tokens, salt)
        for i, b in enumerate(blocks):
            want = ids[i * self.bs : (i + 1) * self.bs]
            assert self.read(b, self.mem) == want, f"prefix hit serves wrong KV in block {b}"

    @staticmethod
    def refused_by_window(exc: InvalidArgumentError) -> None:
        """The only refusal of a valid cut: it would leave a token reading released blocks."""
        if "sliding window" not in str(exc):
            raise exc

    # ------------------------------------------------------------------ allocation
    @precondition(lambda self: self.ready() and len(self.seqs) < 6)
    @rule(
        prefix=st.sampled_from(PREFIXES),
        cut=st.integers(0, 8),
        tail=TOKENS,
        salt=st.sampled_from(SALTS),
        last=st.booleans(),
        window=st.sampled_from([None, 3]),
        partial=st.booleans(),
    )
    def admit(
        self,
        prefix: tuple[int, ...],
        cut: int,
        tail: list[int],
        salt: str | None,
        last: bool,
        window: int | None,
        partial: bool = False,
    ) -> None:
        tokens = [*prefix[:cut], *tail]
        self.next_id += 1
        sid = self.next_id
        sw = None if window is None else SlidingWindow(window)
        try:
            hit = self.m.admit(
                sid,
                tokens,
                cache_salt=salt,
                compute_last_token=last,
                sliding_window=sw,
                partial_block_hit=partial,
            )
        except OutOfBlocksError:
            return
        self.check_hit(tokens, salt, self.m.block_table(sid)[: hit // self.bs])
        self.seqs[sid] = Seq(tokens, salt, hit)

    @precondition(lambda self: self.ready() and len(self.seqs) < 6)
    @rule(
        prefix=st.sampled_from(PREFIXES),
        tail=TOKENS,
        salt=st.sampled_from(SALTS),
        chunk=st.integers(1, 9),
        partial=st.booleans(),
    )
    def admit_hashed_chunk(
        self,
        prefix: tuple[int, ...],
        tail: list[int],
        salt: str | None,
        chunk: int,
        partial: bool,
    ) -> None:
        """Chunked prefill the engine's way: the whole prompt hashed once, its first chunk
        admitted; ``continue_prompt`` appends the rest, reusing the prompt's hashes."""
        tokens = [*prefix, *tail]
        hashed = self.m.hash_prompt(tokens, cache_salt=salt)
        self.next_id += 1
        sid = self.next_id
        first = min(chunk, len(tokens))
        try:
            hit = self.m.admit(sid, hashed.prefix(first), partial_block_hit=partial)
        except OutOfBlocksError:
            return
        self.check_hit(tokens, salt, self.m.block_table(sid)[: hit // self.bs])
        self.seqs[sid] = Seq(tokens[:first], salt, hit, rest=tokens[first:])

    @precondition(lambda self: any(q.rest and not q.swapped for q in self.seqs.values()))
    @rule(data=st.data(), n=st.integers(1, 5))
    def continue_prompt(self, data: st.DataObject, n: int) -> None:
        sid = data.draw(st.sampled_from([s for s in self.ids() if self.seqs[s].rest]))
        q = self.seqs[sid]
        new = q.rest[:n]
        try:
            self.m.append(sid, new)
        except OutOfBlocksError:
            return
        q.tokens += new
        del q.rest[: len(new)]

    @precondition(lambda self: self.has())
    @rule(data=st.data(), new=TOKENS)
    def append(self, data: st.DataObject, new: list[int]) -> None:
        sid = data.draw(st.sampled_from(self.ids()))
        try:
            self.m.append(sid, new)
        except OutOfBlocksError:
            return
        self.seqs[sid].tokens += new

    @precondition(lambda self: self.has())
    @rule(data=st.data(), token=st.integers(0, 2))
    def append_batch(self, data: st.DataObject, token: int) -> None:
        ids = data.draw(st.lists(st.sampled_from(self.ids()), min_size=1, unique=True))
        try:
            self.m.append_batch(ids, np.full(len(ids), token))
        except OutOfBlocksError:
            return
        for sid in ids:
            self.seqs[sid].tokens.append(token)

    @precondition(lambda self: self.has() and len(self.seqs) < 6)
    @rule(data=st.data())
    def fork(self, data: st.DataObject) -> None:
        parent = data.draw(st.sampled_from(self.ids()))
        p = self.seqs[parent]
        n = data.draw(st.integers(0, len(p.tokens)))
        self.next_id += 1
        try:
            self.m.fork(parent, self.next_id, n)
        except InvalidArgumentError as exc:
            self.refused_by_window(exc)
            return
        self.seqs[self.next_id] = Seq(p.tokens[:n], p.salt, min(p.computed, n))

    @precondition(lambda self: self.has() and len(self.seqs) < 6)
    @rule(data=st.data(), writer_is_child=st.booleans(), token=st.integers(0, 2))
    def fork_and_write(self, data: st.DataObject, writer_is_child: bool, token: int) -> None:
        """Fork, then append to one side: a copy-on-write of the shared partial block is queued
        (the case the rules below must not break before ``step`` runs it)."""
        parent = data.draw(st.sampled_from(self.ids()))
        p = self.seqs[parent]
        self.next_id += 1
        child = self.next_id
        self.m.fork(parent, child)
        self.seqs[child] = Seq(list(p.tokens), p.salt, p.computed)
        writer = child if writer_is_child else parent
        try:
            self.m.append(writer, [token])
        except OutOfBlocksError:
            return
        self.seqs[writer].tokens.append(token)

    # ------------------------------------------------------------------ aborts and reshaping
    @precondition(lambda self: bool(self.seqs))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.seqs)))
        self.m.free(sid)
        del self.seqs[sid]

    @precondition(lambda self: self.has())
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.ids()))
        q = self.seqs[sid]
        n = data.draw(st.integers(0, len(q.tokens)))
        try:
            self.m.truncate(sid, n)
        except InvalidArgumentError as exc:
            self.refused_by_window(exc)
            return
        del q.tokens[n:]
        q.computed = min(q.computed, n)

    @precondition(lambda self: self.has())
    @rule(data=st.data(), swap=st.booleans())
    def preempt(self, data: st.DataObject, swap: bool) -> None:
        sid = data.draw(st.sampled_from(self.ids()))
        if not swap:
            self.m.preempt(sid)
            del self.seqs[sid]
            return
        try:
            copies = self.m.swap_out(sid)
        except OutOfBlocksError:
            return
        for b, h in copies:  # executed at once, before any later call's copies
            self.host[h] = list(self.read(b, self.mem))
        self.seqs[sid].swapped = True

    @precondition(lambda self: self.has(swapped=True))
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(self.ids(swapped=True)))
        try:
            copies = self.m.swap_in(sid)
        except OutOfBlocksError:
            return
        for h, b in copies:
            self.mem[b] = list(self.host[h])
        self.seqs[sid].swapped = False

    @precondition(lambda self: self.has())
    @rule(k=st.integers(0, 3))
    def evict(self, k: int) -> None:
        free, cached = len(self.m.pool.free_stack), len(self.m.prefix_cache.evictor)
        assert self.m.evict_cached(k) == min(k, cached)
        assert len(self.m.pool.free_stack) == free + min(k, cached)

    # ------------------------------------------------------------------ the forward pass
    def run_copies(self) -> None:
        for src, dst in self.m.take_copies():
            self.mem[dst] = list(self.mem[src])

    def write(self, sid: int, upto: int) -> None:
        q = self.seqs[sid]
        ids = identities(q.tokens, q.salt)
        for p, slot in zip(
            range(q.computed, upto),
            self.m.slot_mapping(sid, q.computed, upto).tolist(),
            strict=True,
        ):
            if slot >= 0:
                self.mem[slot // self.bs][slot % self.bs] = ids[p]
        q.computed = max(q.computed, upto)

    @precondition(lambda self: self.has())
    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """Copies first, then the KV of every uncomputed token of some sequences, then commit."""
        ids = data.draw(st.lists(st.sampled_from(self.ids()), unique=True))
        self.run_copies()
        for sid in ids:
            self.write(sid, len(self.seqs[sid].tokens))
        self.m.commit(ids)

    @precondition(lambda self: self.has())
    @rule(data=st.data())
    def chunk(self, data: st.DataObject) -> None:
        """Chunked prefill: part of one sequence computed, reported with register_prefix."""
        sid = data.draw(st.sampled_from(self.ids()))
        q = self.seqs[sid]
        upto = data.draw(st.integers(q.computed, len(q.tokens)))
        self.run_copies()
        self.write(sid, upto)
        self.m.register_prefix(sid, upto)

    @precondition(lambda self: self.has() and bool(self.m.num_pending_copies))
    @rule()
    def copies_only(self) -> None:
        self.run_copies()

    # ------------------------------------------------------------------ invariants
    @invariant()
    def kv_is_right(self) -> None:
        if self.mgr is None:
            return
        mgr, bs = self.m, self.bs
        mgr.check_integrity()
        fn = mgr.prefix_cache.hasher.hash_fn
        for sid, q in self.seqs.items():
            assert mgr.num_computed(sid) == q.computed
            hashes = chain_hashes(
                fn,
                root_hash(fn, q.salt, None),
                token_bytes(as_token_array(q.tokens)),
                bs * 8,
                q.computed // bs,
            )
            ids = identities(q.tokens, q.salt)
            for i, h in enumerate(hashes):
                self.known.setdefault(h, ids[i * bs : (i + 1) * bs])
            seq = mgr.seq(sid)
            table, store, null = (
                (seq.host_table, self.host, -1) if q.swapped else (seq.block_table, self.mem, 0)
            )
            for p in range(q.computed):
                b = table[p // bs]
                if b != null:
                    assert self.read(b, store)[p % bs] == ids[p], f"seq {sid} lost KV at {p}"
        for h, b in mgr.prefix_cache.cached.items():
            assert h in self.known, f"block {b} cached under a hash nobody computed"
            assert self.mem[b] == self.known[h], f"cached block {b} does not hold its KV"


SETTINGS = settings(
    max_examples=200,
    stateful_step_count=40,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_kv_writes_deferred_to_the_step() -> None:
    run_state_machine_as_test(KVWriteMachine, settings=SETTINGS)
