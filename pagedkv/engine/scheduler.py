"""Continuous batching: which sequences compute how many tokens in the next step.

One step, in vLLM v1's order, under ``max_num_batched_tokens`` and ``max_num_seqs``::

    1. running sequences, highest priority first: each gets min(tokens left, budget) new
       slots (a decode needs 1, a chunked prompt a chunk). If the pool is dry, preempt the
       lowest-priority running sequence (the tail) and retry; if that is the sequence itself,
       stop.
    2. no preemption this step? then swapped sequences come back (if they fit above the
       watermark), then waiting ones are admitted: prefix-cache hit first, then a chunk of
       the rest (the whole rest without chunked prefill), while blocks above the watermark
       allow. A prompt whose next block another sequence computes in this step waits a step
       to find it cached (:mod:`pagedkv.engine.step_prefix`).

Blocks are allocated only for the tokens computed in this step (chunk by chunk), so a long
prompt never holds memory it has not reached. Decodes take one batched ``append_batch`` when
the pool has room for all of them (the common step), else one ``append`` each with preemption.

The scheduler owns the queues and touches only the block manager: :meth:`Scheduler.schedule`
returns a :class:`SchedulerOutput` (what to compute, block tables, slots, swaps, copies) that an
executor runs (the model, or the simulator's cost model), and :meth:`Scheduler.update` commits
what the step computed. The one exception is the KV-tier connector, which loads blocks from the
tiers into a sequence's fresh blocks at admission (as vLLM's scheduler-side KV connector
decides, and only in a step that preempted nothing, so no swap-out of this step reads them).
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Hashable, Sequence
from typing import Protocol

import numpy as np

from pagedkv.core import BlockManager, HashedPrompt, SlidingWindow
from pagedkv.core.preemption import PREEMPTION_POLICIES
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.request import EngineSeq, SchedulingState
from pagedkv.engine.scheduler_output import ScheduledSeq, SchedulerOutput
from pagedkv.engine.step_prefix import StepBlocks
from pagedkv.errors import OutOfBlocksError

__all__ = ["KVConnector", "ScheduledSeq", "Scheduler", "SchedulerOutput"]


class KVConnector(Protocol):
    """The scheduler's view of the KV tiers (``pagedkv.engine.tiering.EngineTiers``)."""

    def lookup(self, hashes: Sequence[bytes], first: int, last: int) -> int:
        """Leading run of blocks ``first..last-1`` the tiers hold."""

    def load(self, seq_id: Hashable, hashes: Sequence[bytes], first: int, count: int) -> int:
        """Load blocks ``[first, first + count)`` into the sequence's blocks and register them
        (``register_prefix``); returns how many loaded."""


def _owed(s: EngineSeq) -> int:
    """Samples still to be forked from ``s`` (``n - 1`` until sample 0's prompt is computed)."""
    return s.request.params.n - 1 if s.index == 0 and not s.request.forked else 0


