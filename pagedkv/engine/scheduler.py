"""Continuous batching: which sequences compute how many tokens in the next step.

One step, in vLLM v1's order, under ``max_num_batched_tokens`` and ``max_num_seqs``::

    1. running sequences, highest priority first: each gets min(tokens left, budget) new
       slots (a decode needs 1, a chunked prompt a chunk). If the pool is dry, preempt the
       lowest-priority running sequence (the tail) and retry; if that is the sequence itself,
       stop.
    2. no preemption this step? then swapped sequences come back (if they fit above the
       watermark), then waiting ones are admitted: prefix-cache hit first, then a chunk of
       the rest (the whole rest without chunked prefill), while blocks above the watermark
       allow.

Blocks are allocated only for the tokens computed in this step (chunk by chunk), so a long
prompt never holds memory it has not reached. The scheduler owns the queues; the block manager
and storage belong to the :class:`PagedModelRunner` it drives.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Hashable
from dataclasses import dataclass

from pagedkv.core import HashedPrompt
from pagedkv.core.preemption import PREEMPTION_POLICIES
from pagedkv.engine.config import EngineConfig
from pagedkv.engine.request import EngineSeq, SchedulingState
from pagedkv.engine.tiering import EngineTiers
from pagedkv.errors import OutOfBlocksError
from pagedkv.integrations.hf_runner import PagedModelRunner


@dataclass
class ScheduledSeq:
    seq: EngineSeq
    num_tokens: int  # tokens whose KV this step computes

    @property
    def completes(self) -> bool:
        """Whether this step computes the sequence's last pending token (so it samples)."""
        return self.num_tokens == self.seq.num_remaining


class Scheduler:
    def __init__(
        self,
        runner: PagedModelRunner,
        config: EngineConfig,
        token_budget: int,
        tiers: EngineTiers | None = None,
    ) -> None:
        self.runner = runner
        self.tiers = tiers
        self.manager = runner.manager
        self.config = config
        self.token_budget = token_budget
        self.waiting: list[EngineSeq] = []
        self.running: list[EngineSeq] = []
        self.swapped: list[EngineSeq] = []
        self.num_preemptions = 0
        # Prefix cache at admission, in tokens: prompt (+ output, after recompute) looked up,
        # and found cached.
        self.prefix_query_tokens = 0
        self.prefix_hit_tokens = 0
        self.tier_hit_tokens = 0  # loaded from the KV tiers at admission
        self._watermark = int(config.watermark * self.manager.config.num_usable_blocks)

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
            self.runner.free(seq.seq_id)
        seq.state = SchedulingState.FINISHED

    def has_work(self) -> bool:
        return bool(self.waiting or self.running or self.swapped)

    # ----------------------------------------------------------- schedule
    def schedule(self) -> list[ScheduledSeq]:
        budget = self.token_budget
        out: list[ScheduledSeq] = []
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_remaining, budget)
            grown, victims = self._grow(seq, n, i)
            preempted |= victims > 0
            if not grown:
                break
            out.append(ScheduledSeq(seq, n))
            budget -= n
            i += 1
        if not preempted:
            budget = self._swap_in(out, budget)
            self._admit_waiting(out, budget)
        return out

    def _grow(self, seq: EngineSeq, n: int, index: int) -> tuple[bool, int]:
        """Allocate slots for ``n`` more tokens of ``seq`` (``running[index]``), preempting a
        sequence not yet scheduled this step while the pool is dry. Returns (allocated,
        preemptions)."""
        victims = 0
        start = seq.num_computed
        while True:
            try:
                self.runner.append(seq.seq_id, seq.tokens[start : start + n])
                return True, victims
            except OutOfBlocksError:
                victim = self._victim(index)
                self._preempt(victim)
                victims += 1
                if victim is seq:
                    return False, victims

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
            self.runner.storage.swap_out(mgr.preempt(seq.seq_id, "swap"))
            seq.state = SchedulingState.SWAPPED
            bisect.insort(self.swapped, seq, key=EngineSeq.sort_key)
        else:
            mgr.preempt(seq.seq_id, "recompute")
            seq.num_computed = 0
            self.add(seq)
        seq.request.metrics.num_preemptions += 1
        self.num_preemptions += 1

    def _swap_in(self, out: list[ScheduledSeq], budget: int) -> int:
        mgr = self.manager
        while self.swapped and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.swapped[0]
            n = min(seq.num_remaining, budget)
            table = mgr.seq(seq.seq_id).host_table
            held = sum(1 for h in table if h >= 0)
            # + exact growth; no CoW slack: swapped-in blocks are fresh and private (a +1 here
            # could exceed the whole pool and leave the sequence swapped out forever)
            need = held + -(-(seq.num_computed + n) // mgr.block_size) - len(table)
            if need > mgr.num_free_blocks - self._watermark:
                break
            self.runner.storage.swap_in(mgr.swap_in(seq.seq_id))
            self.swapped.pop(0)
            self.add_running(seq)
            self.runner.append(seq.seq_id, seq.tokens[seq.num_computed : seq.num_computed + n])
            out.append(ScheduledSeq(seq, n))
            budget -= n
        return budget

    def _admit_waiting(self, out: list[ScheduledSeq], budget: int) -> None:
        mgr, bs = self.manager, self.manager.block_size
        chunked = self.config.enable_chunked_prefill
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            req = seq.request
            forks = req.params.n - 1 if (seq.index == 0 and not req.forked) else 0
            owed = sum(
                s.request.params.n - 1
                for s in self.running  # forks still to come
                if s.index == 0 and not s.request.forked
            )
            if self.running and len(self.running) + owed + 1 + forks > self.config.max_num_seqs:
                break
            hashed = self._hashed(seq)
            cached = 0 if hashed is None else mgr.lookup_prefix(hashed)
            cap = (len(seq.tokens) - 1) // bs * bs  # the last token is always computed
            hit = min(cached, cap)
            in_tiers = 0
            if self.tiers is not None and hashed is not None and hit < cap:
                in_tiers = self.tiers.lookup(hashed.hashes, hit // bs, cap // bs)
            start = hit + in_tiers * bs
            n = min(len(seq.tokens) - start, budget)
            if not chunked and n < len(seq.tokens) - start:
                break
            try:
                if hashed is None:
                    got = self.runner.admit(
                        seq.seq_id,
                        seq.tokens[: start + n],
                        cache_salt=req.cache_salt,
                        priority=req.priority,
                    )
                else:
                    got = self.runner.admit(
                        seq.seq_id, hashed.prefix(start + n), priority=req.priority
                    )
            except OutOfBlocksError:
                break
            self.waiting.pop(0)
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
                req.metrics.first_scheduled_time = time.monotonic()
                req.metrics.num_cached_tokens = seq.num_computed
            out.append(ScheduledSeq(seq, n))
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
