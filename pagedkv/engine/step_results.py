"""What one forward's results do to the step's sequences: computed tokens, forks, samples.

After :meth:`LLMEngine.step`'s packed forward, in this order:

1. every scheduled sequence's new tokens count as computed (blocks that became full are written
   through to the KV tiers); those that computed their last pending token get a logits row;
2. the first time sample 0 of an ``n > 1`` request completes its prompt, samples ``1..n-1`` are
   forked from it: they share its blocks (copy-on-write) and sample from its logits row;
3. each of those sequences samples one token and runs the stop checks; a finished sample leaves
   the scheduler at once (its full blocks stay cached). A sampling error fails only its request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeAlias

import torch

from pagedkv.engine.output_processor import OutputProcessor
from pagedkv.engine.request import EngineSeq, Request
from pagedkv.engine.sampler import SampleRow, sample
from pagedkv.engine.scheduler import ScheduledSeq, Scheduler
from pagedkv.engine.tiering import EngineTiers
from pagedkv.integrations.hf_runner import PagedModelRunner

log = logging.getLogger("pagedkv.engine")

# (row of the step's logits, sequence that samples from it)
Target: TypeAlias = tuple[int, EngineSeq]


def mark_computed(
    scheduled: list[ScheduledSeq], tiers: EngineTiers | None, totals: dict[str, float]
) -> list[Target]:
    """Count the step's tokens as computed (``totals["computed_tokens"]``); returns the
    sequences that computed their last pending token, with their row of the step's logits."""
    targets: list[Target] = []
    for i, s in enumerate(scheduled):
        completes = s.completes
        before = s.seq.num_computed
        s.seq.num_computed += s.num_tokens
        if tiers is not None:
            tiers.store_new(s.seq.seq_id, before, s.seq.num_computed)
        totals["computed_tokens"] += s.num_tokens
        if completes:
            targets.append((i, s.seq))
    return targets


def fork_samples(
    targets: list[Target], runner: PagedModelRunner, scheduler: Scheduler
) -> list[Target]:
    """Fork samples ``1..n-1`` of each ``n > 1`` request whose sample 0 just completed its
    prompt (first time only); returns them with their parent's logits row."""
    forks: list[Target] = []
    for i, seq in targets:
        req = seq.request
        if seq.index == 0 and req.params.n > 1 and not req.forked:
            forks.extend((i, child) for child in _fork(seq, runner, scheduler))
    return forks


def _fork(parent: EngineSeq, runner: PagedModelRunner, scheduler: Scheduler) -> list[EngineSeq]:
    """Samples 1..n-1 share sample 0's computed prompt (copy-on-write)."""
    req = parent.request
    req.forked = True
    children = []
    for k in range(1, req.params.n):
        child = EngineSeq(req, k, list(parent.tokens), parent.num_computed)
        runner.fork(parent.seq_id, child.seq_id)
        req.seqs.append(child)
        scheduler.add_running(child)
        children.append(child)
    return children


def sample_targets(
    targets: list[Target],
    logits: torch.Tensor,
    touched: dict[str, Request],
    *,
    output_processor: OutputProcessor,
    scheduler: Scheduler,
    totals: dict[str, float],
    fail: Callable[[Request, BaseException], None],
) -> None:
    """Sample one token for each target from its row of ``logits`` (float ``[B, vocab]``),
    detokenise and check stops; record every target's request in ``touched``. A sequence that
    finishes leaves ``scheduler``; a sampling error calls ``fail`` for that request only."""
    now = time.monotonic()
    for i, seq in targets:
        req = seq.request
        touched[req.request_id] = req
        if req.error is not None:
            continue
        try:
            row = SampleRow(
                req.params,
                req.seed,
                seq.index,
                req.prompt_token_ids,
                seq.output_ids,
                output_processor.suppressed_ids(seq),
            )
            output_processor.add_token(seq, sample(logits[i : i + 1], [row])[0])
        except Exception as exc:
            log.exception("sampling failed for request %s", req.request_id)
            fail(req, exc)
            continue
        totals["generation_tokens"] += 1
        if req.metrics.first_token_time is None:
            req.metrics.first_token_time = now
        if seq.output.finish_reason is not None:
            scheduler.remove(seq)
