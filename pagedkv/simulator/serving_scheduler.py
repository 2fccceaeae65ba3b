"""The state machine behind :func:`~pagedkv.simulator.serving.replay`, one phase per method.

A replay's state (queues, per-request token counts, clock, counters) lives in one object so
that each phase of a step reads as its own short method and a test can drive the loop one
step at a time. The scheduling policy itself is described in :mod:`pagedkv.simulator.serving`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from pagedkv.simulator.costmodel import LinearCostModel
from pagedkv.simulator.trace import Trace

if TYPE_CHECKING:  # serving imports this module at run time
    from pagedkv.simulator.serving import MemoryBackend, SchedulerLimits

Chunk = tuple[int, int]  # (request, prompt tokens computed this step)
TIMELINE = ("t_ms", "allocated_tokens", "token_states", "running", "waiting")


class ReplayScheduler:
    """One replay of ``trace`` through ``backend``; :meth:`run` it once, then read the state.

    Requests are trace indices. A request is in exactly one of ``pending`` (not yet arrived,
    by arrival time), ``waiting`` (FCFS), ``prefilling`` (admitted, prompt partly computed:
    chunked prefill only), ``running`` (decoding), or none once finished or rejected.
    """

    def __init__(
        self, trace: Trace, backend: MemoryBackend, cost: LinearCostModel, limits: SchedulerLimits
    ) -> None:
        self.backend, self.cost, self.limits = backend, cost, limits
        reqs = trace.requests
        n = len(reqs)
        self.arrival = np.array([r.arrival_ms for r in reqs], dtype=np.float64)
        self.inp = [r.input_len for r in reqs]
        self.out = [max(1, r.output_len) for r in reqs]
        self.gen = [0] * n  # output tokens produced
        self.kv = [0] * n  # tokens of KV written (cached hit + computed)
        self.todo = [0] * n  # prompt tokens a prefilling request still has to compute
        self.first_sched = np.full(n, np.nan)
        self.first_tok = np.full(n, np.nan)
        self.finish = np.full(n, np.nan)
        self.pending = deque(sorted(range(len(trace)), key=lambda i: reqs[i].arrival_ms))
        self.waiting: deque[int] = deque()
        self.prefilling: list[int] = []
        self.running: list[int] = []
        self.rejected = self.preemptions = self.done = 0
        self.steps = self.hit_tokens = self.prefill_total = 0
        self.timeline: dict[str, list[float]] = {k: [] for k in TIMELINE}
        self.now = float(self.arrival[self.pending[0]]) if n else 0.0

    def run(self, progress: Callable[[int, int], None] | None = None) -> None:
        n = len(self.out)
        while self.pending or self.waiting or self.prefilling or self.running:
            if self.step() and progress is not None and self.steps % 256 == 0:
                progress(self.done + self.rejected, n)
        if progress is not None:
            progress(n, n)

    def step(self) -> bool:
        """One scheduler iteration; ``False`` when no batch could run (the clock may jump to
        the next arrival or the head of the queue be rejected instead)."""
        self._enqueue_arrivals()
        preempted = self._grow_decodes()
        chunks = self._schedule_prefill(admit=not preempted)  # like vLLM v0, none after preempting
        if not chunks and not self.running:
            self._idle(preempted)
            return False
        self._run_batch(chunks)
        self._account(chunks)
        self._record()
        return True

    def _enqueue_arrivals(self) -> None:
        if not self.waiting and not self.prefilling and not self.running and self.pending:
            self.now = max(self.now, float(self.arrival[self.pending[0]]))  # idle: skip ahead
        while self.pending and self.arrival[self.pending[0]] <= self.now:
            self.waiting.append(self.pending.popleft())

    def _grow_decodes(self) -> bool:
        """Make room for every running sequence's next token; the backend preempts (newest
        first, partly prefilled prompts included) when memory is short. ``True`` if it did."""
        victims = self.backend.grow(self.running, self.prefilling) if self.running else []
        if not victims:
            return False
        gone = set(victims)
        self.running = [r for r in self.running if r not in gone]
        self.prefilling = [r for r in self.prefilling if r not in gone]
        self.preemptions += len(victims)
        for v in sorted(victims, key=lambda v: -self.arrival[v]):  # oldest ends up first
            self.kv[v] = self.todo[v] = 0  # recompute: its KV is gone
            self.waiting.appendleft(v)
        return True

    def _schedule_prefill(self, admit: bool) -> list[Chunk]:
        """Prompts already being prefilled hold memory for their whole prompt, so they get the
        budget left after decode before anything new is admitted (vLLM v1's order)."""
        chunked = self.limits.chunked_prefill
        budget = self.limits.max_batched_tokens - (len(self.running) if chunked else 0)
        chunks: list[Chunk] = []
        for rid in self.prefilling:
            if budget <= 0:
                break
            chunks.append((rid, min(self.todo[rid], budget)))
            budget -= chunks[-1][1]
        if admit:
            chunks += self._admit_waiting(budget)
        return chunks

    def _admit_waiting(self, budget: int) -> list[Chunk]:
        """FCFS with head-of-line blocking, as in vLLM: when the head does not fit, nobody
        behind it is admitted. Memory for the whole prompt is taken here, even when chunked."""
        chunked = self.limits.chunked_prefill
        chunks: list[Chunk] = []
        while (
            self.waiting
            and (budget > 0 or not chunked)
            and len(self.running) + len(self.prefilling) < self.limits.max_num_seqs
        ):
            rid = self.waiting[0]
            ntok = self.inp[rid] + self.gen[rid]  # a preempted request recomputes its output
            if not chunked and chunks and ntok > budget:
                break  # a prompt over the budget may only run alone
            if not self.backend.fits_ever(rid, ntok):
                self._reject_head()
                continue
            hit = self.backend.admit(rid, ntok)
            if hit is None:
                break
            self.waiting.popleft()
            self.prefilling.append(rid)
            self.hit_tokens += hit
            self.kv[rid] = hit
            self.todo[rid] = ntok - hit
            chunks.append((rid, min(self.todo[rid], budget) if chunked else self.todo[rid]))
            budget -= chunks[-1][1] if chunked else ntok
            if np.isnan(self.first_sched[rid]):
                self.first_sched[rid] = self.now
        return chunks

    def _idle(self, preempted: bool) -> None:
        if preempted:  # everything was preempted: memory is free again, admit next step
            return
        if self.pending:
            self.now = max(self.now, float(self.arrival[self.pending[0]]))
        elif self.waiting:  # nothing runs and the head cannot be admitted: it never will be
            self._reject_head()

    def _reject_head(self) -> None:
        self.waiting.popleft()
        self.rejected += 1

    def _run_batch(self, chunks: list[Chunk]) -> None:
        """The step's KV becomes reusable by others only once the step has run, and must be
        committed before finished requests free it."""
        prefill = sum(c for _, c in chunks)
        self.now += self.cost.step_ms(prefill, len(self.running))
        self.prefill_total += prefill
        self.steps += 1
        self.backend.commit(
            [(rid, self.kv[rid] + 1) for rid in self.running]
            + [(rid, self.kv[rid] + c) for rid, c in chunks]
        )

    def _account(self, chunks: list[Chunk]) -> None:
        """Credit the tokens the batch produced; a prompt's last chunk yields its first
        output token, so it decodes from the next step on."""
        still: list[int] = []
        for rid in self.running:
            self.kv[rid] += 1
            if self._emit_token(rid):
                still.append(rid)
        for rid, c in chunks:
            self.todo[rid] -= c
            self.kv[rid] += c
            if self.todo[rid]:
                continue
            if np.isnan(self.first_tok[rid]):
                self.first_tok[rid] = self.now
            if self._emit_token(rid):
                still.append(rid)
        self.running = still
        self.prefilling = [r for r in self.prefilling if self.todo[r]]

    def _emit_token(self, rid: int) -> bool:
        """``True`` while the request has more tokens to produce; else it is finished."""
        self.gen[rid] += 1
        if self.gen[rid] < self.out[rid]:
            return True
        self.finish[rid] = self.now
        self.backend.free(rid)
        self.done += 1
        return False

    def _record(self) -> None:
        """Token states count shared prefix memory once, so they never exceed allocation."""
        live = self.running + self.prefilling
        tl = self.timeline
        tl["t_ms"].append(self.now)
        tl["allocated_tokens"].append(self.backend.allocated_tokens())
        tl["token_states"].append(sum(self.kv[r] for r in live) - self.backend.shared_tokens())
        tl["running"].append(len(live))
        tl["waiting"].append(len(self.waiting))

    def timeline_arrays(self) -> dict[str, np.ndarray]:
        return {k: np.array(v) for k, v in self.timeline.items()}
