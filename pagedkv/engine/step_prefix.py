"""The prompt blocks one step computes, so that a waiting prompt sharing them waits a step.

Why: a block becomes findable in the prefix cache only when its K/V is written (the manager's
``commit`` after the step), so that no sequence ever reads a block before it is filled. Two
prompts with the same new prefix admitted in one step would then both compute it: a burst of
chat requests with one system prompt computes that prompt once per request. Instead the second
waits until the prefix is computed and finds it cached (SGLang's scheduler checks its batch
for shared prefixes the same way; vLLM v1 instead makes the blocks findable at schedule time).

A prompt waits only when the first block it would compute is one this step computes for
another sequence (and no KV tier holds it); it keeps its place in the queue and its seat under
``max_num_seqs``. Prompts behind it that share nothing are admitted in its place, but only
those whose whole prompt this step computes: a chunked one would be running next step and take
budget ahead of the prompt that waited. So a waiting prompt is admitted as soon as the blocks
it shares are computed, one step later when a single step computes them.
"""

from __future__ import annotations

from collections.abc import Iterable

from pagedkv.core import HashedPrompt
from pagedkv.engine.scheduler_output import ScheduledSeq


class StepBlocks:
    """Hashes of the full prompt blocks the sequences scheduled so far compute this step."""

    def __init__(self, block_size: int, scheduled: Iterable[ScheduledSeq] = ()) -> None:
        self.block_size = block_size
        self.hashes: set[bytes] = set()
        for s in scheduled:
            self.add(s.seq.hashed, s.start, s.num_tokens)

    def add(self, hashed: HashedPrompt | None, start: int, num_tokens: int) -> None:
        """Positions ``[start, start + num_tokens)`` of a prompt hashed as ``hashed`` are
        computed this step: every block they fill becomes findable after it."""
        if hashed is not None:
            bs = self.block_size
            self.hashes.update(hashed.hashes[start // bs : (start + num_tokens) // bs])

    def computes_next_block_of(self, hashed: HashedPrompt | None, cached: int, cap: int) -> bool:
        """Whether the first block a prompt would compute (after its ``cached`` tokens, with
        at most ``cap`` tokens findable in the cache) is computed this step by another one."""
        if hashed is None or cached >= cap:
            return False
        return hashed.hashes[cached // self.block_size] in self.hashes
