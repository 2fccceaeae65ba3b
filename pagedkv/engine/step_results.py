"""What one forward's results do to the step's sequences: computed tokens, forks, samples.

After :meth:`EngineCore.step`'s executor ran and the scheduler committed the step, in this order:

1. every scheduled sequence's new tokens count as computed (blocks that became full are written
   through to the KV tiers); those that computed their last pending token get a row to sample;
2. the first time sample 0 of an ``n > 1`` request completes its prompt, samples ``1..n-1`` are
   forked from it: they share its blocks (copy-on-write) and sample from its logits row;
3. each of those sequences samples one token and runs the stop checks; a finished sample leaves
   the scheduler at once (its full blocks stay cached). A sampling error fails only its request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeAlias

from pagedkv.engine.output_processor import OutputProcessor
from pagedkv.engine.request import EngineSeq, Request
from pagedkv.engine.sample_types import Sampled, SampleRow
from pagedkv.engine.scheduler import Scheduler
from pagedkv.engine.scheduler_output import ScheduledSeq

if TYPE_CHECKING:
    from pagedkv.engine.tiering import EngineTiers

log = logging.getLogger("pagedkv.engine")

# (row of the step's logits, sequence that samples from it)
Target: TypeAlias = tuple[int, EngineSeq]


def mark_computed(
    scheduled: list[ScheduledSeq], tiers: EngineTiers | None, totals: dict[str, float]
) -> list[Target]:
    """Count the step's tokens as computed (``totals["computed_tokens"]``; the scheduler
    already moved each ``num_computed``); returns the sequences that computed their last
    pending token, with their row of the step."""
    targets: list[Target] = []
    for i, s in enumerate(scheduled):
        if tiers is not None:
            tiers.store_new(s.seq.seq_id, s.start, s.start + s.num_tokens)
        totals["computed_tokens"] += s.num_tokens
        if s.completes:
            targets.append((i, s.seq))
    return targets


def fork_samples(targets: list[Target], scheduler: Scheduler) -> list[Target]:
    """Fork samples ``1..n-1`` of each ``n > 1`` request whose sample 0 just completed its
    prompt (first time only); returns them with their parent's logits row."""
    forks: list[Target] = []
    for i, seq in targets:
        req = seq.request
        if seq.index == 0 and req.params.n > 1 and not req.forked:
            forks.extend((i, child) for child in _fork(seq, scheduler))
    return forks


def _fork(parent: EngineSeq, scheduler: Scheduler) -> list[EngineSeq]:
    """Samples 1..n-1 share sample 0's computed prompt (copy-on-write)."""
    req = parent.request
    req.forked = True
    children = []
    for k in range(1, req.params.n):
        child = EngineSeq(req, k, list(parent.tokens), parent.num_computed)
        scheduler.fork(parent, child)
        req.seqs.append(child)
        children.append(child)
    return children


def sample_targets(
    targets: list[Target],
    draw: Callable[[int, SampleRow], Sampled],
    touched: dict[str, Request],
    *,
    clock: Callable[[], float],
    output_processor: OutputProcessor,
    scheduler: Scheduler,
    totals: dict[str, float],
    fail: Callable[[Request, BaseException], None],
) -> None:
    """Draw one token for each target from its row of the step (``draw``, the executor's),
    detokenise and check stops; record every target's request in ``touched``. A sequence that
    finishes leaves ``scheduler``; a sampling error calls ``fail`` for that request only.
    ``clock``: the engine's; read once every target has its token, as the first token's time
    of the requests that got their first one (read before sampling, a 16-sequence step's real
    TTFT left out the 16 ms it then spent sampling, which a simulated step charges)."""
    firsts: list[Request] = []
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
            output_processor.add_token(seq, draw(i, row))
        except Exception as exc:
            log.exception("sampling failed for request %s", req.request_id)
            fail(req, exc)
            continue
        totals["generation_tokens"] += 1
        if req.metrics.first_token_time is None:
            firsts.append(req)
        if seq.output.finish_reason is not None:
            scheduler.remove(seq)
    if firsts:
        now = clock()
        for req in firsts:
            req.metrics.first_token_time = now
