"""A request and its samples: what the scheduler moves between queues.

One :class:`Request` per call to ``add_request``; one :class:`EngineSeq` per sample (``n`` of
them). Only sample 0 exists until its prompt is computed; the others are then forked from it, so
the prompt is computed once and shared copy-on-write. Every sample is scheduled on its own.

The scheduling model is vLLM v1's: a sequence is its token list plus ``num_computed`` (tokens
whose KV is in the cache); each step computes some of the rest (a prompt chunk, a whole prompt,
or the one token sampled last step). A decode is simply a sequence with one token left.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pagedkv.core import HashedPrompt
from pagedkv.engine.outputs import CompletionOutput, RequestMetrics
from pagedkv.engine.sampling_params import SamplingParams


class SchedulingState(enum.Enum):
    """Which scheduler queue a sample is in (the manager's own per-sequence state is
    ``pagedkv.core.SeqState``)."""

    WAITING = "waiting"  # not in the block manager: new, or preempted by recompute
    RUNNING = "running"  # in the block manager, on the device
    SWAPPED = "swapped"  # in the block manager, its blocks in the host pool
    FINISHED = "finished"


@dataclass(eq=False)
class EngineSeq:
    """One sample of a request. ``seq_id`` = ``(request_id, index)`` names it in the manager."""

    request: Request
    index: int
    tokens: list[int]
    num_computed: int = 0
    state: SchedulingState = SchedulingState.WAITING
    # Incremental detokenisation: characters of the output text already sent to the caller.
    num_text_sent: int = 0
    # ``tokens`` hashed once (for prefix lookup, admission and KV tiers); redone only if
    # ``tokens`` grew since (a preempted sample re-admitted with its output).
    hashed: HashedPrompt | None = None

    @property
    def seq_id(self) -> tuple[str, int]:
        return (self.request.request_id, self.index)

    @property
    def num_remaining(self) -> int:
        """Tokens whose KV the next step must compute before sampling."""
        return len(self.tokens) - self.num_computed

    @property
    def output_ids(self) -> list[int]:
        return self.tokens[self.request.num_prompt_tokens :]

    @property
    def output(self) -> CompletionOutput:
        return self.request.outputs[self.index]

    def sort_key(self) -> tuple[int, float, int]:
        """Scheduling order: priority (lower first), then arrival, then sample index."""
        r = self.request
        return (r.priority, r.arrival_order, self.index)


@dataclass(eq=False)
class Request:
    """A submitted request: prompt, parameters, samples and bookkeeping."""

    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None
    arrival_order: int
    metrics: RequestMetrics
    priority: int = 0
    cache_salt: str | None = None
    base_seed: int = 0  # generator seed of unseeded requests (drawn from the engine's RNG)
    seqs: list[EngineSeq] = field(default_factory=list)
    outputs: list[CompletionOutput] = field(default_factory=list)
    forked: bool = False
    error: str | None = None

    def __post_init__(self) -> None:
        self.outputs = [CompletionOutput(i) for i in range(self.params.n)]
        if self.params.logprobs is not None:
            for o in self.outputs:
                o.logprobs = []
                o.cumulative_logprob = 0.0
        self.seqs = [EngineSeq(self, 0, list(self.prompt_token_ids))]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def finished(self) -> bool:
        return all(o.finish_reason is not None for o in self.outputs)

    @property
    def seed(self) -> int:
        return self.params.seed if self.params.seed is not None else self.base_seed

    def live_seqs(self) -> list[EngineSeq]:
        return [s for s in self.seqs if s.state is not SchedulingState.FINISHED]