class Scheduler:
    """Queues and the per-step plan over one :class:`BlockManager`.

    ``sliding_window``: the window every admitted sequence keeps (the model's, when all its
    layers slide); ``clock``: the engine's clock (``time.monotonic``, or a simulated one)."""

    def __init__(
        self,
        manager: BlockManager,
        config: EngineConfig,
        token_budget: int,
        tiers: KVConnector | None = None,
        *,
        sliding_window: SlidingWindow | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tiers = tiers
        self.manager = manager
        self.config = config
        self.token_budget = token_budget
        self.sliding_window = sliding_window
        self.clock = clock
        self.waiting: list[EngineSeq] = []
        self.running: list[EngineSeq] = []
        self.swapped: list[EngineSeq] = []
        self.num_preemptions = 0
        # Prefix cache at admission, in tokens: prompt (+ output, after recompute) looked up,
        # and found cached.
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.tier_hit_tokens = 0  # loaded from the KV tiers at admission
        self._watermark = config.watermark_blocks(self.manager.config.num_usable_blocks)
        # Filled while scheduling a step, handed over in its SchedulerOutput.
        self._swap_out: list[tuple[int, int]] = []
        self._swap_in: list[tuple[int, int]] = []
        self._preempted: list[Hashable] = []

    # ------------------------------------------------------------- queues
    def add(self, seq: EngineSeq) -> None:
        seq.state = SchedulingState.WAITING
        bisect.insort(self.waiting, seq, key=EngineSeq.sort_key)

    def add_running(self, seq: EngineSeq) -> None:
        """A sequence forked from a running one (already in the manager)."""
        seq.state = SchedulingState.RUNNING
        bisect.insort(self.running, seq, key=EngineSeq.sort_key)

    def remove(self, seq: EngineSeq) -> None:
        """Take a sequence out of every queue and release its blocks (finish or abort)."""
        for queue in (self.waiting, self.running, self.swapped):
            if seq in queue:
                queue.remove(seq)
        if seq.seq_id in self.manager:
            self.manager.free(seq.seq_id)
        seq.state = SchedulingState.FINISHED

    def fork(self, parent: EngineSeq, child: EngineSeq) -> None:
        """``child`` shares ``parent``'s computed blocks (copy-on-write) and runs from now on."""
        self.manager.fork(parent.seq_id, child.seq_id)
        self.add_running(child)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ----------------------------------------------------------- schedule
    def schedule(self) -> SchedulerOutput:
        """Plan the next step (allocating its slots, preempting if the pool is dry)."""
        self._swap_out, self._swap_in, self._preempted = [], [], []
        out: list[ScheduledSeq] = []
        budget = self._schedule_running(out)
        if not self._preempted:
            budget = self._swap_in_seqs(out, budget)
            self._admit_waiting(out, budget)
        return self._output(out)

    def _schedule_running(self, out: list[ScheduledSeq]) -> int:
        """Running sequences in order, each ``min(tokens left, budget)``; returns the budget
        left. When every one of them decodes one token, one ``append_batch`` allocates them
        all (it changes nothing if the pool is short; the per-sequence loop then preempts)."""
        budget = self.token_budget
        plan: list[tuple[EngineSeq, int]] = []
        for seq in self.running:
            if budget <= 0:
                break
            n = min(seq.num_remaining, budget)
            plan.append((seq, n))
            budget -= n
        if plan and all(n == 1 for _, n in plan):
            seqs = [seq for seq, _ in plan]
            try:
                self.manager.append_batch(
                    [s.seq_id for s in seqs], [s.tokens[s.num_computed] for s in seqs]
                )
            except OutOfBlocksError:
                pass
            else:
                out.extend(ScheduledSeq(s, 1, s.num_computed) for s in seqs)
                return budget
        budget = self.token_budget
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_remaining, budget)
            if not self._grow(seq, n, i):
                break
            out.append(ScheduledSeq(seq, n, seq.num_computed))
            budget -= n
            i += 1
        return budget

    def _output(self, scheduled: list[ScheduledSeq]) -> SchedulerOutput:
        mgr = self.manager
        ids = [s.seq.seq_id for s in scheduled]
        slots = [mgr.slot_mapping(s.seq.seq_id, s.start, s.start + s.num_tokens) for s in scheduled]
        return SchedulerOutput(
            scheduled,
            block_tables=mgr.block_table_array(ids) if ids else np.zeros((0, 0), np.int32),
            slot_mapping=np.concatenate(slots) if slots else np.zeros(0, np.int64),
            swap_out=self._swap_out,
            swap_in=self._swap_in,
            copies=mgr.take_copies(),
            preempted=self._preempted,
        )

    def update(self, output: SchedulerOutput) -> None:
        """The step ran: its tokens' KV is written. Counts them computed and reports them to
        the manager, so their full blocks become findable by other prompts (``commit``)."""
        for s in output.scheduled:
            s.seq.num_computed = s.start + s.num_tokens
        self.manager.commit(output.seq_ids)

    def _grow(self, seq: EngineSeq, n: int, index: int) -> bool:
        """Allocate slots for ``n`` more tokens of ``seq`` (``running[index]``), preempting a
        sequence not yet scheduled this step while the pool is dry. False if ``seq`` itself
        was preempted."""
        start = seq.num_computed
        while True:
            try:
                self.manager.append(seq.seq_id, seq.tokens[start : start + n])
                return True
            except OutOfBlocksError:
                victim = self._victim(index)
                self._preempt(victim)
                if victim is seq:
                    return False

    def _victim(self, index: int) -> EngineSeq:
        """The sequence to preempt among ``running[index:]`` (those not scheduled yet this
        step): the tail of the scheduling order (lowest priority, newest), or the first by the
        manager's ``preemption_policy`` (``lru``, ``longest``, ...) when one is configured."""
        policy = self.config.preemption_policy
        if policy is None:
            return self.running[-1]
        by_id: dict[Hashable, EngineSeq] = {s.seq_id: s for s in self.running[index:]}
        order = PREEMPTION_POLICIES[policy]([self.manager.seq(sid) for sid in by_id])
        return by_id[order[0].seq_id]

    def _preempt(self, seq: EngineSeq) -> None:
        self.running.remove(seq)
        mgr = self.manager
        live = sum(1 for b in mgr.seq(seq.seq_id).block_table if b != mgr.null_block_id)
        if self.config.preemption_mode == "swap" and live <= mgr.num_free_host_blocks:
            self._swap_out.extend(mgr.preempt(seq.seq_id, "swap"))
            seq.state = SchedulingState.SWAPPED
            bisect.insort(self.swapped, seq, key=EngineSeq.sort_key)
        else:
            mgr.preempt(seq.seq_id, "recompute")
            seq.num_computed = 0
            self.add(seq)
        seq.request.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self._preempted.append(seq.seq_id)

    def _has_seat_for(self, seq: EngineSeq, reserved: int = 0) -> bool:
        """Whether ``seq`` may join ``running`` under ``max_num_seqs``, counting the samples
        still to be forked (``n > 1`` requests fork once sample 0's prompt is computed): those
        of the running sequences and ``seq``'s own, and ``reserved`` seats (of waiting prompts
        ahead of it that wait for a shared block). A lone sequence always may."""
        if not self.running:
            return True
        pending = sum(_owed(s) for s in self.running) + reserved
        return len(self.running) + pending + 1 + _owed(seq) <= self.config.max_num_seqs

    def _swap_in_seqs(self, out: list[ScheduledSeq], budget: int) -> int:
        mgr = self.manager
        while self.swapped and budget > 0 and self._has_seat_for(self.swapped[0]):
            seq = self.swapped[0]
            n = min(seq.num_remaining, budget)
            table = mgr.seq(seq.seq_id).host_table
            held = sum(1 for h in table if h >= 0)
            # + exact growth; no CoW slack: swapped-in blocks are fresh and private (a +1 here
            # could exceed the whole pool and leave the sequence swapped out forever)
            need = held + -(-(seq.num_computed + n) // mgr.block_size) - len(table)
            if need > mgr.num_free_blocks - self._watermark:
                break
            self._swap_in.extend(mgr.swap_in(seq.seq_id))
            self.swapped.pop(0)
            self.add_running(seq)
            mgr.append(seq.seq_id, seq.tokens[seq.num_computed : seq.num_computed + n])
            out.append(ScheduledSeq(seq, n, seq.num_computed))
            budget -= n
        return budget

    def _admit_waiting(self, out: list[ScheduledSeq], budget: int) -> None:
        mgr, bs = self.manager, self.manager.block_size
        chunked = self.config.enable_chunked_prefill
        waits = self.waiting and mgr.config.enable_prefix_caching
        step_blocks = StepBlocks(bs, out) if waits else None
        i = seats = 0  # waiting[:i] wait for blocks this step computes; they hold `seats`
        while i < len(self.waiting) and budget > 0 and self._has_seat_for(self.waiting[i], seats):
            seq = self.waiting[i]
            req = seq.request
            hashed = self._hashed(seq)
            cached = 0 if hashed is None else mgr.lookup_prefix(hashed)
            cap = (len(seq.tokens) - 1) // bs * bs  # the last token is always computed
            hit = min(cached, cap)
            in_tiers = 0
            if self.tiers is not None and hashed is not None and hit < cap:
                in_tiers = self.tiers.lookup(hashed.hashes, hit // bs, cap // bs)
            start = hit + in_tiers * bs
            if (
                not in_tiers
                and step_blocks is not None
                and step_blocks.computes_next_block_of(hashed, hit, cap)
            ):
                i, seats = i + 1, seats + 1 + _owed(seq)
                continue
            n = min(len(seq.tokens) - start, budget)
            # Without chunked prefill a prompt runs whole. Behind a prompt that waits, only one
            # this step completes: a chunked one would take budget ahead of it in later steps.
            if n < len(seq.tokens) - start and (not chunked or i > 0):
                break
            try:
                # the salt is in a HashedPrompt's hashes (the manager refuses a second one)
                got = mgr.admit(
                    seq.seq_id,
                    seq.tokens[: start + n] if hashed is None else hashed.prefix(start + n),
                    cache_salt=req.cache_salt if hashed is None else None,
                    priority=req.priority,
                    sliding_window=self.sliding_window,
                    # not into blocks the tiers load below (the copy would overwrite them)
                    partial_block_hit=self.config.enable_partial_block_hits and not in_tiers,
                )
            except OutOfBlocksError:
                break
            self.waiting.pop(i)
            loaded = 0
            if in_tiers and self.tiers is not None and hashed is not None:
                loaded = self.tiers.load(seq.seq_id, hashed.hashes, got // bs, in_tiers) * bs
            seq.num_computed = got + loaded
            n = start + n - seq.num_computed
            self.prefix_query_tokens += len(seq.tokens)
            self.prefix_hit_tokens += got
            self.tier_hit_tokens += loaded
            self.add_running(seq)
            if req.metrics.first_scheduled_time is None:
                req.metrics.first_scheduled_time = self.clock()
                req.metrics.num_cached_tokens = seq.num_computed
            out.append(ScheduledSeq(seq, n, seq.num_computed))
            if step_blocks is not None:
                step_blocks.add(hashed, seq.num_computed, n)
            budget -= n

    def _hashed(self, seq: EngineSeq) -> HashedPrompt | None:
        """``seq.tokens`` hashed, once per length (vLLM keeps block hashes on the request);
        None when nothing would use the hashes (no prefix cache, no KV tiers)."""
        if self.tiers is None and not self.manager.config.enable_prefix_caching:
            return None
        if seq.hashed is None or len(seq.hashed) != len(seq.tokens):
            seq.hashed = self.manager.hash_prompt(seq.tokens, cache_salt=seq.request.cache_salt)
        return seq.hashed

    # ---------------------------------------------------------- integrity
    def check_integrity(self) -> None:
        """Queues disjoint and sorted; exactly the running and swapped sequences are in the
        manager, with their computed tokens allocated; waiting ones hold no blocks."""
        mgr = self.manager
        ids = [s.seq_id for q in (self.waiting, self.running, self.swapped) for s in q]
        assert len(ids) == len(set(ids)), "a sequence is queued twice"
        for queue, state in (
            (self.waiting, SchedulingState.WAITING),
            (self.running, SchedulingState.RUNNING),
            (self.swapped, SchedulingState.SWAPPED),
        ):
            keys = [s.sort_key() for s in queue]
            assert keys == sorted(keys), f"{state.value} queue out of order"
            for s in queue:
                assert s.state is state, f"{s.seq_id} is {s.state} in the {state.value} queue"
        live = {s.seq_id for s in self.running} | {s.seq_id for s in self.swapped}
        assert set(mgr.seq_ids) == live, (
            f"manager holds {sorted(map(str, mgr.seq_ids))}, queues {sorted(map(str, live))}"
        )
        for s in self.running + self.swapped:
            assert mgr.num_tokens(s.seq_id) == s.num_computed, (
                f"{s.seq_id}: manager has {mgr.num_tokens(s.seq_id)} tokens, "
                f"{s.num_computed} computed"
            )
            assert s.num_remaining >= 1, f"{s.seq_id} is running with nothing to compute"
