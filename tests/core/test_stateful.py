"""Model-based stateful test of ``BlockManager`` with a simulated KV memory.

A hypothesis state machine drives random admissions (prompts built from a few shared prefixes
plus short random tails, so prefix hits are common), appends, batched appends, forks, frees,
truncations, evictions, preemption, swapping, pins, cache resets, explicit registration and
sliding windows on tiny pools, for every eviction policy. Each step writes its KV at once and may
commit it (making its full blocks findable); ``test_kv_write_stateful`` defers the writes.

Besides the expected token ids of every sequence, the model keeps a fake physical memory:
``mem[block][offset]`` holds the *identity* of the KV written there, a hash of
``(cache_salt, tokens[: position + 1])`` (KV at a position depends on the whole prefix and the
salt). Each step executes ``take_copies()`` and swap copies, then writes the step's new tokens at
the slots the manager handed out. Reading ``mem`` through a sequence's block table must then give
exactly that sequence's identities, every cached block must hold the KV of its hash, and a pinned
block must keep its content: this catches any block shared, reused or evicted wrongly.
"""

from __future__ import annotations

import os
from array import array
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from core_helpers import identities, snapshot
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

from pagedkv.core import EVICTION_POLICIES, BlockManager, CacheConfig, SeqStatus, SlidingWindow
from pagedkv.core.prefix_cache.hashing import chain_hashes, root_hash, token_bytes
from pagedkv.core.tokens import as_token_array
from pagedkv.errors import InvalidArgumentError, OutOfBlocksError

MAX_SEQS = 7
SHARED_PREFIXES = (
    tuple(range(100, 112)),
    tuple(range(200, 212)),
    (5, 5, 5, 5, 5, 5, 5, 5, 5, 5),
)
SALTS = (None, None, None, "tenant-b")
TOKEN = st.integers(0, 3)  # a tiny alphabet: random tails collide often
# append's inputs: a plain int and short lists take its fast path, the rest the general one
APPEND_FORMS: dict[str, Any] = {
    "int": lambda t: t[0],
    "list": list,
    "numpy": lambda t: np.array(t, dtype=np.int64),
    "array": lambda t: array("q", t),
    "tuple": tuple,
}
WINDOWS = st.one_of(
    st.just(None),
    st.just(None),
    st.just(None),
    st.builds(SlidingWindow, st.integers(1, 6), st.integers(0, 3)),
)


@dataclass
class ModelSeq:
    tokens: list[int]
    salt: str | None
    window: SlidingWindow | None
    swapped: bool = False


@dataclass
class ModelPin:
    pin: Any
    tokens: list[int]
    salt: str | None
    blocks: list[int] = field(default_factory=list)


