"""What the engine hands back, shaped like vLLM's ``RequestOutput`` so callers port unchanged."""

from __future__ import annotations

from dataclasses import dataclass, field

# One position's log-probabilities: token id -> logprob (the sampled token and the top-k).
TokenLogprobs = dict[int, float]


@dataclass
class CompletionOutput:
    """One of a request's ``n`` samples. ``text``/``token_ids`` are cumulative; ``delta_text``
    and ``delta_token_ids`` are what is new since the previous output of this request (what a
    stream sends). ``finish_reason`` is None while running, then ``"stop"`` (EOS, a stop token
    or string), ``"length"`` (max_tokens or the model's length), ``"abort"`` or ``"error"``."""

    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprobs] | None = None
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)

    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestMetrics:
    """Wall-clock times (``time.monotonic()`` seconds) and counts of one request.

    ``queue_time``: arrival to first scheduled; ``ttft``: arrival to first output token;
    ``tpot``: mean time per output token after the first (over all samples' tokens);
    ``num_cached_tokens``: prompt tokens served from the prefix cache at first admission."""

    arrival_time: float
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    finished_time: float | None = None
    num_cached_tokens: int = 0
    num_preemptions: int = 0

    @property
    def queue_time(self) -> float | None:
        if self.first_scheduled_time is None:
            return None
        return self.first_scheduled_time - self.arrival_time

    @property
    def ttft(self) -> float | None:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    def tpot(self, num_output_tokens: int) -> float | None:
        if self.finished_time is None or self.first_token_time is None or num_output_tokens < 2:
            return None
        return (self.finished_time - self.first_token_time) / (num_output_tokens - 1)

    @property
    def e2e_latency(self) -> float | None:
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """A request's state as of one engine step (vLLM's shape)."""

    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    num_cached_tokens: int = 0
    error: str | None = None

    @property
    def num_output_tokens(self) -> int:
        return sum(len(o.token_ids) for o in self.outputs)