class ManagerMachine(RuleBasedStateMachine):
    """Subclassed per eviction policy by ``make_machine``."""

    POLICY = "lru"

    def __init__(self) -> None:
        super().__init__()
        self.mgr: BlockManager | None = None
        self.model: dict[int, ModelSeq] = {}
        self.mem: dict[int, list[Any]] = {}
        self.host: dict[int, list[Any]] = {}
        self.known: dict[bytes, list[int]] = {}  # block hash -> identities of its KV
        self.history: list[tuple[list[int], str | None]] = []
        self.pins: list[ModelPin] = []
        self.stale_pins: list[Any] = []
        self.next_id = 0

    # ------------------------------------------------------------------ setup
    @initialize(
        block_size=st.integers(2, 4),
        num_blocks=st.integers(8, 24),
        num_host_blocks=st.sampled_from([0, 0, 6, 16]),
        max_cached_blocks=st.sampled_from([None, None, None, 0, 3]),
        watermark=st.sampled_from([0.0, 0.0, 0.0, 0.2]),
    )
    def setup(
        self,
        block_size: int,
        num_blocks: int,
        num_host_blocks: int,
        max_cached_blocks: int | None,
        watermark: float,
    ) -> None:
        self.bs = block_size
        self.mgr = BlockManager(
            CacheConfig(
                block_size=block_size,
                num_blocks=num_blocks,
                eviction_policy=self.POLICY,
                num_host_blocks=num_host_blocks,
                max_cached_blocks=max_cached_blocks,
                watermark=watermark,
            )
        )
        self.wm = int(watermark * (num_blocks - 1))
        self.mem = {b: [None] * block_size for b in range(num_blocks)}
        self.host = {h: [None] * block_size for h in range(num_host_blocks)}

    # ------------------------------------------------------------------ helpers
    @property
    def m(self) -> BlockManager:
        assert self.mgr is not None
        return self.mgr

    def running(self) -> list[int]:
        return sorted(s for s, ms in self.model.items() if not ms.swapped)

    def swapped(self) -> list[int]:
        return sorted(s for s, ms in self.model.items() if ms.swapped)

    def has_running(self) -> bool:
        return self.mgr is not None and bool(self.running())

    def room(self) -> bool:
        return self.mgr is not None and len(self.model) < MAX_SEQS

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def draw_prompt(self, data: st.DataObject) -> tuple[list[int], str | None]:
        source = data.draw(st.integers(0, len(SHARED_PREFIXES) + 1), label="source")
        if source < len(SHARED_PREFIXES):
            base, salt = list(SHARED_PREFIXES[source]), data.draw(st.sampled_from(SALTS))
        elif source == len(SHARED_PREFIXES) and self.history:
            base, salt = data.draw(st.sampled_from(self.history), label="history")
        else:
            base, salt = [], data.draw(st.sampled_from(SALTS))
        cut = data.draw(st.integers(0, len(base)), label="cut")
        tail = data.draw(st.lists(TOKEN, max_size=6), label="tail")
        return [*base[:cut], *tail], salt

    def remember(self, tokens: list[int], salt: str | None) -> None:
        self.history.append((list(tokens), salt))
        del self.history[:-12]

    def run_copies(
        self, copies: list[tuple[int, int]], src: dict[int, list[Any]], dst: dict[int, list[Any]]
    ) -> None:
        for a, b in copies:
            dst[b] = list(src[a])

    def write(self, sid: int, start: int, slots: np.ndarray) -> None:
        """Write the KV of positions ``start ..`` of ``sid`` at ``slots`` (-1: not written)."""
        ms = self.model[sid]
        ids = identities(ms.tokens, ms.salt)
        assert len(slots) == len(ms.tokens) - start
        for p, slot in zip(range(start, len(ms.tokens)), slots.tolist(), strict=True):
            if slot >= 0:
                self.mem[slot // self.bs][slot % self.bs] = ids[p]

    def flush_copies(self) -> None:
        """Copy-on-write copies run before this step's KV is written. The manager's own
        integrity check covers the still-pending copies (none may target a released block)."""
        self.m.check_integrity()
        copies = self.m.take_copies()
        for src, dst in copies:
            assert src != dst
            assert self.m.pool.ref_cnt[dst] > 0
        self.run_copies(copies, self.mem, self.mem)

    def window_gap(self, table: list[int], window: SlidingWindow | None, end: int) -> bool:
        """Would a sequence cut to ``end`` tokens keep a token in, or compute its next token
        (position ``end``) over, a block its sliding window released?"""
        if window is None or end == 0:
            return False
        first = min(end - 1, max(0, end + 1 - window.window_tokens)) // self.bs
        return any(table[i] == 0 for i in range(first, -(-end // self.bs)))

    def unchanged(self, before: dict[str, Any]) -> None:
        after = snapshot(self.m)
        diff = sorted(k for k in before if before[k] != after[k])
        assert not diff, f"a failing call changed {diff}"

    def out_of_blocks(
        self,
        before: dict[str, Any],
        err: OutOfBlocksError,
        *,
        fits: bool,
        exact: tuple[int, int] | None = None,
    ) -> None:
        """An allowed OutOfBlocksError: nothing changed, the numbers say it did not fit, and
        the request really did not fit by the model's count."""
        self.unchanged(before)
        assert err.requested > err.available, str(err)
        assert f"requested {err.requested}, available {err.available}" in str(err)
        if exact is not None:
            assert (err.requested, err.available) == exact
        assert not fits, f"{err} although the request fits"

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: self.room())
    @rule(data=st.data(), window=WINDOWS, compute_last=st.booleans(), commit=st.booleans())
    def admit(
        self, data: st.DataObject, window: SlidingWindow | None, compute_last: bool, commit: bool
    ) -> None:
        self.do_admit(self.draw_prompt(data), window, compute_last, commit)

    @precondition(lambda self: self.room() and bool(self.history))
    @rule(data=st.data(), compute_last=st.booleans())
    def admit_repeat(self, data: st.DataObject, compute_last: bool) -> None:
        """Re-admit (a prefix of) an earlier prompt: the common prefix-hit case."""
        tokens, salt = data.draw(st.sampled_from(self.history), label="history")
        cut = data.draw(st.integers(min(self.bs, len(tokens)), len(tokens)), label="cut")
        tail = data.draw(st.lists(TOKEN, max_size=3), label="tail")
        self.do_admit(([*tokens[:cut], *tail], salt), None, compute_last, True)

    def do_admit(
        self,
        prompt: tuple[list[int], str | None],
        window: SlidingWindow | None,
        compute_last: bool,
        commit: bool,
    ) -> None:
        mgr, bs = self.m, self.bs
        tokens, salt = prompt
        n = len(tokens)
        sid = self.new_id()
        max_hit = max(0, (n - 1) // bs) if compute_last else n // bs
        expected_hit = min(mgr.lookup_prefix(tokens, cache_salt=salt), max_hit * bs)
        free = mgr.num_free_blocks
        before = snapshot(mgr)
        try:
            hit = mgr.admit(
                sid, tokens, cache_salt=salt, sliding_window=window, compute_last_token=compute_last
            )
        except OutOfBlocksError as err:
            self.out_of_blocks(before, err, fits=-(-n // bs) <= free - self.wm)
            return
        assert hit == expected_hit
        self.model[sid] = ModelSeq(list(tokens), salt, window)
        self.flush_copies()
        self.write(sid, hit, mgr.slot_mapping(sid, hit, n))
        if commit:
            mgr.commit([sid])
        self.remember(tokens, salt)

    @precondition(lambda self: self.mgr is not None and len(self.model) + 2 <= MAX_SEQS)
    @rule(data=st.data(), compute_last=st.booleans(), commit=st.booleans())
    def admit_batch(self, data: st.DataObject, compute_last: bool, commit: bool) -> None:
        """Two prompts at once (same salt), all or nothing."""
        mgr, bs = self.m, self.bs
        (t1, salt), (t2, _) = self.draw_prompt(data), self.draw_prompt(data)
        ids = [self.new_id(), self.new_id()]
        free = mgr.num_free_blocks
        before = snapshot(mgr)
        try:
            hits = mgr.admit_batch(ids, [t1, t2], cache_salt=salt, compute_last_token=compute_last)
        except OutOfBlocksError as err:
            need = -(-len(t1) // bs) + -(-len(t2) // bs)
            self.out_of_blocks(before, err, fits=need <= free - self.wm)
            return
        for sid, toks, hit in zip(ids, (t1, t2), hits.tolist(), strict=True):
            assert hit % bs == 0
            self.model[sid] = ModelSeq(list(toks), salt, None)
            self.flush_copies()
            self.write(sid, hit, mgr.slot_mapping(sid, hit))
            self.remember(toks, salt)
        if commit:
            mgr.commit(ids)

    @precondition(lambda self: self.has_running())
    @rule(
        data=st.data(),
        new=st.lists(TOKEN, min_size=1, max_size=10),
        commit=st.booleans(),
        form=st.sampled_from(sorted(APPEND_FORMS)),
    )
    def append(self, data: st.DataObject, new: list[int], commit: bool, form: str) -> None:
        mgr, bs = self.m, self.bs
        sid = data.draw(st.sampled_from(self.running()), label="sid")
        if form == "int":  # the per-call decode form: one plain int (append's fast path)
            new = new[:1]
        n, k = mgr.num_tokens(sid), len(new)
        new_blocks = -(-(n + k) // bs) - -(-n // bs)
        free = mgr.num_free_blocks
        before = snapshot(mgr)
        try:
            slots = mgr.append(sid, APPEND_FORMS[form](new))
        except OutOfBlocksError as err:
            self.out_of_blocks(before, err, fits=new_blocks + 1 <= free)
            return
        self.model[sid].tokens += new
        assert slots.shape == (k,)
        assert slots[-1] >= 0, "the newest token must always get a real slot"
        assert slots.tolist() == mgr.slot_mapping(sid, n).tolist()
        self.flush_copies()
        self.write(sid, n, slots)
        if commit:
            mgr.commit([sid])

    @precondition(lambda self: self.has_running())
    @rule(data=st.data(), commit=st.booleans())
    def append_batch(self, data: st.DataObject, commit: bool) -> None:
        mgr = self.m
        ids = data.draw(
            st.lists(st.sampled_from(self.running()), min_size=1, unique=True), label="batch"
        )
        toks = data.draw(st.lists(TOKEN, min_size=len(ids), max_size=len(ids)), label="toks")
        starts = [mgr.num_tokens(s) for s in ids]
        free = mgr.num_free_blocks
        before = snapshot(mgr)
        try:
            slots = mgr.append_batch(ids, np.array(toks, dtype=np.int64))
        except OutOfBlocksError as err:
            self.out_of_blocks(before, err, fits=len(ids) <= free)
            return
        assert slots.shape == (len(ids),)
        assert (slots >= 0).all()
        assert len(set(slots.tolist())) == len(ids), "two sequences got the same slot"
        for sid, t in zip(ids, toks, strict=True):
            self.model[sid].tokens.append(t)
        self.flush_copies()
        for sid, n, slot in zip(ids, starts, slots, strict=True):
            self.write(sid, n, np.array([slot]))
        if commit:
            mgr.commit(ids)

    @precondition(lambda self: self.has_running() and self.room())
    @rule(data=st.data(), whole=st.booleans())
    def fork(self, data: st.DataObject, whole: bool) -> None:
        mgr = self.m
        parent = data.draw(st.sampled_from(self.running()), label="parent")
        ptoks = self.model[parent].tokens
        n = None if whole else data.draw(st.integers(0, len(ptoks)), label="n")
        child = self.new_id()
        free = mgr.num_free_blocks
        end = len(ptoks) if n is None else n
        if self.window_gap(mgr.block_table(parent), self.model[parent].window, end):
            # like truncate: the child would read a block the window released
            before = snapshot(mgr)
            with pytest.raises(InvalidArgumentError, match="sliding window"):
                mgr.fork(parent, child, n)
            self.unchanged(before)
            return
        mgr.fork(parent, child, n)
        assert mgr.num_free_blocks == free, "fork must not allocate"
        pm = self.model[parent]
        self.model[child] = ModelSeq(list(ptoks if n is None else ptoks[:n]), pm.salt, pm.window)
        self.flush_copies()

    @precondition(lambda self: self.mgr is not None and bool(self.model))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        sid = data.draw(st.sampled_from(sorted(self.model)), label="sid")
        self.m.free(sid)
        del self.model[sid]

    @precondition(lambda self: self.has_running())
    @rule(data=st.data())
    def truncate(self, data: st.DataObject) -> None:
        mgr, bs = self.m, self.bs
        sid = data.draw(st.sampled_from(self.running()), label="sid")
        n = mgr.num_tokens(sid)
        m = data.draw(st.integers(max(0, n - 3 * bs), n), label="m")
        table = mgr.block_table(sid)
        before = snapshot(mgr)
        if self.window_gap(table, self.model[sid].window, m):
            with pytest.raises(InvalidArgumentError, match="sliding window"):
                mgr.truncate(sid, m)
            self.unchanged(before)
            return
        mgr.truncate(sid, m)
        del self.model[sid].tokens[m:]
        assert mgr.block_table(sid) == table[: -(-m // bs)]

    @precondition(lambda self: self.mgr is not None)
    @rule(k=st.integers(0, 5))
    def evict_cached(self, k: int) -> None:
        mgr = self.m
        available, free = mgr.num_free_blocks, len(mgr.pool.free_stack)
        cached = len(mgr.prefix_cache.evictor)
        done = mgr.evict_cached(k)
        assert done == min(k, cached)  # exactly as many as asked (or all there are) ...
        assert len(mgr.pool.free_stack) == free + done  # ... and exactly as many as it reports
        assert len(mgr.prefix_cache.evictor) == cached - done
        assert mgr.num_free_blocks == available

    @precondition(lambda self: self.mgr is not None)
    @rule(usage=st.sampled_from([0.0, 0.25, 0.5, 0.8, 1.0]))
    def reclaim_to(self, usage: float) -> None:
        mgr = self.m
        available = mgr.num_free_blocks
        mgr.reclaim_to(usage)
        usable = mgr.config.num_usable_blocks
        occupied = usable - len(mgr.pool.free_stack)
        assert occupied <= int(usage * usable) or len(mgr.prefix_cache.evictor) == 0
        assert mgr.num_free_blocks == available

    @precondition(lambda self: self.has_running())
    @rule(data=st.data(), swap=st.booleans())
    def preempt(self, data: st.DataObject, swap: bool) -> None:
        mgr = self.m
        sid = data.draw(st.sampled_from(self.running()), label="sid")
        mode = "swap" if swap and mgr.config.num_host_blocks else "recompute"
        live = sum(b != 0 for b in mgr.block_table(sid))
        host_free = mgr.num_free_host_blocks
        before = snapshot(mgr)
        try:
            copies = mgr.preempt(sid, mode)
        except OutOfBlocksError as err:
            assert mode == "swap"
            self.out_of_blocks(before, err, fits=live <= host_free, exact=(live, host_free))
            return
        self.flush_copies()
        if mode == "recompute":
            assert copies == []
            assert sid not in mgr
            del self.model[sid]
            return
        assert len(copies) == live
        self.run_copies(copies, self.mem, self.host)
        self.model[sid].swapped = True
        assert mgr.seq(sid).status is SeqStatus.SWAPPED

    @precondition(lambda self: self.mgr is not None and bool(self.swapped()))
    @rule(data=st.data())
    def swap_in(self, data: st.DataObject) -> None:
        mgr = self.m
        sid = data.draw(st.sampled_from(self.swapped()), label="sid")
        live = sum(h >= 0 for h in mgr.seq(sid).host_table)
        free = mgr.num_free_blocks
        before = snapshot(mgr)
        try:
            copies = mgr.swap_in(sid)
        except OutOfBlocksError as err:
            self.out_of_blocks(before, err, fits=live <= free, exact=(live, free))
            return
        self.flush_copies()
        assert len(copies) == live
        self.run_copies(copies, self.host, self.mem)
        self.model[sid].swapped = False

    @precondition(lambda self: self.mgr is not None)
    @rule(data=st.data())
    def pin(self, data: st.DataObject) -> None:
        mgr = self.m
        tokens, salt = self.draw_prompt(data)
        expect = mgr.lookup_prefix(tokens, cache_salt=salt)
        pin = mgr.pin_prefix(tokens, cache_salt=salt)
        assert pin.num_tokens == expect == len(pin.block_ids) * self.bs
        for b in pin.block_ids:
            assert mgr.pool.ref_cnt[b] > 0
            assert mgr.prefix_cache.block_hash[b] is not None
        self.pins.append(ModelPin(pin, tokens, salt, list(pin.block_ids)))

    @precondition(lambda self: self.mgr is not None and bool(self.pins or self.stale_pins))
    @rule(data=st.data())
    def unpin(self, data: st.DataObject) -> None:
        mgr = self.m
        if self.stale_pins and data.draw(st.booleans(), label="stale"):
            pin = data.draw(st.sampled_from(self.stale_pins), label="pin")
            before = snapshot(mgr)
            with pytest.raises(InvalidArgumentError, match="not held"):
                mgr.unpin_prefix(pin)
            self.unchanged(before)
            return
        if not self.pins:
            return
        i = data.draw(st.integers(0, len(self.pins) - 1), label="i")
        mp = self.pins.pop(i)
        mgr.unpin_prefix(mp.pin)
        self.stale_pins.append(mp.pin)

    @precondition(lambda self: self.mgr is not None)
    @rule(really=st.integers(0, 3))
    def reset_prefix_cache(self, really: int) -> None:
        if really:  # keep resets rare enough for the cache to fill up
            return
        mgr = self.m
        mgr.reset_prefix_cache()
        assert not mgr.prefix_cache.cached
        assert len(mgr.prefix_cache.evictor) == 0
        self.stale_pins += [mp.pin for mp in self.pins]
        self.pins.clear()

    @precondition(lambda self: self.has_running())
    @rule(data=st.data())
    def register_prefix(self, data: st.DataObject) -> None:
        mgr = self.m
        sid = data.draw(st.sampled_from(self.running()), label="sid")
        n = data.draw(st.integers(0, mgr.num_tokens(sid)), label="n")
        got = mgr.register_prefix(sid, n)
        assert got % self.bs == 0
        assert got <= mgr.num_tokens(sid)
        assert mgr.num_computed(sid) >= n
        ms = self.model[sid]
        findable = mgr.lookup_prefix(ms.tokens, cache_salt=ms.salt)
        assert got == min(findable, mgr.num_computed(sid) // self.bs * self.bs), "untruthful"

    @precondition(lambda self: self.mgr is not None)
    @rule(k=st.integers(0, 6), policy=st.sampled_from(["priority", "lru", "longest", "newest"]))
    def select_victims(self, k: int, policy: str) -> None:
        mgr = self.m
        before = snapshot(mgr)
        victims = mgr.select_victims(k, policy)
        self.unchanged(before)
        assert len(set(victims)) == len(victims)
        assert set(victims) <= set(self.running())
        freed = sum(mgr.blocks_freed_by(v) for v in victims)
        assert freed >= k or set(victims) == set(self.running())

    # ------------------------------------------------------------------ invariants
    def record_hashes(self) -> None:
        """Remember the KV every full-block hash of a running sequence stands for."""
        mgr, bs = self.m, self.bs
        fn = mgr.prefix_cache.hasher.hash_fn
        for ms in self.model.values():
            if ms.swapped:
                continue
            full = len(ms.tokens) // bs
            hashes = chain_hashes(
                fn,
                root_hash(fn, ms.salt, None),
                token_bytes(as_token_array(ms.tokens)),
                bs * 8,
                full,
            )
            ids = identities(ms.tokens, ms.salt)
            for i, h in enumerate(hashes):
                self.known.setdefault(h, ids[i * bs : (i + 1) * bs])

    @invariant()
    def consistent(self) -> None:
        if self.mgr is None:
            return
        mgr, bs = self.m, self.bs
        mgr.check_integrity()
        assert sorted(mgr.seq_ids) == sorted(self.model)
        self.record_hashes()
        for sid, ms in self.model.items():
            seq = mgr.seq(sid)
            n = len(ms.tokens)
            assert mgr.num_tokens(sid) == n
            assert seq.tokens is not None
            assert list(seq.tokens) == ms.tokens
            ids = identities(ms.tokens, ms.salt)
            sink_blocks = 0 if ms.window is None else ms.window.first_droppable_block(bs)
            if ms.swapped:
                assert seq.status is SeqStatus.SWAPPED
                table, store = seq.host_table, self.host
                null = -1
            else:
                assert seq.status is SeqStatus.RUNNING
                table, store = mgr.block_table(sid), self.mem
                null = 0
                slots = mgr.slot_mapping(sid)
                pos = np.arange(n)
                blocks = np.asarray(table, dtype=np.int64)[pos // bs] if n else pos
                want = np.where(blocks == 0, -1, blocks * bs + pos % bs)
                assert slots.tolist() == want.tolist()
            assert len(table) == -(-n // bs)
            for i, b in enumerate(table):
                if b == null:
                    assert ms.window is not None, f"seq {sid}: block {i} released, no window"
                    assert i >= sink_blocks, f"seq {sid}: sink block {i} released"
                    assert i != len(table) - 1, f"seq {sid}: block of its last token released"
                    continue
                got = store[b][: min(bs, n - i * bs)]
                assert got == ids[i * bs : (i + 1) * bs], (
                    f"seq {sid} reads wrong KV in logical block {i} (physical {b})"
                )
        cap = mgr.config.max_cached_blocks
        assert cap is None or len(mgr.prefix_cache.cached) <= cap, "prefix cache above its cap"
        for h, b in mgr.prefix_cache.cached.items():
            assert h in self.known, f"block {b} cached under a hash no sequence produced"
            assert self.mem[b] == self.known[h], f"cached block {b} does not hold its KV"
        for mp in self.pins:
            ids = identities(mp.tokens, mp.salt)
            for i, b in enumerate(mp.blocks):
                assert mgr.pool.ref_cnt[b] > 0
                assert self.mem[b] == ids[i * bs : (i + 1) * bs], f"pinned block {b} changed"


def make_machine(policy: str) -> type[ManagerMachine]:
    return type(f"Machine_{policy}", (ManagerMachine,), {"POLICY": policy})


# Shrinking a failure of this machine can take minutes per parametrisation, so it is off by
# default (a failing run then stops at once and prints the unshrunk steps); set
# PAGEDKV_SHRINK=1 to get a minimal reproduction.
_PHASES = (
    tuple(Phase)
    if os.environ.get("PAGEDKV_SHRINK")
    else (Phase.explicit, Phase.reuse, Phase.generate)
)
SETTINGS = settings(
    max_examples=80,
    stateful_step_count=60,
    deadline=None,
    report_multiple_bugs=False,
    phases=_PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


@pytest.mark.parametrize("policy", sorted(EVICTION_POLICIES))
def test_block_manager_state_machine(policy: str) -> None:
    run_state_machine_as_test(make_machine(policy), settings=SETTINGS)


# ---------------------------------------------------------------------- fixed regressions
# Minimal reproductions of failures the machine above found, kept deterministic.
def _mgr(**kw: Any) -> BlockManager:
    return BlockManager(CacheConfig(**{"block_size": 2, "num_blocks": 10, **kw}))


def test_truncate_below_the_sinks_never_releases_a_sink_block() -> None:
    mgr = _mgr()
    mgr.admit("a", [1, 2, 3, 4, 5, 6], sliding_window=SlidingWindow(2, sink_tokens=2))
    mgr.append("a", [7])  # block 1 falls out of the window
    mgr.truncate("a", 0)
    mgr.append("a", [7, 8, 9, 10, 11, 12])
    assert mgr.block_table("a")[0] != 0, "the sink block was released"
    mgr.check_integrity()


def test_fork_below_the_sinks_never_releases_a_sink_block() -> None:
    mgr = _mgr()
    mgr.admit("a", [1, 2, 3, 4, 5, 6], sliding_window=SlidingWindow(2, sink_tokens=4))
    mgr.fork("a", "c", 1)
    mgr.append("c", [0] * 6)
    assert mgr.block_table("c")[:2].count(0) == 0, "a sink block was released"
    mgr.check_integrity()


def test_append_never_caches_a_block_whose_kv_it_told_the_caller_not_to_write() -> None:
    mgr = _mgr()
    mgr.admit("w", [100], sliding_window=SlidingWindow(1))
    slots = mgr.append("w", [0, 0])  # block 0 fills up; token 1 still reads itself
    assert (slots >= 0).all()  # every new token's KV is written this step ...
    assert mgr.block_table("w")[0] != 0  # ... so its block is not released yet
    mgr.commit(["w"])  # the step wrote it
    mgr.append("w", [7])  # the next step: block 0 is wholly behind every window now
    assert mgr.block_table("w")[0] == 0
    assert mgr.lookup_prefix([100, 0, 5]) == 2  # cached, and its KV was written
    mgr.check_integrity()


def test_no_copy_is_left_pending_into_a_block_the_window_released() -> None:
    mgr = _mgr(block_size=4)
    mgr.admit("p", [0, 0, 0], sliding_window=SlidingWindow(1))
    mgr.fork("p", "c")  # the partial block is shared: p's next write copies it
    mgr.append("p", [0, 2])  # ... and the same call slides the copy out of the window
    mgr.check_integrity()  # before take_copies: no pending copy may target a free block
    for _src, dst in mgr.take_copies():
        assert mgr.pool.ref_cnt[dst] > 0
